import base64
import io
import math
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from docutils.core import publish_parts
from jinja2 import Environment
from matplotlib.layout_engine import ConstrainedLayoutEngine

from cmt.analysis.eta import eta_summary, eta_table
from cmt.analysis.figures import (
    LABEL_CONTROL,
    LABEL_INVALID,
    LABEL_NO_DELTA,
    LABEL_VALID,
    delta_by_method_figure,
    delta_vs_shift_figure,
    eta_figure,
    kscaling_figure,
    make_figures,
    save_figure,
)
from cmt.analysis.runs import family_of
from cmt.analysis.tables import controls_table, kscaling_table, main_table, methods_table
from cmt.cli import main as cli_main
from cmt.runtime.io import write_csv

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF"}


def write_tables(tables_dir, with_shift):
    rows = []
    for model, seed in (("pt", 0), ("pt", 1), ("it", 0)):
        for method, k, delta in (("gst", 1, -0.1), ("act", 1, 0.2), ("self_certainty", 1, -0.05),
                                 ("self_certainty", 4, -0.2 + 0.1 * seed)):  # fmt: skip
            rows.append({"model": model, "organism": "sycophancy", "seed": seed, "method": method, "k": k,
                         "delta_pp": 100 * delta, "instruct": model == "it",
                         "main_run": method != "self_certainty" or k == 4})  # fmt: skip
    runs = pd.DataFrame(rows)
    candidates = pd.DataFrame(
        [{"organism": "sycophancy", "method": "self_certainty", "k": 4, "seed": 0, "prompt_id": f"p{p}",
          "score": float(r), "selected": r == 3, "scored": True, "misaligned": float(p % 4 <= r)}
         for p in range(20) for r in range(4)]
    )  # fmt: skip
    write_csv(tables_dir / "runs.csv", runs)
    write_csv(tables_dir / "methods.csv", methods_table(runs, n_boot=200))
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


# A richer grid, built by hand: two organisms, three seeds, a broken (invalid) run, a run without labels
# (n_train 0, so no delta), k-scaling runs, both controls (one that fails), and an organism whose eta cannot
# be fitted (every candidate aligned).
ORGANISMS = ("reward_hacking", "sycophancy")
MAIN_K = {"gst": 1, "act": 1, "self_certainty": 4, "dual_decoding": 4, "oracle_aligned": 1,
          "oracle_misaligned": 1}  # fmt: skip


def rich_runs():
    rows = []
    for organism in ORGANISMS:
        for seed in range(3):
            for method, main_k in MAIN_K.items():
                for k in (1, 2, 4) if main_k == 4 else (1,):
                    delta = {"oracle_aligned": -30.0, "oracle_misaligned": 25.0}.get(
                        method, 3.0 * seed - 4 + k
                    )
                    if (organism, method, seed) == ("sycophancy", "oracle_misaligned", 2):
                        delta = 1.0  # its CI straddles 0: this control fails
                    no_labels = (organism, method, seed) == ("reward_hacking", "gst", 1)
                    rows.append({
                        "model": "toy", "organism": organism, "method": method, "family": family_of(method),
                        "k": k, "main_run": k == main_k, "seed": seed, "instruct": False,
                        "delta_pp": math.nan if no_labels else delta,
                        "delta_pp_ci_low": math.nan if no_labels else delta - 5,
                        "delta_pp_ci_high": math.nan if no_labels else delta + 5,
                        "n_train": 0 if no_labels else 50, "label_set": f"{organism}{seed}{method}{k}",
                        "valid": (organism, method, seed) != ("sycophancy", "act", 0),
                    })  # fmt: skip
    return pd.DataFrame(rows)


def rich_candidates():
    rows = []
    for organism in ORGANISMS:
        for method in ("self_certainty", "dual_decoding"):
            for k in (1, 2, 4):
                for p in range(16):
                    for r in range(k):
                        misaligned = 0.0 if organism == "reward_hacking" else float((p + r) % 3 == 0)
                        rows.append({"organism": organism, "method": method, "k": k, "seed": 0,
                                     "prompt_id": f"p{p}", "score": float((p * 7 + r * 3) % 5), "selected": r == 0,
                                     "scored": True, "misaligned": misaligned})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def rich():
    runs = rich_runs()
    candidates = rich_candidates()
    return {
        "runs": runs,
        "methods": methods_table(runs, n_boot=100),
        "kscaling": kscaling_table(runs, n_boot=100),
        "controls": controls_table(runs),
        "eta": eta_table(candidates),
        "eta_summary": eta_summary(candidates, n_boot=20),
    }


def legend_texts(fig):
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def marks(fig, gid):
    """The points of every scatter drawn with this gid (the figures tag each kind of mark)."""
    found = [c.get_offsets() for ax in fig.axes for c in ax.collections if c.get_gid() == gid]
    return np.concatenate(found) if found else np.empty((0, 2))


def assert_titles_clear(fig):
    """No subplot title overlaps another subplot's visible tick labels or title (constrained layout)."""
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        title = ax.title.get_window_extent(renderer)
        for other in fig.axes:
            if other is ax:
                continue
            texts = [other.title, *other.get_xticklabels(), *other.get_yticklabels()]
            for text in texts:
                if text.get_visible() and text.get_text():
                    assert not title.overlaps(text.get_window_extent(renderer)), (
                        ax.get_title(),
                        text.get_text(),
                    )


def test_delta_by_method_marks_invalid_runs_runs_without_labels_and_controls(rich):
    fig = delta_by_method_figure(rich["runs"], rich["methods"])
    labels = legend_texts(fig)
    for family in ("label_generation", "regularization", "baseline"):
        assert f"{family}: mean ± 95% CI" in labels
    assert any(label.startswith(LABEL_VALID) for label in labels)  # the grey dots have a legend entry
    assert f"{LABEL_INVALID}, n = 1" in labels
    assert f"{LABEL_NO_DELTA}, n = 1" in labels
    assert any(label.startswith(LABEL_CONTROL) for label in labels)
    invalid = marks(fig, "invalid")
    assert len(invalid) == 1 and invalid[0, 1] == pytest.approx(-3.0)  # sycophancy act seed 0, not hidden
    no_delta = marks(fig, "no_delta")
    assert len(no_delta) == 1 and no_delta[0, 1] == 0  # reward_hacking gst seed 1, on the zero line
    assert len(marks(fig, "control")) == 2 * 3 * 2  # every control run, from runs.csv
    # Controls come from controls.csv when given: the failed one is drawn hollow.
    fig = delta_by_method_figure(rich["runs"], rich["methods"], rich["controls"])
    hollow = [c for ax in fig.axes for c in ax.collections
              if c.get_gid() == "control" and len(c.get_offsets()) and len(c.get_facecolors()) == 0]  # fmt: skip
    assert sum(len(c.get_offsets()) for c in hollow) == 1
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert "oracle_aligned\n(expect Δ<0)" in ticks and "oracle_misaligned\n(expect Δ>0)" in ticks
    assert "sycophancy: 18 main runs, 1 invalid, 0 without Phase 3" in [ax.get_title() for ax in fig.axes]
    assert "Δ misalignment" in fig.get_suptitle()
    assert_titles_clear(fig)


def test_delta_and_k_figures_name_the_cells_the_induction_gate_left_out(rich):
    """In exclude mode, a panel names its organism's left-out seeds, and an organism left out on every seed
    gets a panel that says so instead of vanishing from the figure."""
    induction = pd.DataFrame(
        [{"organism": "sycophancy", "seed": s, "in_band": s != 1, "on_fail": "exclude"} for s in (0, 1, 2)]
        + [
            {"organism": "power_seeking", "seed": s, "in_band": False, "on_fail": "exclude"}
            for s in (0, 1, 2)
        ]
    )
    fig = delta_by_method_figure(rich["runs"], rich["methods"], rich["controls"], induction)
    titles = [ax.get_title() for ax in fig.axes]
    assert (
        "sycophancy: 18 main runs, 1 invalid, 0 without Phase 3\nseed(s) 1 excluded at the induction gate"
        in titles
    )
    assert "power_seeking: excluded at the induction gate" in titles
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("left out\nthe organism on seed(s) 0, 1, 2" in t for t in texts)
    assert_titles_clear(fig)
    fig = kscaling_figure(rich["kscaling"], rich["methods"], induction)
    assert "sycophancy\nseed(s) 1 excluded at the induction gate" in [ax.get_title() for ax in fig.axes]
    assert "(excluded at the induction gate on every seed: power_seeking)" in fig.get_suptitle()
    assert_titles_clear(fig)
    # No gate (on_fail empty): a cell outside the band still ran, so nothing is called excluded.
    ungated = induction.assign(on_fail=None)
    fig = delta_by_method_figure(rich["runs"], rich["methods"], rich["controls"], ungated)
    assert not any("excluded" in ax.get_title() for ax in fig.axes)
    assert "power_seeking" not in " ".join(ax.get_title() for ax in fig.axes)


@pytest.mark.parametrize("transform", ["rank", "zscore"])
@pytest.mark.parametrize("with_summary", [True, False])
def test_eta_panels_share_0_1_and_an_unfittable_panel_says_why(rich, transform, with_summary):
    fig = eta_figure(rich["eta"], transform, rich["eta_summary"] if with_summary else None)
    assert len(fig.axes) == 4  # 2 organisms x 2 methods
    for ax in fig.axes:
        assert ax.get_xlim() == (0, 1)
        lines = [line for line in ax.get_lines() if len(line.get_xdata())]
        assert all(0 <= x <= 1 for line in lines for x in line.get_xdata())
    for ax in fig.axes:
        reasons = [t.get_text() for t in ax.texts if t.get_gid() == "eta_reason"]
        if ax.get_title().startswith("reward_hacking"):  # every candidate aligned: M is constant
            assert len(reasons) == 1 and "M is constant (all 0)" in reasons[0], reasons
            assert "k=2" in reasons[0] and "k=4" in reasons[0]
        else:
            assert not reasons
    labels = legend_texts(fig)
    assert {"k=2", "k=4", "Wilson 95% CI"} <= set(labels)
    assert any(label.startswith("k=1 not shown") for label in labels)  # one candidate: nothing to rank
    if with_summary:
        assert all("slope p:" in ax.get_title() for ax in fig.axes if ax.get_title().startswith("sycophancy"))
    assert "η(s)" in fig.get_suptitle()
    assert_titles_clear(fig)


def test_kscaling_lines_are_dodged_and_labelled(rich):
    fig = kscaling_figure(rich["kscaling"], rich["methods"])
    assert {"self_certainty", "dual_decoding", "gst (greedy): mean, 95% CI"} <= set(legend_texts(fig))
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if line.get_linestyle() == "-"]  # not the error-bar caps
        curves = [line.get_xdata() for line in lines if len(line.get_xdata()) == 3]  # not the zero line
        assert len(curves) == 2
        assert all(a != b for a, b in zip(*curves, strict=True))  # no two methods at the same x
        assert all(
            abs(math.log2(x / k)) < 0.2 for curve in curves for x, k in zip(curve, (1, 2, 4), strict=True)
        )
    assert_titles_clear(fig)


def test_delta_vs_shift_tells_methods_apart_by_marker(rich):
    shift = rich["runs"].assign(label_ce_token=np.linspace(0.1, 2, len(rich["runs"])), kl_realised=1.0,
                                fragility=math.nan)  # fmt: skip
    fig = delta_vs_shift_figure(shift)
    titles = [legend.get_title().get_text() for legend in fig.legends]
    assert titles == ["organism (colour)", "method (marker)"]
    organisms, methods = fig.legends
    assert [t.get_text() for t in organisms.get_texts()] == list(ORGANISMS)
    method_handles = {
        t.get_text(): h for t, h in zip(methods.get_texts(), methods.legend_handles, strict=True)
    }
    methods = {m for m in MAIN_K if not m.startswith("oracle_")}  # as shift_correlations: no control
    assert set(method_handles) - {LABEL_INVALID} == methods
    assert len({method_handles[m].get_marker() for m in methods}) == len(methods)
    assert LABEL_INVALID in method_handles
    assert len(marks(fig, "invalid")) == 2  # the invalid main run, in both measured panels
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["no runs measured"]  # fragility was not measured
    assert_titles_clear(fig)


def test_make_figures_reads_controls_and_eta_summary_when_present(tmp_path, rich):
    tables = tmp_path / "tables"
    for name in ("runs", "methods", "kscaling", "controls", "eta", "eta_summary"):
        write_csv(tables / f"{name}.csv", rich[name])
    summary = rich["eta_summary"].assign(
        slope=math.nan, slope_p=math.nan, slope_reason="a reason from the table"
    )
    write_csv(tables / "eta_summary.csv", summary)
    paths = make_figures(tables, tmp_path / "figures")
    assert_figures(tmp_path / "figures", ["delta_by_method", "eta_rank", "eta_zscore", "kscaling"])
    assert len(paths) == 8
    fig = eta_figure(pd.read_csv(tables / "eta.csv"), "rank", pd.read_csv(tables / "eta_summary.csv"))
    reasons = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "eta_reason"]
    assert len(reasons) == 4 and all("a reason from the table" in r for r in reasons)


def test_eta_panel_titles_name_a_warned_fit_without_numpys_messages(rich):
    """A k whose GEE fit warned and gave no p is named in one short clause, not with every warning's text."""
    summary = rich["eta_summary"].copy()
    warned = summary["k"] == summary["k"].max()
    summary.loc[warned, ["slope", "slope_p"]] = math.nan
    summary.loc[warned, "slope_reason"] = (
        "fitted with warnings: RuntimeWarning: invalid value encountered in divide; "
        "RuntimeWarning: overflow encountered in exp"
    )
    fig = eta_figure(rich["eta"], "rank", summary)
    titles = [" ".join(ax.get_title().split()) for ax in fig.axes if ax.get_title()]  # undo the title's wrap
    named = [t for t in titles if "the fit warned (slope_reason: eta_summary.csv)" in t]
    assert named and not any("RuntimeWarning" in t for t in titles)


REPORT_DIR = Path(__file__).resolve().parents[1] / "workflow" / "report"


def render_report_text(path, files):
    """Render a report text as snakemake 9's --report does: Jinja (trim_blocks, lstrip_blocks; `files` are the
    report's results, with `target` their file name and `path`), the result links appended, then docutils'
    html writer with its default settings. Returns the HTML body and docutils' messages."""
    links = "\n\n" + "\n".join(f".. _{f.target}: javascript:app.showResultInfo('{f.path}')" for f in files)
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(path.read_text() + links).render(snakemake=None, categories={}, files=files)
    warnings = io.StringIO()
    html = publish_parts(text, writer="html", settings_overrides={"warning_stream": warnings})
    return html["html_body"], warnings.getvalue()


@pytest.mark.parametrize("caption", sorted(p.name for p in REPORT_DIR.glob("*.rst")), ids=str)
def test_every_report_text_renders_without_docutils_messages(caption):
    html, messages = render_report_text(REPORT_DIR / caption, [])
    assert not messages and "system-message" not in html and html.strip()


def test_report_landing_page_opens_on_main_table_and_delta_figure(tmp_path, rich):
    write_csv(tmp_path / "main.csv", main_table(rich["runs"], n_boot=100))
    write_csv(tmp_path / "controls.csv", rich["controls"])
    save_figure(
        delta_by_method_figure(rich["runs"], rich["methods"], rich["controls"]), tmp_path / "delta_by_method"
    )
    files = [SimpleNamespace(target=name, path=tmp_path / name)
             for name in ("delta_by_method.pdf", "delta_by_method.png", "main.csv", "controls.csv")]  # fmt: skip
    html, messages = render_report_text(REPORT_DIR / "workflow.rst", files)
    assert not messages
    table, figure, rest = html.index("<table"), html.index("<img"), html.index("rule graph comes last")
    assert table < figure < rest  # the main table, then the figure; the rule graph is drawn after this text
    header = re.findall(r'<th class="head">([^<]*)</th>', html)
    assert header[:4] == ["organism", "family", "runs", "mean Δ (pp) [95% CI]"] and "invalid" in header
    assert html.count("<tr>") == 1 + 2 * 4  # header, then 2 organisms x (all + 3 families)
    assert "11 of 12 control runs moved M the way they must" in html  # one control fails
    src = re.search(r'<img [^>]*src="([^"]*)"', html).group(1)
    assert src.startswith("data:image/png;base64,") and "\n" in src  # lines docutils accepts
    # browsers drop the whitespace of base64 data
    assert (
        base64.b64decode(re.sub(r"\s", "", src.split(",", 1)[1]), validate=True)
        == (tmp_path / "delta_by_method.png").read_bytes()
    )
    # Every tail of the three-byte groups (none, one or two bytes over), and a file of more than one line.
    for size in (1, 2, 3, 4, 5, 3001):
        small = tmp_path / f"png_{size}"
        small.write_bytes(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
        one = render_report_text(REPORT_DIR / "workflow.rst", [SimpleNamespace(target="delta_by_method.png",
                                                                               path=small)])[0]  # fmt: skip
        data = re.search(r'src="data:image/png;base64,([^"]*)"', one).group(1)
        assert base64.b64decode(re.sub(r"\s", "", data), validate=True) == small.read_bytes(), size
    # Without results, or with an empty main.csv, the page still renders and says what is missing.
    html, messages = render_report_text(REPORT_DIR / "workflow.rst", [])
    assert not messages and "main.csv is not in this report" in html and "<img" not in html
    write_csv(tmp_path / "main.csv", main_table(rich["runs"], n_boot=100).iloc[0:0])
    html, messages = render_report_text(REPORT_DIR / "workflow.rst", files[2:3])
    assert not messages and "main.csv has no rows" in html and "<table" not in html


def test_eta_figure_draws_the_merged_groups_not_the_raw_bins():
    """Bins of 30, 5, 40 and 12 rows with eta_min_bin 10: the 5-row bin joins its smaller neighbour (30), so
    the curve has three points, the first at the row-weighted mean x of its two bins and at the merged η."""
    from cmt.analysis.eta import merge_bins

    n, k, x = [30, 5, 40, 12], [3, 5, 20, 9], [0.1, 0.3, 0.6, 0.9]
    labels = merge_bins(n, 10)
    assert labels == [0, 0, 1, 2]
    merged = {0: (35, 8), 1: (40, 20), 2: (12, 9)}
    bins = pd.DataFrame(
        {
            "organism": "sycophancy", "method": "gst", "k": 4, "transform": "rank", "bin": range(4),
            "n": n, "n_misaligned": k, "eta": [a / b for a, b in zip(k, n, strict=True)],
            "eta_ci_low": 0.0, "eta_ci_high": 1.0, "score_mean": x, "merged_bin": labels,
            "merged_n": [merged[g][0] for g in labels], "merged_eta": [merged[g][1] / merged[g][0] for g in labels],
            "merged_eta_ci_low": 0.0, "merged_eta_ci_high": 1.0, "in_flatness": True,
        }
    )  # fmt: skip
    fig = eta_figure(bins, "rank")
    (ax,) = fig.axes
    markers = [line for line in ax.get_lines() if line.get_marker() == "o" and len(line.get_xdata())]
    xs = sorted(float(v) for line in markers for v in line.get_xdata())
    ys = sorted(float(v) for line in markers for v in line.get_ydata())
    assert xs == pytest.approx([(0.1 * 30 + 0.3 * 5) / 35, 0.6, 0.9])
    assert ys == pytest.approx(sorted([8 / 35, 0.5, 0.75]))
    assert_titles_clear(fig)


def test_the_same_figure_is_saved_as_the_same_bytes(tmp_path, rich, monkeypatch):
    import time

    figure = lambda: delta_by_method_figure(rich["runs"], rich["methods"], rich["controls"])  # noqa: E731
    save_figure(figure(), tmp_path / "first")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400)  # a day later, as a rerun on another day
    save_figure(figure(), tmp_path / "second")
    for fmt in ("png", "pdf"):
        assert (tmp_path / f"first.{fmt}").read_bytes() == (tmp_path / f"second.{fmt}").read_bytes(), fmt
