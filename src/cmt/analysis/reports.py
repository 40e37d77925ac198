"""The table jobs end to end: read the job's inputs, compute the tables, write the CSV files.

`cmt tables`, `cmt eta`, `cmt shift-table` and `cmt harmful-table` call these with the paths a rule passes, so the
command line only wires arguments to them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cmt.runtime.io import write_csv

log = logging.getLogger(__name__)


def write_tables(
    evals: Sequence[str],
    min_induction_delta: float,
    runs_out: str,
    main_out: str,
    methods_out: str | None = None,
    kscaling_out: str | None = None,
    instruct: dict[str, bool] | None = None,
    main_k: dict[str, int] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    controls_out: str | None = None,
    validity: dict | None = None,
    induction_reports: Sequence[str] = (),
    induction_out: str | None = None,
) -> None:
    """runs.csv and main.csv (and methods.csv, kscaling.csv, controls.csv when asked) from eval parquet files;
    a warning per organism that its induction check flags as not induced."""
    from cmt.analysis.runs import read_evals, runs_table
    from cmt.analysis.tables import controls_table, kscaling_table, main_table, methods_table

    runs = runs_table(read_evals(list(evals)), min_induction_delta, instruct, n_boot, seed, main_k, validity)
    not_induced = runs.loc[~runs["induced"], ["model", "organism", "seed"]].drop_duplicates()
    for row in not_induced.itertuples():
        log.warning("organism %s/%s/seed%s is flagged as not induced", row.model, row.organism, row.seed)
    write_csv(runs_out, runs)
    write_csv(main_out, main_table(runs, seed, n_boot))
    if methods_out:
        write_csv(methods_out, methods_table(runs, seed, n_boot))
    if kscaling_out:
        write_csv(kscaling_out, kscaling_table(runs, seed, n_boot))
    if controls_out:
        write_csv(controls_out, controls_table(runs))
    if induction_out:
        from cmt.analysis.induction import induction_table

        write_csv(induction_out, induction_table(induction_reports))


def write_eta_tables(
    candidates: Sequence[str],
    out: str,
    summary_out: str,
    n_bins: int = 10,
    n_boot: int = 2000,
    seed: int = 0,
    min_bin: int = 10,
) -> None:
    """eta.csv (bins) and eta_summary.csv from selecting methods' candidate files (none: empty tables)."""
    from cmt.analysis.eta import eta_summary, eta_table, read_candidates

    table = read_candidates(list(candidates))
    write_csv(out, eta_table(table, n_bins, min_bin))
    write_csv(summary_out, eta_summary(table, n_bins, n_boot, seed, min_bin))


def write_shift_tables(
    records: Sequence[str], runs_csv: str, out: str, correlations_out: str, fragility: Sequence[str] = ()
) -> None:
    """shift.csv and its correlations with delta from `cmt shift` (and `cmt fragility`) records."""
    import pandas as pd

    from cmt.analysis.shift import read_records, shift_correlations, shift_table

    fragility_records = read_records(fragility) if fragility else None
    table = shift_table(read_records(records), pd.read_csv(runs_csv), fragility_records)
    write_csv(out, table)
    write_csv(correlations_out, shift_correlations(table))


def write_harmful_tables(
    rows: Sequence[str],
    runs_csv: str,
    out: str,
    summary_out: str,
    controls_out: str,
    seed: int = 0,
    n_boot: int = 2000,
    max_nonanswer_rise: float | None = None,
) -> None:
    """harmful.csv (with each run's validity from runs.csv and the non-answer check), harmful_summary.csv and
    harmful_controls.csv from `cmt harmful` row files."""
    import pandas as pd

    from cmt.analysis.harmful import (
        DEFAULT_MAX_NONANSWER_RISE,
        harmful_controls,
        harmful_summary,
        harmful_table,
        read_rows,
        with_validity,
    )

    limit = DEFAULT_MAX_NONANSWER_RISE if max_nonanswer_rise is None else max_nonanswer_rise
    table = with_validity(harmful_table(read_rows(rows), seed, n_boot), pd.read_csv(runs_csv), limit)
    write_csv(out, table)
    write_csv(summary_out, harmful_summary(table))
    write_csv(controls_out, harmful_controls(table))


def write_diagnose_tables(
    evidence: Sequence[str], runs_csv: str | None, out: str, summary_out: str | None
) -> None:
    """diagnose.csv from `cmt diagnose` evidence (with observed signs when runs.csv is given) and its summary."""
    import pandas as pd

    from cmt.analysis.diagnose import EVIDENCE_COLUMNS, diagnose_summary, diagnose_table

    if summary_out and not runs_csv:
        raise ValueError("diagnose_summary.csv scores predictions against observed signs: give --runs too")
    frames = [pd.read_parquet(p) for p in evidence]  # none when the gate excluded every cell
    table = diagnose_table(
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EVIDENCE_COLUMNS),
        pd.read_csv(runs_csv) if runs_csv else None,
    )
    write_csv(out, table)
    if summary_out:
        write_csv(summary_out, diagnose_summary(table))


def write_stability_outputs(
    runs_csv: str,
    fragility: Sequence[str],
    specs: dict[str, tuple[str, str]],
    out: str,
    summary_out: str,
    figure_stem: str,
) -> None:
    """stability.csv, stability_summary.csv and the stability figure (cmt.analysis.stability) from runs.csv
    and the `cmt fragility` records."""
    import pandas as pd

    from cmt.analysis.plotting import save_figure
    from cmt.analysis.shift import read_records
    from cmt.analysis.stability import stability_figure, stability_summary, stability_table

    table = stability_table(pd.read_csv(runs_csv), read_records(fragility), specs)
    write_csv(out, table)
    write_csv(summary_out, stability_summary(table))
    swept: dict[str, list[str]] = {}
    for generator, level in specs.values():
        swept.setdefault(generator, []).append(level)
    save_figure(stability_figure(table, swept), figure_stem)


def write_cross_model_table(records: Sequence[str], out: str) -> None:
    """cross_model_kl.csv from `cmt cross-kl` records: one row per (model A, model B, organism, seed)."""
    from cmt.analysis.shift import read_records

    table = read_records(records).sort_values(["organism", "seed", "model_a", "model_b"])
    write_csv(out, table.reset_index(drop=True))
