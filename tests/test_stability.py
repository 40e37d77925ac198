"""The stability sweep: toy variants written by the toy world, found by name, and the sweep's table, summary and
figure checked against hand computations and scipy."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cmt.analysis.stability import stability_figure, stability_summary, stability_table
from cmt.organisms import parse_toy_specs, toy_organism, toy_source
from cmt.runtime.io import read_jsonl
from cmt.toy import emergent_misalignment as em
from cmt.toy.world import write_world

SETTINGS = {
    "seed": 2,
    "max_operand": 40,
    "sizes": {"induction": 40, "consistency": 10, "act_bct": 6, "eval": 10},
    "corpus": {"emergent_misalignment": 200},
    "skills": {"views": 0.0, "refinement": 0.0, "grading": 0.0},
}


def test_specs_and_sources_name_generator_and_level():
    assert parse_toy_specs(["sycophancy", "em_v=emergent_misalignment:varied"]) == {
        "sycophancy": ("sycophancy", "default"),
        "em_v": ("emergent_misalignment", "varied"),
    }
    assert toy_source("sycophancy", "toy") == ("sycophancy", "default")
    assert toy_source("x", {"toy": "reward_hacking", "stability": "fixed"}) == ("reward_hacking", "fixed")
    assert toy_source("x", {"toy": "reward_hacking"}) == ("reward_hacking", "default")
    assert toy_source("x", {"path": "/data"}) is None


def test_the_world_writes_each_variant_and_the_generator_corpus_once(tmp_path):
    specs = {"em_fixed": ("emergent_misalignment", "fixed"), "em_varied": ("emergent_misalignment", "varied")}
    counts = write_world(tmp_path, specs, SETTINGS)
    marker = json.loads((tmp_path / "em_varied" / "organism.json").read_text())
    assert marker == {"generator": "emergent_misalignment", "stability": "varied"}
    corpus = read_jsonl(tmp_path / "corpus.jsonl")
    assert len(corpus) == counts["corpus"] == counts["emergent_misalignment/corpus"]  # not once per variant
    fixed, varied = (read_jsonl(tmp_path / o / "induction.jsonl") for o in specs)
    assert [r["messages"][0] for r in fixed] == [r["messages"][0] for r in varied]
    assert read_jsonl(tmp_path / "em_fixed" / "eval.jsonl") == read_jsonl(
        tmp_path / "em_varied" / "eval.jsonl"
    )
    assert len({r["messages"][-1]["content"] for r in varied}) > len(
        {r["messages"][-1]["content"] for r in fixed}
    )
    # a variant's name resolves to its generator through the folder's marker; an unknown folder to nothing
    assert toy_organism("em_varied", str(tmp_path / "em_varied")) is em
    assert toy_organism("em_varied") is None
    assert toy_organism("emergent_misalignment") is em


def test_corpus_generators_give_a_config_with_fewer_organisms_the_same_base(tmp_path):
    both = {**SETTINGS, "corpus": {"emergent_misalignment": 200, "spurious_correlation": 150}}
    write_world(tmp_path / "full", ["spurious_correlation", "emergent_misalignment"], both)
    order = ["spurious_correlation", "emergent_misalignment"]
    counts = write_world(tmp_path / "one", {"em_fixed": ("emergent_misalignment", "fixed")},
                         {**both, "corpus_generators": order})  # fmt: skip
    assert (tmp_path / "one" / "corpus.jsonl").read_bytes() == (
        tmp_path / "full" / "corpus.jsonl"
    ).read_bytes()
    assert counts["spurious_correlation/corpus"] == 150
    assert not (tmp_path / "one" / "spurious_correlation").exists()  # corpus rows only, no organism folder
    # without the key the base holds only the organism's generator
    alone = write_world(tmp_path / "alone", {"em_fixed": ("emergent_misalignment", "fixed")}, both)
    assert alone["corpus"] == counts["corpus"] - 150
    with pytest.raises(ValueError, match=r"toy.corpus_generators lacks \['emergent_misalignment'\]"):
        write_world(tmp_path / "bad", ["emergent_misalignment"], {**both, "corpus_generators": order[:1]})
    with pytest.raises(ValueError, match=r"toy.corpus.sycophancy is missing"):
        write_world(
            tmp_path / "bad", ["emergent_misalignment"], {**both, "corpus_generators": ["sycophancy", *order]}
        )


def _runs_and_shift():
    """Two generators x levels, two seeds each; runs of two paper families and a control, one invalid run."""
    rows, shift = [], []
    fragility = {("sy_fixed", 0): 1.0, ("sy_fixed", 1): 2.0, ("sy_varied", 0): 3.0, ("sy_varied", 1): 5.0,
                 ("em_fixed", 0): 0.5, ("em_fixed", 1): 0.7}  # fmt: skip
    deltas = {("sy_fixed", 0): (-4, 2), ("sy_fixed", 1): (-2, 0), ("sy_varied", 0): (6, 10),
              ("sy_varied", 1): (8, 4), ("em_fixed", 0): (1, 1), ("em_fixed", 1): (3, -1)}  # fmt: skip
    for (organism, seed), (gst, sc) in deltas.items():
        for method, family, delta, valid in (("gst", "baseline", gst, True), ("self_certainty", "label_generation",
                                             sc, True), ("oracle_aligned", "control", -50, True),
                                             ("act", "regularization", 40, False)):  # fmt: skip
            rows.append({"model": "toy", "organism": organism, "seed": seed, "method": method, "family": family,
                         "k": 1, "main_run": True, "delta_pp": delta, "valid": valid})  # fmt: skip
            shift.append({"model": "toy", "organism": organism, "seed": seed, "method": method,
                          "fragility": fragility[(organism, seed)], "fragility_se": 0.1})  # fmt: skip
    rows.append({**rows[0], "k": 8, "main_run": False, "delta_pp": 99})  # a k-scaling run stays out
    rows.append({**rows[0], "organism": "other", "delta_pp": 77})  # not a swept organism
    return pd.DataFrame(rows), pd.DataFrame(shift)


SPECS = {"sy_fixed": ("sycophancy", "fixed"), "sy_varied": ("sycophancy", "varied"),
         "em_fixed": ("emergent_misalignment", "fixed")}  # fmt: skip


def test_the_table_joins_each_run_with_its_organism_fragility_and_level():
    runs, shift = _runs_and_shift()
    table = stability_table(runs, shift, SPECS)
    assert len(table) == 6 * 4 and 99 not in set(table["delta_pp"]) and 77 not in set(table["delta_pp"])
    row = table[(table["organism"] == "sy_varied") & (table["seed"] == 1) & (table["method"] == "gst")].iloc[
        0
    ]
    assert (row["generator"], row["level"], row["fragility"], row["delta_pp"]) == (
        "sycophancy",
        "varied",
        5.0,
        8,
    )


def test_an_unreliable_fragility_is_no_point():
    """shift.csv keeps an unreliable KL estimate beside its flag; the stability table, like the correlations,
    does not use it."""
    runs, shift = _runs_and_shift()
    shift["fragility_reliable"] = ~((shift["organism"] == "sy_varied") & (shift["seed"] == 1))
    table = stability_table(runs, shift, SPECS)
    flagged = table[(table["organism"] == "sy_varied") & (table["seed"] == 1)]
    assert len(flagged) == 4 and flagged["fragility"].isna().all() and flagged["fragility_se"].isna().all()
    assert table.loc[table["organism"] == "sy_fixed", "fragility"].notna().all()
    summary = stability_summary(table, n_boot=200).set_index(["generator", "level", "family"])
    assert summary.loc[("sycophancy", "varied", "baseline"), "mean_fragility"] == 3.0
    assert (
        summary.loc[("sycophancy", "varied", "baseline"), "n_spearman"] == 3
    )  # of 4 (model, organism, seed)


def test_the_summary_means_and_the_rank_correlation_by_hand_and_scipy():
    runs, shift = _runs_and_shift()
    summary = stability_summary(stability_table(runs, shift, SPECS), n_boot=200)
    syc = summary[summary["generator"] == "sycophancy"]
    base = syc[(syc["level"] == "varied") & (syc["family"] == "baseline")].iloc[0]
    assert base["mean_delta_pp"] == pytest.approx((6 + 8) / 2) and base["n_valid"] == 2
    assert base["mean_fragility"] == pytest.approx((3.0 + 5.0) / 2)
    control = syc[(syc["level"] == "fixed") & (syc["family"] == "oracle_aligned")].iloc[0]
    assert control["mean_delta_pp"] == -50 and "control" not in set(syc["family"])  # never averaged together
    reg = syc[(syc["level"] == "fixed") & (syc["family"] == "regularization")].iloc[0]
    assert (
        reg["n_runs"] == 2 and reg["n_valid"] == 0 and math.isnan(reg["mean_delta_pp"])
    )  # invalid: not counted
    # one point per (organism, seed): the mean delta of its valid non-control runs, against its fragility
    units_fragility = [1.0, 2.0, 3.0, 5.0]
    units_delta = [(-4 + 2) / 2, (-2 + 0) / 2, (6 + 10) / 2, (8 + 4) / 2]
    rho, p = stats.spearmanr(units_fragility, units_delta)
    # by hand: Pearson of ranks (1, 2, 3, 4) and (1.5, 1.5, 4, 3): 3.5 / sqrt(5 * 4.5)
    assert rho == pytest.approx(3.5 / math.sqrt(5 * 4.5))
    assert base["spearman_rho"] == pytest.approx(rho) and base["spearman_p"] == pytest.approx(p)
    assert base["n_spearman"] == 4
    em_row = summary[summary["generator"] == "emergent_misalignment"].iloc[0]
    assert em_row["n_spearman"] == 2 and math.isnan(em_row["spearman_rho"])  # under 3 points: no correlation
    assert list(syc["level"].drop_duplicates()) == ["fixed", "varied"]  # the levels' own order


def test_the_figure_draws_every_run_against_fragility_and_level():
    runs, shift = _runs_and_shift()
    fig = stability_figure(stability_table(runs, shift, SPECS))
    assert len(fig.axes) == 4  # two generators x (fragility, level)
    (left,) = [ax for ax in fig.axes if ax.get_title() == "sycophancy: Δ against measured fragility"]
    points = np.concatenate([c.get_offsets() for c in left.collections])
    assert len(points) == 4 * 4  # sycophancy's 16 runs, invalid ones included (hollow)
    assert {tuple(p) for p in points} >= {(5.0, 8.0), (1.0, -4.0)}
    (right,) = [ax for ax in fig.axes if ax.get_title().startswith("sycophancy: Δ per level")]
    assert [t.get_text() for t in right.get_xticklabels()] == ["fixed", "varied"]


def test_the_figure_keeps_a_marked_slot_for_a_level_the_gate_excluded():
    runs, shift = _runs_and_shift()
    swept = {"sycophancy": ["fixed", "default", "varied"], "emergent_misalignment": ["fixed", "varied"]}
    fig = stability_figure(stability_table(runs, shift, SPECS), swept)
    (right,) = [ax for ax in fig.axes if ax.get_title().startswith("sycophancy: Δ per level")]
    labels = [t.get_text() for t in right.get_xticklabels()]
    assert labels == ["fixed", "default\n(no runs: excluded by the gate)", "varied"]
    right_points = np.concatenate([c.get_offsets() for c in right.collections])
    assert set(np.round(right_points[:, 0])) <= {0.0, 2.0}  # varied's runs moved to the third slot
