"""The `cmt` command line: its help groups the user's commands apart from the pipeline's, --version, the job
header only for a rule's job, the filtered library warnings, and the commands' checks of their lists."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import cmt
from cmt.cli import build_parser, main
from cmt.phases.cells import check_shift_cells, eval_runs
from cmt.runtime import runlog

CMT = Path(sys.executable).parent / "cmt"
USER = [
    "config check",
    "data check",
    "sandbox",
    "verify",
    "fetch-dataset",
    "download-model",
    "judge cache prune",
]
RULES = ["toy-data", "pretrain", "induce", "label", "candidates", "retrain", "retrain-consistency",
         "train-reward-model", "evaluate", "shift", "fragility", "cross-kl", "harmful", "diagnose", "fetch-gguf-model",
         "induction-report", "tables", "eta", "figures", "stability", "cross-model-table", "shift-table", "diagnose-table", "harmful-table"]  # fmt: skip


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every leaf command's parser by its name as typed ("data check")."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = subparsers(sub)
                out.update({f"{name} {k}": v for k, v in nested.items()} if nested else {name: sub})
    return out


def sections(text: str) -> dict[str, list[str]]:
    """The command names under each titled section of `cmt --help`."""
    out, title = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            out[title] = []
        elif title and line.startswith("  ") and not line.startswith("   "):
            name = line.split("  ")[1].strip()
            out[title].append(name)
    return out


def test_help_lists_user_commands_apart_from_the_rules_commands():
    r = subprocess.run([str(CMT), "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    found = sections(r.stdout)
    rules_title = next(t for t in found if t.startswith("pipeline commands"))
    assert found["user commands"] == USER
    assert found[rules_title] == RULES
    assert "Snakemake rules run these" in rules_title
    assert "internal" not in r.stdout.lower()
    assert r.stdout.index("user commands:") < r.stdout.index(rules_title)
    # Every command the parser knows is listed once, in one of the two groups.
    assert sorted(subparsers(build_parser())) == sorted(USER + RULES)


def test_every_command_takes_the_job_options_the_rules_pass():
    for name, parser in subparsers(build_parser()).items():
        text = parser.format_help()
        assert all(option in text for option in ("--log", "--job", "--threads")), name
        assert parser.description, f"{name} has no description for its --help"


def test_the_judges_transport_joins_each_llm_judge_of_a_job(monkeypatch):
    """The rules pass the judge's transport keys apart (--judge-transport, no rerun trigger); the command puts
    them back into every LLM judge it builds, the harmful slot's too, and leaves a programmatic judge alone."""
    seen = {}
    monkeypatch.setattr(
        "cmt.phases.evaluate.evaluate", lambda *args: seen.update(judge=args[7], harmful=args[8])
    )
    judge = '{"kind": "llm", "model": "j", "temperature": 0}'
    transport = '{"base_url": "http://judge:8000/v1", "concurrency": 3, "temperature": 1}'
    harmful = '{"requests": "r.jsonl", "scorer": "strongreject", "judge": ' + judge + "}"
    argv = ["evaluate", "--model", "m", "--organism", "sycophancy", "--stage", "base", "--model-dir", "d",
            "--data-dir", "d", "--out", "o.parquet", "--model-settings", "{}", "--eval-settings", "{}",
            "--judge-settings", judge, "--judge-transport", transport, "--harmful-settings", harmful,
            "--harmful-out", "o.harmful.parquet", "--seed", "0"]  # fmt: skip
    args = build_parser().parse_args(argv)
    args.func(args)
    # A key of --judge-settings wins over the same key in the transport (there is none in the rules' split).
    merged = {
        "kind": "llm",
        "model": "j",
        "temperature": 0,
        "base_url": "http://judge:8000/v1",
        "concurrency": 3,
    }
    assert seen["judge"] == merged and seen["harmful"]["judge"] == merged
    args = build_parser().parse_args([*argv[: argv.index("--judge-settings")], "--judge-settings",
                                      '{"kind": "programmatic"}', *argv[argv.index("--judge-transport"):]])  # fmt: skip
    args.func(args)
    assert seen["judge"] == {"kind": "programmatic"}


def test_version_is_the_installed_one():
    r = subprocess.run([str(CMT), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"cmt {cmt.__version__}\n"
    assert cmt.__version__ == importlib.metadata.version("cmt")
    module = subprocess.run([sys.executable, "-m", "cmt", "--version"], capture_output=True, text=True)
    assert module.stdout == r.stdout


def test_a_usage_error_is_one_line():
    r = subprocess.run([str(CMT), "tables", "--evals"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("cmt tables: error: ") and r.stderr.endswith("(see cmt tables --help)\n")
    r = subprocess.run([str(CMT)], capture_output=True, text=True)
    assert (
        r.returncode == 2
        and r.stderr == "cmt: error: the following arguments are required: COMMAND (see cmt --help)\n"
    )


def test_job_header_only_for_a_rules_job(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", str(tmp_path / "missing")])
    by_hand = capsys.readouterr()
    assert "job cmd=" not in by_hand.err + by_hand.out
    with pytest.raises(SystemExit):
        main(["data", "check", str(tmp_path / "missing"), "--job", "check_data organism=x"])
    by_rule = capsys.readouterr()
    assert "job cmd=data job=check_data organism=x device=none" in by_rule.err


def test_runlog_without_a_header_writes_none(tmp_path):
    runlog.setup(str(tmp_path / "a.log"), None)
    logging.getLogger("cmt").info("hello")
    runlog.setup(str(tmp_path / "b.log"), {"cmd": "x"})
    assert (tmp_path / "a.log").read_text().split()[-2:] == ["INFO", "hello"]
    assert "job cmd=x" in (tmp_path / "b.log").read_text()


def test_known_library_deprecations_are_filtered_and_others_are_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        runlog.filter_known_warnings()
        # peft reading the deprecated property (the warning is raised inside transformers, named by message)
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
                               "`is_activation_checkpointing` instead.", FutureWarning, "peft_model.py", 184,
                               module="peft.peft_model")  # fmt: skip
        warnings.warn_explicit("`gradient_checkpointing_enable` is deprecated", FutureWarning, "other.py", 1,
                               module="peft.utils.other")  # fmt: skip
        # any FutureWarning raised inside transformers itself
        warnings.warn_explicit("`rope_scaling` is deprecated", FutureWarning, "configuration_utils.py", 720,
                               module="transformers.configuration_utils")  # fmt: skip
        # ... but not one that names cmt's own code, nor another library's or another category
        warnings.warn_explicit(
            "`torch_dtype` is deprecated", FutureWarning, "loading.py", 1, module="cmt.models"
        )
        warnings.warn_explicit(
            "something", DeprecationWarning, "modeling_utils.py", 1, module="transformers.x"
        )
        warnings.warn_explicit("old api", FutureWarning, "x.py", 1, module="pandas.core")
    assert [str(w.message) for w in seen] == ["`torch_dtype` is deprecated", "something", "old api"]


def test_main_installs_the_filters(tmp_path):
    with warnings.catch_warnings():
        warnings.resetwarnings()
        with pytest.raises(SystemExit):
            main(["data", "check", str(tmp_path)])
        messages = [f[1].pattern for f in warnings.filters if f[0] == "ignore" and f[1] is not None]
        assert any("gradient_checkpointing" in m for m in messages)


def test_eval_runs_line_up_adapters_outputs_and_ks():
    runs = eval_runs("toy", "syc", "phase3", ["a1", "a2"], ["o1", "o2"], "gst", [1, 4], ["h1", "h2"])
    assert [(r.adapter, r.out_path, r.identity["k"], r.harmful_out) for r in runs] == [
        ("a1", "o1", 1, "h1"),
        ("a2", "o2", 4, "h2"),
    ]
    assert runs[0].identity == {"model": "toy", "organism": "syc", "stage": "phase3", "method": "gst", "k": 1}
    (base,) = eval_runs("toy", "syc", "base", [], ["o"])
    assert (base.adapter, base.identity["method"], base.harmful_out) == (None, None, None)
    for args, message in [
        (("phase3", ["a1"], ["o1", "o2"], "gst", [1]), "needs --method and one --ks"),
        (("phase3", ["a1"], ["o1"], None, [1]), "needs --method"),
        (("base", ["a"], ["o"]), "--stage base takes one --out and no --adapter"),
        (("phase1", [], ["o"]), "--stage phase1 takes one --out and one --adapter"),
    ]:
        with pytest.raises(ValueError, match=message):
            eval_runs("toy", "syc", *args)
    with pytest.raises(ValueError, match="1 evaluated models but 2 --harmful-out"):
        eval_runs("toy", "syc", "phase1", ["a"], ["o"], harmful_outs=["h1", "h2"])
    # The harmful requests at the main k only: the other k get none.
    runs = eval_runs(
        "toy", "syc", "phase3", ["a1", "a4", "a8"], ["o1", "o4", "o8"], "sc", [1, 4, 8], ["h4"], [4]
    )
    assert [r.harmful_out for r in runs] == [None, "h4", None]
    for outs, ks in [(["h4"], [2]), (["h4", "h8"], [4]), (["h4"], [4, 8])]:
        with pytest.raises(ValueError, match="--harmful-ks needs"):
            eval_runs(
                "toy", "syc", "phase3", ["a1", "a4", "a8"], ["o1", "o4", "o8"], "sc", [1, 4, 8], outs, ks
            )


def test_shift_cells_need_one_value_per_k():
    assert check_shift_cells([1, 2], ["a", "b"], ["o", "p"], []) == [None, None]
    assert check_shift_cells([1], ["a"], ["o"], ["l"]) == ["l"]
    with pytest.raises(ValueError, match="one value per k"):
        check_shift_cells([1, 2], ["a"], ["o", "p"], None)


def test_a_command_whose_lists_do_not_line_up_stops_with_one_line(capsys):
    args = build_parser().parse_args(
        ["evaluate", "--model", "toy", "--organism", "syc", "--stage", "phase3", "--model-dir", "m",
         "--adapter", "a1", "a2", "--data-dir", "d", "--out", "o1", "--model-settings", "{}",
         "--eval-settings", "{}", "--seed", "0", "--method", "gst", "--ks", "1", "2"]
    )  # fmt: skip
    with pytest.raises(SystemExit, match=r"^cmt evaluate: --stage phase3 needs --method and one --ks"):
        args.func(args)


def test_timed_stages_count_the_outermost_call_once(monkeypatch):
    """A save that hashes its files (a timed call inside a timed call) is counted once; work is the rest."""
    clock = iter([0.0, 2.0, 10.0, 13.5])  # load 0 -> 2, save 10 -> 13.5 (its inner hash is not timed apart)
    monkeypatch.setattr(runlog.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(runlog, "_stage_seconds", {})

    @runlog.timed("save")
    def hash_files():
        return "hashed"

    @runlog.timed("save")
    def save():
        return hash_files()

    runlog.timed("load")(lambda: None)()
    assert save() == "hashed"
    assert runlog._stage_seconds == {"load": 2.0, "save": 3.5}
    assert runlog.timing_line(20.0) == "timing job_s=20.00 load_s=2.00 save_s=3.50 work_s=14.50"


def test_a_rules_job_logs_its_timing_line(tmp_path):
    data = tmp_path / "data"
    (data / "x").mkdir(parents=True)
    log_file = tmp_path / "job.log"
    main(["toy-data", "--out", str(data), "--organisms", "sycophancy", "--settings",
          '{"seed": 1, "max_operand": 30, "sizes": {"induction": 4, "consistency": 3, "act_bct": 2, "eval": 2},'
          ' "corpus": {"sycophancy": 20}, "skills": {"views": 0, "refinement": 0, "grading": 0}}',
          "--log", str(log_file), "--job", "toy_data"])  # fmt: skip
    line = [t for t in log_file.read_text().splitlines() if " timing " in t]
    assert len(line) == 1 and "job_s=" in line[0] and "work_s=" in line[0]
