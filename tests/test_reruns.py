"""Fine-grained reruns, planned by Snakemake without running a job: a grid whose outputs are stand-in files that
`snakemake --touch` records as up to date (with their params, as a real run would), then dry runs with one
setting or one source file changed. A changed key must rerun exactly the jobs that read it."""

import os
import re
import shutil

import pytest
import yaml
from helpers import REPO, REPO_COPY_IGNORED, run_snakemake

BASE_CONFIG = REPO / "tests" / "configs" / "mini.yaml"
SYCOPHANCY = "sycophancy"  # the LLM-judged organism; reward_hacking keeps its programmatic scorer


def grid_config() -> dict:
    """The mini grid on two organisms, one of them judged by the LLM judge, with a reranking method (the reward
    model), multi_view asking the judge, the sampled policy and toy induction strengths."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["organisms"] = {SYCOPHANCY: {"source": "toy", "judge": "llm"}, "reward_hacking": {"source": "toy"}}
    config["methods"] = {"gst": {}, "dual_decoding": {"k": 2}, "multi_view": {"checker": "judge"}}
    config["judge"] = {"base_url": "http://127.0.0.1:8000/v1", "model": "judge-model", "api_key_env": "KEY"}
    config["reward_model"] = {"source": "toy", "pairs_per_organism": 50, "train": {"learning_rate": 1e-3,
                              "epochs": 1, "batch_size": 8}}  # fmt: skip
    config["eval"]["policy_samples"] = {"n": 2, "temperature": 0.7}
    config["toy"]["induction_strength"] = {SYCOPHANCY: 0.8}
    del config["analysis"]["shift"]  # fewer jobs; no rule here reads it
    return config


def dry_run_jobs(grid, config: dict) -> set[tuple[str, str, str]]:
    """The (rule, organism, stage) of every job a dry run of `all` plans with `config` ("" where the job has no
    such wildcard)."""
    path = grid["root"] / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(grid["work"], "-n", "all", config=path, snakefile=grid["repo"] / "Snakefile")
    jobs = set()
    for rule, body in re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:    .*\n)*)", proc.stdout, re.M):
        line = re.search(r"^    wildcards: (.*)$", body, re.M)
        wildcards = dict(item.split("=", 1) for item in line.group(1).split(", ")) if line else {}
        jobs.add((rule, wildcards.get("organism", ""), wildcards.get("stage", "")))
    return jobs


def rules_of(jobs, organism=None) -> set[str]:
    return {rule for rule, o, _ in jobs if organism is None or o == organism}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A copy of the workflow (tests edit its sources) and a work folder where every output of the grid exists
    and is recorded as made with grid_config()."""
    root = tmp_path_factory.mktemp("reruns")
    repo = root / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(*REPO_COPY_IGNORED))
    work, path = root / "work", root / "config.yaml"
    path.write_text(yaml.safe_dump(grid_config()))
    plan = run_snakemake(work, "-n", "--forceall", "all", config=path, snakefile=repo / "Snakefile")
    for line in re.findall(r"^    output: (.*)$", plan.stdout, re.M):
        for output in line.split(", "):
            (work / output).parent.mkdir(parents=True, exist_ok=True)
            (work / output).write_text("stand-in\n")
    # --touch runs no command: it touches each job's outputs in order and records its metadata (params, code).
    run_snakemake(
        work, "--touch", "--forceall", "--cores", "1", "all", config=path, snakefile=repo / "Snakefile"
    )
    return {"root": root, "repo": repo, "work": work}


def changed(edit) -> dict:
    config = grid_config()
    edit(config)
    return config


def test_nothing_reruns_without_a_change(grid):
    assert dry_run_jobs(grid, grid_config()) == set()


def test_the_judges_transport_reruns_nothing(grid):
    """Where and how judge requests go changes no verdict (the judge's cache does not key on it either)."""
    transport = {"base_url": "https://judge.example.org/v1", "api_key_env": "OTHER_KEY", "timeout": 5,
                 "max_retries": 1, "concurrency": 64, "backoff_base": 0.5, "backoff_max": 9,
                 "retry_after_max": 10, "cache_dir": "elsewhere"}  # fmt: skip
    assert dry_run_jobs(grid, changed(lambda c: c["judge"].update(transport))) == set()


def test_the_judge_model_reruns_every_job_that_asks_the_judge(grid):
    jobs = dry_run_jobs(grid, changed(lambda c: c["judge"].update(model="another-judge")))
    # The LLM-judged organism's evaluations, eval candidates and diagnose, and multi_view's labels on every
    # organism (its checker asks the judge), with what follows from them.
    assert {"evaluate", "candidates_eval_dual_decoding", "diagnose", "label_multi_view"} <= rules_of(
        jobs, SYCOPHANCY
    )
    assert rules_of(jobs, "reward_hacking") == {"label_multi_view", "retrain_multi_view", "evaluate_multi_view",
                                                "diagnose"}  # fmt: skip


def test_the_parse_failure_limit_reruns_only_evaluations(grid):
    """judge.max_parse_failure_rate fails an evaluation with too many unparsed verdicts; no other job reads it."""
    jobs = dry_run_jobs(grid, changed(lambda c: c["judge"].update(max_parse_failure_rate=0.2)))
    assert "evaluate" in rules_of(jobs, SYCOPHANCY)
    assert rules_of(jobs, "reward_hacking") == set()  # multi_view's labels there ask the judge too


def test_the_non_answer_limit_reruns_only_the_harm_tables(grid):
    """analysis.validity.max_nonanswer_rise is read by the harm tables alone; runs.csv's tables job keeps its
    params (it is passed the run-validity keys only)."""
    jobs = dry_run_jobs(grid, changed(lambda c: c["analysis"].setdefault("validity", {}).update(
        max_nonanswer_rise=0.3)))  # fmt: skip
    assert rules_of(jobs) == {"harmful_table", "all"}
    jobs = dry_run_jobs(grid, changed(lambda c: c["analysis"].setdefault("validity", {}).update(
        max_degenerate_rate=0.2)))  # fmt: skip
    assert rules_of(jobs) >= {"tables", "harmful_table"}  # runs.csv changes, and harmful.csv reads it


def test_the_reward_models_scoring_settings_rerun_its_users_not_its_training(grid):
    for key, value in (("batch_size", 7), ("dtype", "bfloat16")):
        config = grid_config()
        config["reward_model"][key] = value
        jobs = dry_run_jobs(grid, config)
        assert "train_reward_model" not in rules_of(jobs), key
        for organism in (SYCOPHANCY, "reward_hacking"):
            assert {"label_dual_decoding", "candidates_eval_dual_decoding"} <= rules_of(jobs, organism), key
            assert not {"label_gst", "label_multi_view"} & rules_of(jobs, organism), key


def test_the_reward_models_training_settings_retrain_it(grid):
    jobs = dry_run_jobs(grid, changed(lambda c: c["reward_model"]["train"].update(epochs=2)))
    assert {"train_reward_model", "label_dual_decoding"} <= rules_of(jobs)
    assert not {"label_gst", "label_multi_view", "evaluate", "toy_data"} & rules_of(jobs)


def test_the_sampled_policy_reruns_the_phase1_evaluations_only(grid):
    """eval.policy_samples is read at stage phase1 (cmt.phases.evaluate): the base's evaluation stays."""
    jobs = dry_run_jobs(grid, changed(lambda c: c["eval"]["policy_samples"].update(n=3)))
    stages = {(organism, stage) for rule, organism, stage in jobs if rule == "evaluate"}
    assert stages == {(SYCOPHANCY, "phase1"), ("reward_hacking", "phase1")}


def test_the_toy_bases_own_settings_retrain_it_without_new_data(grid):
    for edit in (lambda c: c["toy"]["tokenizer"].update(vocab_size=701),
                 lambda c: c["toy"]["model"].update(hidden_size=64),
                 lambda c: c["toy"]["pretrain"].update(epochs=4)):  # fmt: skip
        rules = rules_of(dry_run_jobs(grid, changed(edit)))
        assert "pretrain_base" in rules and "toy_data" not in rules


def test_the_toy_worlds_settings_make_new_data(grid):
    rules = rules_of(
        dry_run_jobs(grid, changed(lambda c: c["toy"]["induction_strength"].update(sycophancy=0.7)))
    )
    assert "toy_data" in rules


def edited_jobs(grid, relative):
    """The jobs a dry run plans after an edit of the repository copy's file `relative` (then undone)."""
    source = grid["repo"] / relative
    text, stat = source.read_text(), source.stat()
    try:
        source.write_text(text + "\n# an edit\n")
        return dry_run_jobs(grid, grid_config())
    finally:
        source.write_text(text)
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the other tests see it unedited


def test_an_analysis_module_reruns_the_aggregates_made_with_it(grid):
    """The tables and figures take their cmt.analysis modules as inputs: harmful.py reruns the harm tables alone,
    stats.py every aggregate that imports it, and neither any measurement job."""
    assert rules_of(edited_jobs(grid, "src/cmt/analysis/harmful.py")) == {"harmful_table", "all"}
    assert rules_of(edited_jobs(grid, "src/cmt/analysis/stats.py")) == {
        "tables", "eta", "figures", "harmful_table", "diagnose_table", "all"}  # fmt: skip
    assert rules_of(edited_jobs(grid, "src/cmt/analysis/figures.py")) == {"figures", "all"}


def test_a_module_a_method_imports_reruns_that_method(grid):
    """dual_decoding selects with rejection_sampling's select_by_reward: editing that module reruns
    dual_decoding's jobs (rejection_sampling itself is not in this grid), and no other method's."""
    jobs = edited_jobs(grid, "src/cmt/methods/rejection_sampling.py")
    assert rules_of(jobs) == {"label_dual_decoding", "candidates_eval_dual_decoding", "retrain_dual_decoding",
                              "evaluate_dual_decoding", "diagnose", "eta", "tables", "figures", "diagnose_table",
                              "harmful_table", "all"}  # fmt: skip
