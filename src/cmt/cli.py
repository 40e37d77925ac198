"""Command-line entry point: `cmt <subcommand>`. Snakemake rules call these; they carry no logic."""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("cmt")


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", help="job log file (progress and messages go here)")
    p.add_argument("--job", default="", help="job label for the log header: rule and wildcards")
    p.add_argument("--threads", type=int, default=None, help="torch threads (Snakemake's {threads})")


def _setup(args, **header) -> None:
    from cmt import runlog

    device = None
    if args.command not in ("tables", "induction-report", "toy-data", "sandbox"):
        from cmt.models import pick_device, set_threads

        set_threads(args.threads)
        device = pick_device()
    runlog.setup(
        args.log, {"cmd": args.command, "job": args.job or "-", "device": device or "none", **header}
    )


def cmd_toy_data(args) -> None:
    from cmt.toy.world import write_world

    counts = write_world(args.out, args.organisms, args.settings)
    log.info("wrote %s", counts)


def cmd_pretrain(args) -> None:
    from cmt.io import write_json
    from cmt.toy.pretrain import pretrain

    eval_dirs = dict(item.split("=", 1) for item in args.eval_dir)
    report = pretrain(args.corpus, eval_dirs, args.out, args.settings)
    write_json(args.report, report)


def cmd_induce(args) -> None:
    from cmt.phases.induce import induce

    induce(args.model_dir, args.data_dir, args.out, args.settings, args.seed)


def cmd_label(args) -> None:
    from cmt.phases.label import label

    label(args.method, args.k, args.organism, args.model_dir, args.adapter, args.data_dir, args.out, args.manifest,
          args.method_settings, args.model_settings, args.seed, args.reward_model)  # fmt: skip


def cmd_candidates(args) -> None:
    from cmt.phases.label import candidates

    candidates(args.method, args.k, args.organism, args.model_dir, args.adapter, args.data_dir, args.out,
               args.method_settings, args.model_settings, args.eval_settings, args.seed, args.reward_model)  # fmt: skip


def cmd_retrain(args) -> None:
    from cmt.phases.retrain import retrain

    retrain(args.model_dir, args.adapter, args.labels, args.out, args.settings, args.seed)


def cmd_evaluate(args) -> None:
    from cmt.phases.evaluate import evaluate

    identity = {"model": args.model, "organism": args.organism, "stage": args.stage,
                "method": args.method, "k": args.k}  # fmt: skip
    evaluate(args.model_dir, args.adapter, args.data_dir, args.organism, args.out, identity,
             args.model_settings, args.eval_settings, args.seed)  # fmt: skip


def cmd_retrain_consistency(args) -> None:
    from cmt.phases.consistency import retrain_consistency

    retrain_consistency(
        args.method, args.model_dir, args.adapter, args.data_dir, args.out, args.settings, args.seed
    )


def cmd_train_reward_model(args) -> None:
    from cmt.reward_model import train_reward_model
    from cmt.toy.preferences import pairs_from_world

    data_dirs = dict(item.split("=", 1) for item in args.data_dirs)
    pairs = pairs_from_world(args.corpus, data_dirs, args.seed, args.settings["pairs_per_organism"])
    train_reward_model(
        args.model_dir, pairs, args.out, args.settings["train"], args.seed, inputs=[args.corpus]
    )


def cmd_induction_report(args) -> None:
    from cmt.io import write_json
    from cmt.tables import induction_report

    write_json(args.out, induction_report(args.base, args.phase1, args.min_delta))


def cmd_tables(args) -> None:
    from cmt.io import write_csv
    from cmt.tables import main_table, read_evals, runs_table

    runs = runs_table(read_evals(args.evals), args.min_induction_delta)
    not_induced = runs.loc[~runs["induced"], ["model", "organism", "seed"]].drop_duplicates()
    for row in not_induced.itertuples():
        log.warning("organism %s/%s/seed%s is flagged as not induced", row.model, row.organism, row.seed)
    write_csv(args.runs, runs)
    write_csv(args.main, main_table(runs))


def cmd_sandbox(args) -> None:
    from cmt.sandbox import run_file

    try:
        verdict = run_file(args.file, timeout_s=args.timeout)
    except FileNotFoundError:
        raise SystemExit(f"cmt sandbox: no such file: {args.file}") from None
    print(verdict.to_json(), flush=True)
    # A failing program is still a verdict; only the sandbox failing itself is an error here.
    if verdict.status == "sandbox_error":
        raise SystemExit(f"cmt sandbox: sandbox error: {verdict.message}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("toy-data", help="generate the toy world's corpus and organism datasets")
    p.add_argument("--out", required=True)
    p.add_argument("--organisms", nargs="+", required=True)
    p.add_argument("--settings", type=_json, required=True)
    p.set_defaults(func=cmd_toy_data)

    p = sub.add_parser("pretrain", help="train the toy base model from scratch")
    p.add_argument("--corpus", required=True)
    p.add_argument("--eval-dir", nargs="+", required=True, metavar="ORGANISM=DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--settings", type=_json, required=True, help="the config's toy subtree")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("induce", help="Phase 1: LoRA-fine-tune the base model into an organism")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=_json, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_induce)

    for name, func, text in (
        ("label", cmd_label, "Phase 2: pseudo-label consistency prompts with a method"),
        (
            "candidates",
            cmd_candidates,
            "a selecting method's Phase-2 decoding on eval prompts, every candidate scored",
        ),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--method", required=True)
        p.add_argument("--k", type=int, required=True)
        p.add_argument("--organism", required=True)
        p.add_argument("--model-dir", required=True)
        p.add_argument("--adapter", required=True)
        p.add_argument("--data-dir", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--method-settings", type=_json, required=True)
        p.add_argument("--model-settings", type=_json, required=True)
        p.add_argument(
            "--reward-model", default=None, help="reward model directory (dual_decoding, rejection_sampling)"
        )
        p.add_argument("--seed", type=int, required=True)
        p.set_defaults(func=func)
        if name == "label":
            p.add_argument("--manifest", required=True)
        else:
            p.add_argument("--eval-settings", type=_json, required=True)

    p = sub.add_parser("retrain", help="Phase 3: continue the organism's LoRA on the labels")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=_json, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("retrain-consistency", help="Phase 3 for act/bct: paired clean/wrapped regularisation")
    p.add_argument("--method", required=True, choices=["act", "bct"])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=_json, required=True, help='{"dtype", "train", "method"}')
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_retrain_consistency)

    p = sub.add_parser("train-reward-model", help="train the toy reward model on synthetic preference pairs")
    p.add_argument("--model-dir", required=True, help="the toy base model")
    p.add_argument("--corpus", required=True)
    p.add_argument("--data-dirs", nargs="+", required=True, metavar="ORGANISM=DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=_json, required=True, help="the config's reward_model subtree")
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_train_reward_model)

    p = sub.add_parser("evaluate", help="score a model's greedy replies on the eval prompts")
    p.add_argument("--model", required=True, help="model name from config")
    p.add_argument("--organism", required=True)
    p.add_argument("--stage", required=True, choices=["base", "phase1", "phase3"])
    p.add_argument("--method", default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", default=None)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model-settings", type=_json, required=True)
    p.add_argument("--eval-settings", type=_json, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("induction-report", help="base vs organism M with Wilson intervals")
    p.add_argument("--base", required=True)
    p.add_argument("--phase1", required=True)
    p.add_argument("--min-delta", type=float, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_induction_report)

    p = sub.add_parser("tables", help="write runs.csv and main.csv from eval parquet files")
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--min-induction-delta", type=float, required=True)
    p.add_argument("--runs", required=True)
    p.add_argument("--main", required=True)
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("sandbox", help="run a Python file in the sandbox; print one JSON verdict")
    p.add_argument("file", metavar="FILE.py")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock (and CPU) seconds")
    p.set_defaults(func=cmd_sandbox)

    for action in sub.choices.values():
        _common(action)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seed = getattr(args, "seed", None)
    _setup(args, **({"seed": seed} if seed is not None else {}))
    try:
        args.func(args)
    except Exception:
        log.exception("%s failed", args.command)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
