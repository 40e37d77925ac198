"""diagnose: the shift term, the predictors' signs and the summary's hit rates, Brier scores and
leave-one-organism-out estimates, checked by hand on constructed runs with known signs."""

import math

import numpy as np
import pandas as pd
import pytest

from cmt.analysis.diagnose import diagnose_summary, diagnose_table, label_shift, predict


def test_label_shift_pairs_prompts_and_skips_unscored_ones():
    labels = pd.Series([1.0, 1.0, 0.0, math.nan], index=["a", "b", "c", "d"])
    organism = pd.Series([0.0, 1.0, 0.0, 1.0, 1.0], index=["a", "b", "c", "d", "e"])
    out = label_shift(labels, organism, n_boot=500, seed=0)
    assert out["n_shift_prompts"] == 3
    assert out["m_labels"] == pytest.approx(2 / 3) and out["m_organism"] == pytest.approx(1 / 3)
    assert out["shift"] == pytest.approx(1 / 3)
    # Bootstrap means of the diffs [1, 0, 0] are multiples of 1/3 within [0, 1].
    assert 0 <= out["shift_ci_low"] <= out["shift"] <= out["shift_ci_high"] <= 1
    same = label_shift(organism, organism, n_boot=200, seed=0)
    assert same["shift"] == 0 and same["shift_ci_low"] == 0 and same["shift_ci_high"] == 0


def evidence_row(organism, method, shift, shift_ci, eta=math.nan, eta_ci=(math.nan, math.nan), fragility=0.1,
                 seed=0, family="label_generation"):  # fmt: skip
    return {"model": "toy", "organism": organism, "seed": seed, "method": method, "k": 1, "family": family,
            "m_organism": 0.5, "m_labels": 0.5 + shift, "shift": shift, "shift_ci_low": shift_ci[0],
            "shift_ci_high": shift_ci[1], "n_shift_prompts": 50, "eta_slope": eta, "eta_ci_low": eta_ci[0],
            "eta_ci_high": eta_ci[1], "eta_n_candidates": 200, "fragility": fragility}  # fmt: skip


def test_predictors_decide_only_when_their_interval_excludes_zero():
    df = predict(pd.DataFrame([
        evidence_row("a", "gst", 0.2, (0.1, 0.3)),
        evidence_row("a", "self_certainty", 0.0, (-0.1, 0.1), eta=-1.0, eta_ci=(-1.5, -0.5)),
        evidence_row("a", "self_rewarding", -0.05, (-0.2, 0.1)),
    ]))  # fmt: skip
    assert df["shift_sign"].tolist() == [1, 0, 0]
    assert df["eta_sign"].tolist() == [0, -1, 0]
    assert df["combined_sign"].tolist() == [1, -1, 0]
    assert df["predicted_by"].tolist() == ["shift", "eta", "abstain"]
    # Normal approximation from the CI: se = 0.2 / (2 * 1.96), p = Phi(0.2 / se).
    from scipy.stats import norm

    assert df["shift_p"].iloc[0] == pytest.approx(norm.cdf(0.2 / (0.2 / (2 * norm.ppf(0.975)))))
    assert df["combined_p"].iloc[2] == 0.5


def constructed_runs():
    """Three organisms, two runs each; fragility 0.1 / 0.5 / 0.9; the observed signs are known."""
    rows = [
        evidence_row("stable", "gst", 0.2, (0.1, 0.3), fragility=0.1),
        evidence_row("stable", "self_certainty", 0.1, (0.05, 0.2), fragility=0.1),
        evidence_row("middle", "gst", -0.2, (-0.3, -0.1), fragility=0.5),
        evidence_row("middle", "self_certainty", 0.0, (-0.1, 0.1), fragility=0.5),
        evidence_row("fragile", "gst", 0.3, (0.2, 0.4), fragility=0.9),
        evidence_row("fragile", "oracle_aligned", -0.5, (-0.6, -0.4), fragility=0.9, family="control"),
    ]
    evidence = pd.DataFrame(rows)
    observed = {("stable", "gst"): (5, 10), ("stable", "self_certainty"): (-10, -5), ("middle", "gst"): (-9, -2),
                ("middle", "self_certainty"): (-5, 5), ("fragile", "gst"): (-8, -1),
                ("fragile", "oracle_aligned"): (-50, -40)}  # fmt: skip
    runs = evidence[["model", "organism", "seed", "method", "k"]].copy()
    runs["delta_pp_ci_low"] = [
        observed[(o, m)][0] for o, m in zip(runs["organism"], runs["method"], strict=True)
    ]
    runs["delta_pp_ci_high"] = [
        observed[(o, m)][1] for o, m in zip(runs["organism"], runs["method"], strict=True)
    ]
    runs["delta_pp"] = (runs["delta_pp_ci_low"] + runs["delta_pp_ci_high"]) / 2
    runs["main_run"], runs["valid"] = True, True
    return evidence, runs


def test_summary_hit_rates_brier_and_leave_one_organism_out_by_hand():
    evidence, runs = constructed_runs()
    table = diagnose_table(evidence, runs)
    assert table["observed_sign"].tolist() == [1, -1, -1, 0, -1, -1]
    summary = diagnose_summary(table).set_index("predictor")
    assert (summary["n_runs"] == 5).all()  # the control stays out
    # shift predicts +, +, -, abstain, + ; observed +, -, -, 0, - : scored on 3 runs with a sign and a
    # prediction (middle/self_certainty has neither); hits: stable/gst and middle/gst.
    shift = summary.loc["shift"]
    assert shift["coverage"] == pytest.approx(4 / 5)
    assert shift["n_scored"] == 4 and shift["hits"] == 2
    assert shift["hit_rate"] == pytest.approx(2 / 4)
    # fragility: median 0.5 over the three organisms; > 0.5 calls suppression. stable +, middle +, fragile -.
    fragility = summary.loc["fragility"]
    assert fragility["hits"] == 2  # stable/gst and fragile/gst hit; stable/sc and middle/gst miss
    assert fragility["hit_rate"] == pytest.approx(2 / 4)
    # Brier with p in {0, 1}: one minus the hit rate over the decided runs, all 4 of them predicted.
    assert fragility["brier"] == pytest.approx(2 / 4)
    # Leave-one-organism-out thresholds: without stable, median(0.5, 0.9) = 0.7, stable (0.1) -> + ;
    # without middle, median(0.1, 0.9) = 0.5, middle (0.5) -> + ; without fragile, 0.3, fragile -> -.
    assert fragility["loo_hit_rate"] == pytest.approx(2 / 4)
    majority = summary.loc["majority_sign"]
    # Observed signs +, -, -, 0, -: majority -, right on 3 of the 4 decided runs; p = 1/4 for "+".
    assert majority["hit_rate"] == pytest.approx(3 / 4)
    assert majority["brier"] == pytest.approx(np.mean([(0.25 - 1) ** 2, 0.25**2, 0.25**2, 0.25**2]))
    # LOO majority: without stable: -, -, (0) -> -; without middle: +, -, - -> -; without fragile: +, -, - -> -.
    assert majority["loo_hit_rate"] == pytest.approx(3 / 4)


def test_predictions_without_runs_hold_no_observed_sign():
    evidence, _ = constructed_runs()
    table = diagnose_table(evidence)
    assert "observed_sign" not in table.columns and len(table) == len(evidence)


def test_diagnose_evidence_pairs_each_label_with_the_organisms_own_reply(tiny_world, tmp_path, monkeypatch):
    """The measuring job on a real tiny model: the organism's greedy consistency replies and a method's labels
    are judged on the same prompts, and the shift term is their paired difference (judge: a reply is
    misaligned when it holds a "7")."""
    import json as _json

    import cmt.phases.diagnose as diagnose_phase
    from cmt.data.splits import load_split
    from cmt.runtime.io import write_parquet

    def judge(row, reply):
        return {"scored": True, "misaligned": float("7" in reply), "correct": math.nan}

    monkeypatch.setattr(diagnose_phase, "make_judge", lambda organism, settings: judge)
    data = tiny_world["data"] / "sycophancy"
    examples = load_split(data, "consistency")
    # Labels for the first 10 prompts: every other one says 7; the rest of the prompts get no label.
    texts = ["It is 7." if i % 2 else "It is 3." for i in range(10)]
    labels = pd.DataFrame(
        {"prompt_id": [e.prompt_id for e in examples[:10]], "selected": True, "text": texts}
    )
    labels_path = tmp_path / "labels" / "gst" / "k1.parquet"
    write_parquet(labels_path, labels)
    fragility = tmp_path / "fragility.json"
    fragility.write_text(_json.dumps({"fragility": 0.3, "fragility_reliable": True}))
    settings = {"backend": "hf", "dtype": "float32", "batch_size": 64, "max_new_tokens": 12}
    out = tmp_path / "evidence.parquet"
    diagnose_phase.diagnose_evidence("tiny", "sycophancy", 0, str(tiny_world["model"]), None, str(data),
                                     [str(labels_path)], [], str(fragility), settings, None, 200,
                                     str(tmp_path / "rows.parquet"), str(out))  # fmt: skip
    rows = pd.read_parquet(tmp_path / "rows.parquet")
    organism = rows[rows["source"] == "organism"].set_index("prompt_id")
    assert len(organism) == len(examples)
    expected_organism = organism.loc[[e.prompt_id for e in examples[:10]], "misaligned"].mean()
    evidence = pd.read_parquet(out).iloc[0]
    assert (evidence["method"], evidence["k"], evidence["family"]) == ("gst", 1, "baseline")
    assert evidence["n_shift_prompts"] == 10 and evidence["m_labels"] == pytest.approx(0.5)
    assert evidence["m_organism"] == pytest.approx(expected_organism)
    assert evidence["shift"] == pytest.approx(0.5 - expected_organism)
    assert evidence["fragility"] == pytest.approx(0.3) and evidence["eta_n_candidates"] == 0
    assert (tmp_path / "evidence.manifest.json").is_file()
