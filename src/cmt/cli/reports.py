"""The pipeline's analysis commands, which the Snakemake rules run: the induction check, the tables and the
figures. Each parses its arguments and calls one function of cmt.analysis; the work happens there."""

from __future__ import annotations

import logging

from cmt.cli.common import add_job_options, bool_word, json_object, key_values

log = logging.getLogger("cmt")


def cmd_induction_report(args) -> None:
    import json
    from pathlib import Path

    from cmt.analysis.induction import induction_report
    from cmt.runtime.io import write_json

    gate = args.gate or {}
    report = induction_report(args.base, args.phase1, args.min_delta, gate.get("band"), gate.get("ci_band"),
                              gate.get("max_base"))  # fmt: skip
    report["on_fail"] = gate.get("on_fail")
    numerics = None
    if args.pretrain_report:
        numerics = json.loads(Path(args.pretrain_report).read_text()).get("numerics")
        report["base_numerics"] = numerics
    write_json(args.out, report)
    if gate.get("on_fail") == "fail" and not report["in_band"]:
        where = f"{report['model']}/{report['organism']}/seed{report['seed']}"
        raise SystemExit(
            f"cmt induction-report: organism {where} fails the induction gate, so the run stops before Phase 2: "
            f"{'; '.join(report['gate_reasons'])}. Induction strength is set by toy.induction_strength."
            f"{report['organism']} (toy organisms) or the model's phase1 training settings (the organism's own "
            f"phase1 and induce_until: organisms.{report['organism']}); the gate is "
            "analysis.induction_gate (on_fail: exclude skips such a cell instead)"
            + toy_numerics_hint(numerics)
        )


def toy_numerics_hint(numerics: dict | None) -> str:
    """Where the toy base's numbers came from, for a gate failure: on other CPU kernels the toy world gives
    other organisms, so a failure may be the machine's, not the config's."""
    if not numerics:
        return ""
    cpu = numerics.get("cpu") or "unknown CPU"
    if numerics.get("bf16_autocast") is False:  # bf16: false, or auto where bf16 is emulated
        trained = f"in float32 ({cpu}, whose bf16 kernels are {numerics.get('bf16_matmul')})"
    else:
        trained = f"with bf16 matrix products on {numerics.get('bf16_matmul')} kernels ({cpu})"
    return (
        f". This toy base was trained {trained}; the toy base and organisms depend on the arithmetic as on a "
        "seed. docs/toy-results.md ('Other CPUs') says on which kernels the default strengths were calibrated, "
        "what they give on others and how to calibrate for this machine"
    )


def cmd_tables(args) -> None:
    from cmt.analysis.reports import write_tables

    instruct = key_values(args.instruct, "--instruct", bool_word) if args.instruct else None
    main_k = key_values(args.main_k, "--main-k", int) or None
    write_tables(args.evals, args.min_induction_delta, args.runs, args.main, args.methods, args.kscaling,
                 instruct, main_k, args.n_boot, args.seed, args.controls, args.validity,
                 args.induction_reports, args.induction)  # fmt: skip


def cmd_eta(args) -> None:
    from cmt.analysis.reports import write_eta_tables

    write_eta_tables(
        args.candidates, args.out, args.summary, args.n_bins, args.n_boot, args.seed, args.min_bin
    )


def cmd_figures(args) -> None:
    from cmt.analysis.figures import make_figures

    for path in make_figures(args.tables_dir, args.out_dir):
        log.info("wrote %s", path)


def cmd_stability(args) -> None:
    from cmt.analysis.reports import write_stability_outputs
    from cmt.organisms import parse_toy_specs

    write_stability_outputs(
        args.runs, args.fragility, parse_toy_specs(args.organisms), args.out, args.summary, args.figure
    )


def cmd_cross_model_table(args) -> None:
    from cmt.analysis.reports import write_cross_model_table

    write_cross_model_table(args.records, args.out)


def cmd_shift_table(args) -> None:
    from cmt.analysis.reports import write_shift_tables

    write_shift_tables(args.records, args.runs, args.out, args.correlations, args.fragility)


def cmd_harmful_table(args) -> None:
    from cmt.analysis.reports import write_harmful_tables

    write_harmful_tables(args.rows, args.runs, args.out, args.summary, args.controls, args.seed, args.n_boot,
                         args.max_nonanswer_rise)  # fmt: skip


def cmd_diagnose_table(args) -> None:
    from cmt.analysis.reports import write_diagnose_tables

    write_diagnose_tables(args.evidence, args.runs, args.out, args.summary)


def add_commands(sub) -> list[tuple[str, str]]:
    """Add the analysis commands to `sub`; return (name, help) of each, for the overview in `cmt --help`."""
    listed = []

    def command(name: str, text: str, func):
        listed.append((name, text))
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func, needs_device=False)
        add_job_options(p)
        return p

    p = command("induction-report", "base vs organism M with Wilson intervals", cmd_induction_report)
    p.add_argument("--base", required=True)
    p.add_argument("--phase1", required=True)
    p.add_argument("--min-delta", type=float, required=True)
    p.add_argument("--gate", type=json_object, default=None,
                   help='analysis.induction_gate as JSON: {"band": [lo, hi], "ci_band": [lo, hi], "max_base": x, '
                        '"on_fail": "fail" | "exclude"}; with fail, a cell outside the gate exits non-zero')  # fmt: skip
    p.add_argument("--pretrain-report", default=None,
                   help="the toy base's pretrain_report.json: its numeric path goes into the report")  # fmt: skip
    p.add_argument("--out", required=True)

    p = command("tables", "write runs.csv, main.csv (and methods.csv, kscaling.csv) from eval parquet",
                cmd_tables)  # fmt: skip
    p.add_argument("--evals", nargs="*", default=[],
                   help="eval parquet files (none, when the gate excluded every cell: tables without runs)")  # fmt: skip
    p.add_argument("--min-induction-delta", type=float, required=True)
    p.add_argument("--runs", required=True)
    p.add_argument("--main", required=True)
    p.add_argument("--methods", default=None, help="methods.csv: one row per (organism, method)")
    p.add_argument("--kscaling", default=None, help="kscaling.csv: delta against k per selecting method")
    p.add_argument("--instruct", nargs="+", default=None, metavar="MODEL=true|false",
                   help="models' instruct flag")  # fmt: skip
    p.add_argument("--main-k", nargs="+", default=None, metavar="METHOD=K",
                   help="each selecting method's own k; its other (k-scaling) runs stay out of main.csv and "
                        "methods.csv")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--controls", default=None, help="controls.csv: one row per control run")
    p.add_argument("--validity", type=json_object, default=None,
                   help="analysis.validity as JSON: max_capability_drop, max_degenerate_rate")  # fmt: skip
    p.add_argument("--induction-reports", nargs="*", default=[], help="every cell's induction report (JSON)")
    p.add_argument("--induction", default=None, help="induction.csv: every cell, its M, gate and reasons")

    p = command("eta", "eta(s) bins and summary from selecting methods' candidates on eval prompts", cmd_eta)
    p.add_argument("--candidates", nargs="*", default=[], help="candidate parquet files (none: empty tables)")
    p.add_argument("--out", required=True, help="eta.csv: one row per (organism, method, k, transform, bin)")
    p.add_argument("--summary", required=True, help="eta_summary.csv: flatness, slope test, selection effect")
    p.add_argument("--n-bins", type=int, default=10)
    p.add_argument("--min-bin", type=int, default=10, help="rows a merged bin needs to enter the flatness")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")

    p = command("figures", "PNG and PDF figures from the tables directory", cmd_figures)
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--out-dir", required=True)

    p = command(
        "stability",
        "the stability sweep's table, summary and figure (Δ against fragility and level)",
        cmd_stability,
    )
    p.add_argument("--runs", required=True, help="runs.csv")
    p.add_argument("--fragility", nargs="+", required=True, help="`cmt fragility` JSON records")
    p.add_argument("--organisms", nargs="+", required=True, metavar="NAME=GENERATOR:STABILITY")
    p.add_argument("--out", required=True, help="stability.csv")
    p.add_argument("--summary", required=True, help="stability_summary.csv")
    p.add_argument(
        "--figure", required=True, help="figure path without extension (.png and .pdf are written)"
    )

    p = command("cross-model-table", "cross_model_kl.csv from `cmt cross-kl` records", cmd_cross_model_table)
    p.add_argument("--records", nargs="+", required=True, help="`cmt cross-kl` JSON records")
    p.add_argument("--out", required=True, help="cross_model_kl.csv")

    p = command(
        "shift-table", "shift.csv and delta correlations from shift/fragility records", cmd_shift_table
    )
    p.add_argument("--records", nargs="+", required=True, help="`cmt shift` JSON records")
    p.add_argument("--fragility", nargs="*", default=[], help="`cmt fragility` JSON records")
    p.add_argument("--runs", required=True, help="runs.csv (delta per run)")
    p.add_argument("--out", required=True)
    p.add_argument("--correlations", required=True)

    p = command("diagnose-table", "diagnose.csv (predicted and observed sign per run) and its summary",
                cmd_diagnose_table)  # fmt: skip
    p.add_argument("--evidence", nargs="*", default=[],
                   help="`cmt diagnose` evidence parquet files (none: every cell excluded, tables without runs)")  # fmt: skip
    p.add_argument("--runs", default=None, help="runs.csv; without it the table holds predictions only")
    p.add_argument("--out", required=True, help="diagnose.csv")
    p.add_argument("--summary", default=None, help="diagnose_summary.csv (needs --runs)")

    p = command(
        "harmful-table",
        "harmful.csv, harmful_summary.csv and harmful_controls.csv from `cmt harmful` rows",
        cmd_harmful_table,
    )
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--runs", required=True, help="runs.csv: each run's validity")
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--controls", required=True, help="harmful_controls.csv: the harmful-compliance control")
    p.add_argument("--seed", type=int, default=0, help="the request bootstrap's seed")
    p.add_argument("--n-boot", type=int, default=2000, help="request-bootstrap resamples")
    p.add_argument("--max-nonanswer-rise", type=float, default=None,
                   help="analysis.validity.max_nonanswer_rise: a larger rise in replies that neither refuse nor "
                        "comply makes the run invalid for the harm tables (default 0.10)")  # fmt: skip
    return listed
