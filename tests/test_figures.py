import math

import pandas as pd
import pytest

from cmt.analysis.eta import eta_table
from cmt.analysis.figures import make_figures
from cmt.analysis.tables import kscaling_table, methods_table
from cmt.cli import main as cli_main
from cmt.runtime.io import write_csv

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF"}


def write_tables(tables_dir, with_shift):
    rows = []
    for model, seed in (("pt", 0), ("pt", 1), ("it", 0)):
        for method, k, delta in (("gst", 1, -0.1), ("act", 1, 0.2), ("self_certainty", 1, -0.05),
                                 ("self_certainty", 4, -0.2 + 0.1 * seed)):  # fmt: skip
            rows.append({"model": model, "organism": "sycophancy", "seed": seed, "method": method, "k": k,
                         "delta": delta, "instruct": model == "it"})  # fmt: skip
    runs = pd.DataFrame(rows)
    candidates = pd.DataFrame(
        [{"organism": "sycophancy", "method": "self_certainty", "k": 4, "seed": 0, "prompt_id": f"p{p}",
          "score": float(r), "selected": r == 3, "scored": True, "misaligned": float(p % 4 <= r)}
         for p in range(20) for r in range(4)]
    )  # fmt: skip
    write_csv(tables_dir / "runs.csv", runs)
    write_csv(tables_dir / "methods.csv", methods_table(runs, n_boot=200, main_k={"self_certainty": 4}))
    write_csv(tables_dir / "kscaling.csv", kscaling_table(runs, n_boot=200))
    write_csv(tables_dir / "eta.csv", eta_table(candidates))
    if with_shift:
        shift = runs.assign(
            label_ce_token=[0.1 * i for i in range(len(runs))], kl_realised=math.nan, fragility=0.3
        )
        write_csv(tables_dir / "shift.csv", shift)


def assert_figures(out_dir, stems):
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == sorted(f"{stem}.{fmt}" for stem in stems for fmt in MAGIC)  # no temporary leftovers
    for stem in stems:
        for fmt, magic in MAGIC.items():
            data = (out_dir / f"{stem}.{fmt}").read_bytes()
            assert data.startswith(magic) and len(data) > 1000, f"{stem}.{fmt}"


def test_every_figure_is_written_as_png_and_pdf(tmp_path):
    write_tables(tmp_path / "tables", with_shift=True)
    paths = make_figures(tmp_path / "tables", tmp_path / "figures")
    stems = ["delta_by_method", "eta_rank", "eta_zscore", "kscaling", "delta_vs_shift"]
    assert len(paths) == 2 * len(stems)
    assert_figures(tmp_path / "figures", stems)


def test_shift_figure_is_skipped_with_a_note_when_absent(tmp_path):
    write_tables(tmp_path / "tables", with_shift=False)
    log_file = tmp_path / "figures.log"
    argv = ["figures", "--tables-dir", str(tmp_path / "tables"), "--out-dir", str(tmp_path / "figures"),
            "--log", str(log_file)]  # fmt: skip
    assert cli_main(argv) == 0
    assert "skipping the delta-against-shift figure" in log_file.read_text()
    assert_figures(tmp_path / "figures", ["delta_by_method", "eta_rank", "eta_zscore", "kscaling"])


def test_empty_tables_still_give_figures(tmp_path):
    tables = tmp_path / "tables"
    write_tables(tables, with_shift=False)
    for name in ("methods.csv", "kscaling.csv", "eta.csv"):
        write_csv(tables / name, pd.read_csv(tables / name).iloc[0:0])
    make_figures(tables, tmp_path / "figures")
    assert_figures(tmp_path / "figures", ["delta_by_method", "eta_rank", "eta_zscore", "kscaling"])


def test_missing_table_or_column_is_a_clear_error(tmp_path):
    tables = tmp_path / "tables"
    write_tables(tables, with_shift=False)
    (tables / "kscaling.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing table\(s\) \['kscaling.csv'\]"):
        make_figures(tables, tmp_path / "figures")
    write_tables(tables, with_shift=False)
    write_csv(tables / "eta.csv", pd.read_csv(tables / "eta.csv").drop(columns="eta_ci_low"))
    with pytest.raises(ValueError, match=r"eta.csv: missing column\(s\) \['eta_ci_low'\]"):
        make_figures(tables, tmp_path / "figures")
