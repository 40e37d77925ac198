"""The real pipeline, end to end through the snakemake CLI, on tests/configs/mini.yaml."""

import json
import math

import pandas as pd
import pytest
import yaml
from helpers import REPO

from cmt.tables import MAIN_COLUMNS, RUNS_COLUMNS

pytestmark = pytest.mark.integration


def test_tables_have_the_documented_columns(mini_run):
    tables = mini_run["workdir"] / "results" / "tables"
    runs = pd.read_csv(tables / "runs.csv")
    main = pd.read_csv(tables / "main.csv")
    assert list(runs.columns) == RUNS_COLUMNS
    assert list(main.columns) == MAIN_COLUMNS
    organisms = ["emergent_misalignment", "reward_hacking", "spurious_correlation", "sycophancy"]
    assert list(runs["organism"]) == organisms and list(main["organism"]) == organisms
    assert set(zip(runs["model"], runs["method"], runs["k"], runs["seed"], strict=True)) == {
        ("toy", "gst", 1, 0)
    }
    for run in runs.itertuples():
        assert math.isfinite(run.delta)
        assert run.delta == pytest.approx(run.risk_phase3 - run.risk_phase1)
        assert run.n_eval > 0
    assert (main["n_runs"] == 1).all()


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


def test_eval_rows_are_per_prompt(mini_run):
    df = pd.read_parquet(mini_run["workdir"] / "results/eval/toy/sycophancy/seed0/gst/k1.parquet")
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
