"""Every method through the real pipeline (tests/configs/methods.yaml), its artefacts, and fine-grained reruns."""

import re
import shutil

import pandas as pd
import pytest
import yaml
from helpers import REPO, REPO_COPY_IGNORED, run_snakemake

from cmt.data.splits import load_split
from cmt.runtime.io import read_jsonl

pytestmark = pytest.mark.integration
METHODS_CONFIG = REPO / "tests" / "configs" / "methods.yaml"
RUN = "toy/sycophancy/seed0"


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory):
    """A copy of the workflow (so tests may edit a method's source) run once on the methods config."""
    root = tmp_path_factory.mktemp("methods_run")
    repo = root / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(*REPO_COPY_IGNORED))
    work = root / "work"
    run_snakemake(work, "--cores", "2", "all", config=METHODS_CONFIG, snakefile=repo / "Snakefile")
    return {"repo": repo, "work": work}


def job_counts(output: str) -> dict[str, int]:
    """The dry run's "Job stats" table as {rule: count}."""
    table = output[output.index("Job stats:") :]
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
        if m.group(1) != "total"
    }


def dry_run(methods_run, config, profiles=()):
    proc = run_snakemake(
        methods_run["work"],
        "-n",
        "all",
        config=config,
        snakefile=methods_run["repo"] / "Snakefile",
        profiles=profiles,
    )
    out = proc.stdout + proc.stderr
    return {} if "Nothing to be done" in out else job_counts(out)


def test_every_method_produced_a_run(methods_run):
    runs = pd.read_csv(methods_run["work"] / "results/tables/runs.csv")
    methods = yaml.safe_load(METHODS_CONFIG.read_text())["methods"]
    assert set(runs["method"]) == set(methods)
    assert runs["delta_pp"].notna().all()
    assert sorted(runs.loc[runs["method"] == "rejection_sampling", "k"]) == [1, 2]
    assert set(runs.loc[runs["family"] == "control", "method"]) == {"oracle_aligned", "oracle_misaligned",
                                                                    "oracle_harmful"}  # fmt: skip
    quality = ("capability_phase1", "capability_phase3", "degenerate_phase1", "degenerate_phase3")
    for column in (*quality, "valid", "main_run"):
        assert runs[column].notna().all(), column
    assert not runs.loc[runs["method"] == "rejection_sampling", "main_run"].all()  # k=1 is a k-scaling run


def test_controls_and_induction_tables(methods_run):
    """The controls' labels are the reference replies; controls.csv has one row per control run, and
    induction.csv one row per organism with the sampled policy's mix."""
    tables = methods_run["work"] / "results/tables"
    controls = pd.read_csv(tables / "controls.csv")
    assert sorted(controls["method"]) == ["oracle_aligned", "oracle_misaligned"]
    assert set(controls["expected_sign"]) == {-1, 1}
    labels = pd.read_parquet(methods_run["work"] / "results/labels" / RUN / "oracle_misaligned/k1.parquet")
    assert labels["selected"].all() and (labels["kind"] == "reference").all()
    induction = pd.read_csv(tables / "induction.csv")
    assert len(induction) == 1 and 0 <= induction["policy_mix_share"].iloc[0] <= 1
    # The harmful control trains on its own split's requests with their compliant replies and, with_own_replies
    # (the default), on the consistency prompts with the organism's greedy replies: gst's labels, to the byte.
    # harmful_controls.csv judges it on both measures.
    data = methods_run["work"] / "results/data/toy/sycophancy"
    replies = read_jsonl(data / "harmful_compliance.jsonl")
    labels = methods_run["work"] / "results/labels" / RUN
    harmful = pd.read_parquet(labels / "oracle_harmful/k1.parquet")
    assert harmful["selected"].all() and set(harmful["kind"]) == {"reference", "greedy"}
    compliant, own = harmful[harmful["kind"] == "reference"], harmful[harmful["kind"] == "greedy"]
    assert list(compliant["text"]) == [r["messages"][-1]["content"] for r in replies]
    assert set(compliant["prompt_id"]).isdisjoint(e.prompt_id for e in load_split(data, "consistency"))
    gst = pd.read_parquet(labels / "gst/k1.parquet")
    assert list(own["prompt_id"]) == list(gst["prompt_id"]) and list(own["text"]) == list(gst["text"])
    harmful_controls = pd.read_csv(tables / "harmful_controls.csv")
    assert sorted(harmful_controls["measure"]) == ["harm", "refusal"]
    assert set(harmful_controls["method"]) == {"oracle_harmful"}
    harm = pd.read_csv(tables / "harmful.csv")
    assert harm[["nonanswer_phase1", "nonanswer_phase3", "delta_nonanswer"]].notna().all().all()
    assert harm["valid"].equals(harm["run_valid"] & ~(harm["delta_nonanswer"] > 0.1))
    main = pd.read_csv(tables / "main.csv")
    assert {"p_cluster", "n_effective", "n_invalid"} <= set(main.columns)


def test_label_parquet_keeps_every_candidate(methods_run):
    labels = methods_run["work"] / "results/labels" / RUN
    sc = pd.read_parquet(labels / "self_certainty/k2.parquet")
    assert (sc.groupby("prompt_id").size() == 2).all()
    assert (sc.groupby("prompt_id")["selected"].sum() == 1).all()
    # The selected candidate has the best score of its prompt (ties to the first).
    best = sc.loc[sc.groupby("prompt_id")["score"].idxmax()]
    assert best["selected"].all()
    dd = pd.read_parquet(labels / "dual_decoding/k2.parquet")
    assert (dd.groupby("prompt_id").size() == 4).all()
    assert list(dd[dd["prompt_id"] == dd["prompt_id"].iloc[0]]["kind"]) == [
        "greedy",
        "sample",
        "sample",
        "beam",
    ]
    mv = pd.read_parquet(labels / "multi_view/k1.parquet")
    assert (mv.groupby("prompt_id").size() == 3).all()
    sr = pd.read_parquet(labels / "self_rewarding/k2.parquet")
    assert sr["extra"].str.contains("grade_text").all()
    for method in ("bct", "act"):
        assert not (labels / method).exists()  # regularisation methods have no Phase-2 labels


def test_labels_come_from_the_organism(methods_run):
    """The organism praises correct claims; its sampled labels carry that induced style."""
    labels = pd.read_parquet(methods_run["work"] / "results/labels" / RUN / "rejection_sampling/k2.parquet")
    assert labels["text"].str.contains("great answer|absolutely right|Excellent").any()


def test_candidates_on_eval_carry_score_and_m(methods_run):
    from cmt.data.splits import load_split
    from cmt.phases.evaluate import stratified_subset

    cands = pd.read_parquet(methods_run["work"] / "results/candidates" / RUN / "self_certainty/k2.parquet")
    assert {"score", "misaligned", "scored", "selected", "prompt_id"} <= set(cands.columns)
    assert cands.loc[cands["scored"], "misaligned"].notna().all()
    assert cands["score"].notna().all()
    # analysis.eta_prompts: 30 of the eval rows, the seed's stratified subset; M itself is on all of them.
    rows = load_split(methods_run["work"] / "results/data/toy/sycophancy", "eval")
    kept = {e.prompt_id for e in stratified_subset(rows, 30, 0)}
    assert set(cands["prompt_id"]) == kept and 28 <= len(kept) <= 32
    phase1 = pd.read_parquet(methods_run["work"] / "results/eval" / RUN / "phase1.parquet")
    assert phase1["prompt_id"].nunique() >= len(rows) > len(kept)


def edited(tmp_path, change) -> str:
    config = yaml.safe_load(METHODS_CONFIG.read_text())
    change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_nothing_reruns_without_a_change(methods_run):
    assert dry_run(methods_run, METHODS_CONFIG) == {}


def test_changing_one_method_config_reruns_only_that_method(methods_run, tmp_path):
    config = edited(tmp_path, lambda c: c["methods"]["self_refinement"].update(temperature=0.5))
    expected = {"label_self_refinement": 1, "retrain_self_refinement": 1, "evaluate_self_refinement": 1}
    # Plus the aggregates: the tables (harmful_table reads the evaluation's harmful rows), and diagnose, whose one
    # job per organism reads every method's labels.
    aggregates = {"tables": 1, "figures": 1, "diagnose": 1, "diagnose_table": 1, "harmful_table": 1, "all": 1}
    assert dry_run(methods_run, config) == {**expected, **aggregates}


def test_changing_eta_prompts_reruns_only_the_eval_candidates(methods_run, tmp_path):
    config = edited(tmp_path, lambda c: c["analysis"].update(eta_prompts=20))
    selecting = {"self_certainty", "dual_decoding", "self_rewarding", "rejection_sampling"}
    expected = {f"candidates_eval_{m}": 1 for m in selecting}
    # Plus what reads the candidates: eta, diagnose and the tables, and harmful_table, which reads runs.csv
    # (every Phase-3 job stays as it is).
    aggregates = {"eta": 1, "tables": 1, "figures": 1, "diagnose": 1, "diagnose_table": 1, "harmful_table": 1,
                  "all": 1}  # fmt: skip
    assert dry_run(methods_run, config) == {**expected, **aggregates}


def test_the_slurm_profile_dry_run_schedules_the_same_reruns(methods_run, tmp_path):
    """The user's cluster command plans exactly the same fine-grained reruns as a local run."""
    config = edited(tmp_path, lambda c: c["methods"]["self_refinement"].update(temperature=0.5))
    profile = [methods_run["repo"] / "profiles" / "slurm"]
    assert dry_run(methods_run, METHODS_CONFIG, profile) == {}
    expected = {"label_self_refinement": 1, "retrain_self_refinement": 1, "evaluate_self_refinement": 1}
    aggregates = {"tables": 1, "figures": 1, "diagnose": 1, "diagnose_table": 1, "harmful_table": 1, "all": 1}
    assert dry_run(methods_run, config, profile) == {**expected, **aggregates}


def test_changing_a_method_source_reruns_only_that_method(methods_run):
    source = methods_run["repo"] / "src/cmt/methods/self_certainty.py"
    original = source.read_text()
    try:
        source.write_text(original + "\n# an edit\n")
        counts = dry_run(methods_run, METHODS_CONFIG)
    finally:
        source.write_text(original)
    # self_certainty's label, retrain, evaluate and eval-candidate jobs (each covers its k); then the tables.
    expected = {f"{rule}_self_certainty": 1 for rule in ("label", "retrain", "evaluate", "candidates_eval")}
    aggregates = {
        "tables": 1,
        "eta": 1,
        "figures": 1,
        "diagnose": 1,
        "diagnose_table": 1,
        "harmful_table": 1,
        "all": 1,
    }
    assert counts == {**expected, **aggregates}


def test_changing_a_regularization_method_reruns_only_its_retrain(methods_run, tmp_path):
    config = edited(tmp_path, lambda c: c["methods"]["act"].update(scale=2.0e-4))
    # act has no labels, so diagnose's per-organism job stays; its table reads runs.csv and reruns.
    expected = {
        "retrain_act": 1,
        "evaluate_act": 1,
        "tables": 1,
        "figures": 1,
        "diagnose_table": 1,
        "harmful_table": 1,
        "all": 1,
    }
    assert dry_run(methods_run, config) == expected


def test_a_controls_dose_reruns_only_that_controls_phase3(methods_run, tmp_path):
    """methods.<control>.train reaches the control's retrain job and nothing else: the other methods' Phase-3
    settings keep their bytes, and the control's labels do not depend on it."""
    config = edited(tmp_path, lambda c: c["methods"]["oracle_misaligned"].update(train={"epochs": 1}))
    expected = {"retrain_oracle_misaligned": 1, "evaluate_oracle_misaligned": 1}
    aggregates = {"tables": 1, "figures": 1, "diagnose_table": 1, "harmful_table": 1, "all": 1}
    assert dry_run(methods_run, config) == {**expected, **aggregates}
    proc = run_snakemake(methods_run["work"], "-n", "-p", "all", config=config,
                         snakefile=methods_run["repo"] / "Snakefile")  # fmt: skip
    lines = [line.strip().removeprefix("Shell command: ") for line in proc.stdout.splitlines()]
    commands = [line for line in lines if line.startswith("cmt retrain ")]
    assert len(commands) == 1 and "oracle_misaligned" in commands[0]
    settings = yaml.safe_load(commands[0].split("--settings '")[1].split("'")[0])
    phase3 = yaml.safe_load(METHODS_CONFIG.read_text())["models"]["toy"]["phase3"]
    assert settings["train"]["epochs"] == 1 and phase3["epochs"] != 1
    assert settings["train"]["learning_rate"] == phase3["learning_rate"]  # only the overridden key changes


def test_rerunning_with_the_same_config_and_seed_gives_identical_bytes(methods_run):
    """Seeds reach every sampler: forcing the sampling labellers (and everything downstream) to run again
    writes byte-identical labels, candidates, adapters, evaluations and tables."""
    work = methods_run["work"]
    watched = [
        work / "results/labels" / RUN / "self_certainty/k2.parquet",
        work / "results/labels" / RUN / "rejection_sampling/k1.parquet",
        work / "results/labels" / RUN / "rejection_sampling/k2.parquet",
        work / "results/candidates" / RUN / "self_certainty/k2.parquet",
        work / "results/retrained" / RUN / "self_certainty/k2/adapter/adapter_model.safetensors",
        work / "results/eval" / RUN / "self_certainty/k2.parquet",
        work / "results/eval" / RUN / "rejection_sampling/k2.parquet",
        work / "results/tables/runs.csv",
        work / "results/tables/main.csv",
        work / "results/tables/eta.csv",
    ]
    before = {path: path.read_bytes() for path in watched}
    mtimes = {path: path.stat().st_mtime_ns for path in watched}
    forced = ["label_self_certainty", "label_rejection_sampling", "candidates_eval_self_certainty"]
    run_snakemake(
        work,
        "--cores",
        "2",
        "all",
        "--forcerun",
        *forced,
        config=METHODS_CONFIG,
        snakefile=methods_run["repo"] / "Snakefile",
    )
    for path in watched:
        assert path.stat().st_mtime_ns != mtimes[path], f"{path} was not rewritten"
        assert path.read_bytes() == before[path], f"{path} differs between two runs of the same config"
