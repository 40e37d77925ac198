"""Every method through the real pipeline (tests/configs/methods.yaml), its artefacts, and fine-grained reruns."""

import re
import shutil

import pandas as pd
import pytest
import yaml
from helpers import REPO, run_snakemake

pytestmark = pytest.mark.integration
METHODS_CONFIG = REPO / "tests" / "configs" / "methods.yaml"
RUN = "toy/sycophancy/seed0"


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory):
    """A copy of the workflow (so tests may edit a method's source) run once on the methods config."""
    root = tmp_path_factory.mktemp("methods_run")
    repo = root / "repo"
    shutil.copytree(
        REPO,
        repo,
        ignore=shutil.ignore_patterns(".venv", ".git", "results", "logs", ".snakemake", "__pycache__"),
    )
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


def dry_run(methods_run, config):
    proc = run_snakemake(
        methods_run["work"], "-n", "all", config=config, snakefile=methods_run["repo"] / "Snakefile"
    )
    out = proc.stdout + proc.stderr
    return {} if "Nothing to be done" in out else job_counts(out)


def test_every_method_produced_a_run(methods_run):
    runs = pd.read_csv(methods_run["work"] / "results/tables/runs.csv")
    methods = yaml.safe_load(METHODS_CONFIG.read_text())["methods"]
    assert set(runs["method"]) == set(methods)
    assert runs["delta"].notna().all()
    assert sorted(runs.loc[runs["method"] == "rejection_sampling", "k"]) == [1, 2]


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
    cands = pd.read_parquet(methods_run["work"] / "results/candidates" / RUN / "self_certainty/k2.parquet")
    assert {"score", "misaligned", "scored", "selected", "prompt_id"} <= set(cands.columns)
    assert cands.loc[cands["scored"], "misaligned"].notna().all()
    assert cands["score"].notna().all()


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
    assert dry_run(methods_run, config) == {"label": 1, "retrain": 1, "evaluate": 1, "tables": 1, "all": 1}


def test_changing_a_method_source_reruns_only_that_method(methods_run):
    source = methods_run["repo"] / "src/cmt/methods/self_certainty.py"
    original = source.read_text()
    try:
        source.write_text(original + "\n# an edit\n")
        counts = dry_run(methods_run, METHODS_CONFIG)
    finally:
        source.write_text(original)
    # self_certainty's label (k=2), retrain, evaluate and its eval candidates; then the tables.
    assert counts == {"label": 1, "retrain": 1, "evaluate": 1, "candidates_eval": 1, "tables": 1, "all": 1}


def test_changing_a_regularization_method_reruns_only_its_retrain(methods_run, tmp_path):
    config = edited(tmp_path, lambda c: c["methods"]["act"].update(scale=2.0e-4))
    assert dry_run(methods_run, config) == {"retrain_consistency": 1, "evaluate": 1, "tables": 1, "all": 1}
