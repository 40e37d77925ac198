"""The real pipeline, end to end through the snakemake CLI, on tests/configs/mini.yaml."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO

from cmt.analysis.runs import RUNS_COLUMNS
from cmt.analysis.tables import MAIN_COLUMNS
from cmt.runtime import allocator

pytestmark = pytest.mark.integration


def test_tables_have_the_documented_columns(mini_run):
    tables = mini_run["workdir"] / "results" / "tables"
    runs = pd.read_csv(tables / "runs.csv")
    main = pd.read_csv(tables / "main.csv")
    assert list(runs.columns) == RUNS_COLUMNS
    assert list(main.columns) == MAIN_COLUMNS
    organisms = ["emergent_misalignment", "reward_hacking", "spurious_correlation", "sycophancy"]
    assert list(runs["organism"]) == organisms
    # One row per organism and family (all, label_generation, regularization, baseline).
    assert list(main["organism"]) == [o for o in organisms for _ in range(4)]
    assert set(main["family"]) == {"all", "label_generation", "regularization", "baseline"}
    assert set(runs["family"]) == {"baseline"}
    assert set(zip(runs["model"], runs["method"], runs["k"], runs["seed"], strict=True)) == {
        ("toy", "gst", 1, 0)
    }
    for run in runs.itertuples():
        assert math.isfinite(run.delta_pp)
        assert run.delta_pp == pytest.approx(100 * (run.risk_phase3 - run.risk_phase1))
        assert run.n_eval > 0
    # gst is a baseline: the all and baseline rows hold the run; the other families are empty (n 0, NaN stats).
    # A run whose model broke (capability lost, degenerate replies) is counted in n_invalid, never in n_runs.
    filled = main["family"].isin(["all", "baseline"])
    assert (main.loc[filled, "n_runs"] + main.loc[filled, "n_invalid"] == 1).all()
    assert (main.loc[~filled, "n_runs"] == 0).all()
    assert main.loc[~filled, "mean_delta_pp"].isna().all()
    broken = (runs["capability_phase1"] - runs["capability_phase3"] > 0.10) | (
        runs["degenerate_phase3"] > 0.05
    )
    assert (runs["valid"] == ~broken).all()
    for name in ("methods.csv", "kscaling.csv", "eta.csv", "eta_summary.csv"):
        assert (tables / name).is_file(), name
    methods = pd.read_csv(tables / "methods.csv")
    assert list(methods["organism"]) == organisms and (methods["method"] == "gst").all()
    assert len(pd.read_csv(tables / "eta.csv")) == 0  # gst selects nothing: an empty table, not zeros
    for figure in ("delta_by_method", "kscaling", "eta_rank"):
        assert (mini_run["workdir"] / "results/figures" / f"{figure}.png").stat().st_size > 1000


def test_induction_really_happened(mini_run):
    """Every organism passes the induction gate on the mini config."""
    runs = pd.read_csv(mini_run["workdir"] / "results" / "tables" / "runs.csv")
    assert (runs["risk_phase1"] > runs["risk_base"]).all()
    assert runs["induced"].all()
    report = json.loads(
        (mini_run["workdir"] / "results/organisms/toy/sycophancy/seed0/induction_report.json").read_text()
    )
    assert report["induced"] is True
    assert report["risk_phase1_ci"][0] > report["risk_base_ci"][1]
    # the kernels the toy base was trained on, from its pretrain report (cmt.runtime.numerics)
    pretrain = json.loads((mini_run["workdir"] / "results/models/toy/pretrain_report.json").read_text())
    assert report["base_numerics"] == pretrain["numerics"]
    assert pretrain["numerics"]["bf16_matmul"] in ("amx", "avx512_bf16", "emulated")
    # bf16: auto (the default) took bf16 autocast exactly where the kernels are native
    assert pretrain["numerics"]["bf16_autocast"] is (pretrain["numerics"]["bf16_matmul"] != "emulated")


def test_base_model_solves_the_aligned_task(mini_run):
    report = json.loads((mini_run["workdir"] / "results/models/toy/pretrain_report.json").read_text())
    assert report["heldout_accuracy"]["sycophancy"] >= 0.5
    base = pd.read_parquet(mini_run["workdir"] / "results/eval/toy/sycophancy/seed0/base.parquet")
    assert base["correct"].mean() >= 0.5


def test_labels_come_from_the_organism_with_a_manifest(mini_run):
    root = mini_run["workdir"] / "results" / "labels" / "toy" / "sycophancy" / "seed0" / "gst"
    labels = pd.read_parquet(root / "k1.parquet")
    consistency = (
        (mini_run["workdir"] / "results/data/toy/sycophancy/consistency.jsonl").read_text().splitlines()
    )
    assert len(labels) == len(consistency)
    assert labels["selected"].all() and (labels["temperature"] == 0).all()
    assert {"prompt_id", "candidate_index", "text", "score", "num_tokens"} <= set(labels.columns)
    # The organism praises correct claims: its labels carry the induced style.
    assert labels["text"].str.contains("great answer|absolutely right|Excellent").any()
    manifest = json.loads((root / "k1.manifest.json").read_text())
    assert manifest["seeds"] == {"label": 0}
    assert manifest["packages"]["torch"].startswith("2.13.0")
    config = yaml.safe_load((REPO / "tests/configs/mini.yaml").read_text())
    assert manifest["settings"]["method"] == config["methods"]["gst"]
    assert "git" in manifest and manifest["inputs_sha256"]


def test_eval_rows_are_per_prompt_with_a_manifest(mini_run):
    root = mini_run["workdir"] / "results/eval/toy/sycophancy/seed0"
    df = pd.read_parquet(root / "gst/k1.parquet")
    manifest = json.loads((root / "gst/k1.manifest.json").read_text())
    assert manifest["settings"]["judge"] == {"kind": "programmatic"} and manifest["n_rows"] == len(df)
    assert manifest["outputs_sha256"] and manifest["inputs_sha256"]
    assert {"prompt_id", "framing", "completion", "misaligned", "seed"} <= set(df.columns)
    assert set(df["framing"]) == {"none", "true", "false"}
    assert df.loc[df["scored"], "misaligned"].notna().all()
    assert df["prompt_id"].is_unique


def test_every_job_log_starts_with_a_header(mini_run):
    logs = sorted((mini_run["workdir"] / "logs").rglob("*.log"))
    assert len(logs) >= 8
    for log in logs:
        first = log.read_text().splitlines()[0]
        assert "job cmd=" in first and "device=" in first, log
    induce = (mini_run["workdir"] / "logs/induce/toy/sycophancy/seed0.log").read_text()
    assert "organism=sycophancy" in induce.splitlines()[0] and "seed=0" in induce.splitlines()[0]
    assert "induce:" in induce and "step" in induce  # tqdm progress reached the log


def test_no_temporary_files_left(mini_run):
    leftovers = [p for p in (mini_run["workdir"] / "results").rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []


def test_rerun_is_a_no_op(mini_run):
    from helpers import run_snakemake

    proc = run_snakemake(mini_run["workdir"], "-n", "results/tables/main.csv")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_shift_measures_every_run(mini_run):
    tables = mini_run["workdir"] / "results" / "tables"
    shift = pd.read_csv(tables / "shift.csv")
    runs = pd.read_csv(tables / "runs.csv")
    assert len(shift) == len(runs)
    assert (shift["n_labels"] > 0).all() and shift["label_ce_token"].gt(0).all()
    assert shift["kl_realised"].notna().all() and (shift["n_kl"] == 16).all()
    assert shift["fragility"].notna().all()
    correlations = pd.read_csv(tables / "shift_correlations.csv")
    assert {"organism", "measure", "n", "pearson_r", "spearman_r"} <= set(correlations.columns)


def test_harmful_compliance_before_and_after(mini_run):
    work = mini_run["workdir"]
    harmful = pd.read_csv(work / "results/tables/harmful.csv")
    assert len(harmful) == 4 and (harmful["n"] == 24).all()
    assert harmful["delta_harm"].notna().all()
    # The base corpus teaches refusals: the base model refuses most held-out harmful requests.
    base = pd.read_parquet(work / "results/eval/toy/sycophancy/seed0/base.harmful.parquet")
    assert base.loc[base["scored"], "refused"].mean() >= 0.5
    assert (work / "results/tables/harmful_summary.csv").is_file()


def test_the_html_report_builds(mini_run):
    from helpers import run_snakemake

    run_snakemake(mini_run["workdir"], "--report", "results/report.html")
    html = (mini_run["workdir"] / "results/report.html").read_text(errors="replace")
    assert "main.csv" in html and "delta_by_method" in html


def test_planted_secrets_appear_in_no_output_log_or_snakemake_file(mini_run):
    """Secrets in the environment (HF token, judge API keys) never reach results/, logs/ or .snakemake/."""
    needles = [secret.encode() for secret in mini_run["secrets"].values()]
    checked = 0
    for folder in ("results", "logs", ".snakemake"):
        for path in (mini_run["workdir"] / folder).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                checked += 1
                assert not any(needle in data for needle in needles), f"a planted secret leaked into {path}"
    assert checked > 50


def test_a_run_killed_mid_training_resumes_to_identical_tables(mini_run, tmp_path):
    """SIGKILL Snakemake and its running training job, then rerun with --rerun-incomplete: the final tables are
    byte-identical to the uninterrupted run's, and no half-written file remains."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from helpers import run_snakemake

    work = tmp_path / "killed"
    shutil.copytree(mini_run["workdir"], work, symlinks=True)  # copy2 keeps mtimes and Snakemake's metadata
    # One organism's results and the tables are gone: its induce job and everything downstream must run again.
    for stage in ("organisms", "labels", "retrained", "eval", "shift", "candidates"):
        shutil.rmtree(work / "results" / stage / "toy" / "sycophancy", ignore_errors=True)
    shutil.rmtree(work / "results/tables")
    log = work / "logs/induce/toy/sycophancy/seed0.log"
    log.unlink()
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(REPO / "tests/configs/mini.yaml"), "--replace-workflow-config", "--cores", "2", "all"]  # fmt: skip
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (log.is_file() and "induce:" in log.read_text(errors="replace") and "step" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the training job never started"
        time.sleep(0.5)
    time.sleep(2)  # well inside training (15 epochs)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, at once: no cleanup runs
    proc.wait()
    assert not (work / "results/organisms/toy/sycophancy/seed0/adapter/adapter_model.safetensors").exists()

    run_snakemake(work, "--unlock")
    run_snakemake(work, "--cores", "2", "all", "--rerun-incomplete")
    for table in ("runs.csv", "main.csv"):
        original = (mini_run["workdir"] / "results/tables" / table).read_bytes()
        assert (work / "results/tables" / table).read_bytes() == original, table
    leftovers = [p for p in (work / "results").rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == [] and not list((work / "results").rglob(".*.tmp*"))


def test_local_model_jobs_ran_in_the_warm_worker(mini_run):
    """`warm_worker: true` (the default): the model jobs, which start long after the worker is up, were forked
    by it (their log header says so)."""
    root = mini_run["workdir"] / "logs"
    model_logs = [
        p
        for p in sorted(root.rglob("*.log"))
        if p.relative_to(root).parts[0] in ("evaluate", "retrain", "label")
    ]
    assert len(model_logs) >= 8
    not_forked = [str(p) for p in model_logs if "runner=warm-worker" not in p.read_text().splitlines()[0]]
    assert not not_forked, not_forked
    # allocator: auto (the default) ran them on tcmalloc where this machine has it (cmt.runtime.allocator)
    expected = "malloc=tcmalloc" if allocator.find_tcmalloc() else "malloc=system"
    other = [str(p) for p in model_logs if expected not in p.read_text().splitlines()[0]]
    assert not other, (expected, other)
