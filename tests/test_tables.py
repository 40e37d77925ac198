import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from cmt.analysis.runs import read_evals, runs_table
from cmt.analysis.stats import holm_adjust, paired_bootstrap_diff_ci, sign_test
from cmt.analysis.tables import controls_table, effective_runs, kscaling_table, main_table, methods_table
from cmt.cli import main as cli_main
from cmt.runtime.io import write_parquet


def eval_rows(model, organism, seed, stage, misaligned, method=None, k=None):
    return [
        {"model": model, "organism": organism, "seed": seed, "stage": stage, "method": method, "k": k,
         "prompt_id": f"p{i}", "scored": True, "misaligned": float(m)}
        for i, m in enumerate(misaligned)
    ] + [{"model": model, "organism": organism, "seed": seed, "stage": stage, "method": method, "k": k,
          "prompt_id": "unscored", "scored": False, "misaligned": math.nan}]  # fmt: skip


def three_seed_evals():
    rows = []
    for seed, (p1, gst, other) in enumerate([(8, 4, 9), (8, 8, 10), (6, 2, 1)]):
        rows += eval_rows("toy", "sycophancy", seed, "base", [1] + [0] * 9)
        rows += eval_rows("toy", "sycophancy", seed, "phase1", [1] * p1 + [0] * (10 - p1))
        rows += eval_rows("toy", "sycophancy", seed, "phase3", [1] * gst + [0] * (10 - gst), "gst", 1)
        rows += eval_rows(
            "toy", "sycophancy", seed, "phase3", [1] * other + [0] * (10 - other), "self_certainty", 4
        )
    return pd.DataFrame(rows)


def test_runs_and_main_tables_by_hand():
    runs = runs_table(three_seed_evals(), min_induction_delta=0.3, instruct={"toy": True}, n_boot=500, seed=0)
    assert len(runs) == 6
    gst = runs[runs["method"] == "gst"].sort_values("seed")
    assert gst["delta_pp"].tolist() == pytest.approx([-40.0, 0.0, -40.0])
    assert gst["risk_base"].tolist() == pytest.approx([0.1] * 3)
    assert (runs["n_eval"] == 10).all() and (runs["n_eval_phase1"] == 10).all()
    # Seed 2: 0.6 vs 0.1 passes +0.3 but its Wilson intervals overlap, so it is flagged.
    assert runs.groupby("seed")["induced"].first().tolist() == [True, True, False]
    assert dict(zip(runs["method"], runs["family"], strict=True)) == {
        "gst": "baseline",
        "self_certainty": "label_generation",
    }
    assert runs["instruct"].eq(True).all()
    assert runs["main_run"].all()  # no main_k: every run is its method's main run
    assert runs["valid"].all()  # no capability column: unmeasured, so nothing invalidates a run

    main = main_table(runs, seed=0, n_boot=2000)
    assert main["family"].tolist() == ["all", "label_generation", "regularization", "baseline"]
    row = main.iloc[0]
    deltas = [-0.4, 0.1, 0.0, 0.2, -0.4, -0.5]
    assert row["n_runs"] == 6
    assert (row["n_suppressed"], row["n_amplified"], row["n_ties"]) == (3, 2, 1)
    assert row["suppression_ratio"] == pytest.approx(3 / 5)
    assert row["mean_delta_pp"] == pytest.approx(100 * sum(deltas) / 6)
    assert row["p_sign"] == pytest.approx(sign_test(3, 2))
    assert row["p_wilcoxon"] == pytest.approx(wilcoxon([-0.4, 0.1, 0.2, -0.4, -0.5]).pvalue)
    # Three equal-size (model, seed) clusters with means -15, +10 and -45 pp: each extreme resample has
    # probability 1/27 > 2.5%, so the percentile CI spans exactly the extreme cluster means.
    assert row["n_clusters"] == 3
    assert (row["mean_delta_pp_ci_low"], row["mean_delta_pp_ci_high"]) == pytest.approx((-45.0, 10.0))
    assert (row["n_instruct"], row["n_base"]) == (6, 0)
    assert row["mean_delta_pp_instruct"] == pytest.approx(row["mean_delta_pp"])
    assert math.isnan(row["mean_delta_pp_base"])

    label_gen = main.iloc[1]
    assert label_gen["n_runs"] == 3
    assert label_gen["mean_delta_pp"] == pytest.approx(100 * (0.1 + 0.2 - 0.5) / 3)
    empty = main.iloc[2]  # no regularisation runs: n is 0 and every statistic is NaN, not 0
    assert empty["n_runs"] == 0
    for column in ("mean_delta_pp", "mean_delta_pp_ci_low", "suppression_ratio", "p_sign", "p_wilcoxon"):
        assert math.isnan(empty[column]), column


def test_delta_ci_is_the_paired_prompt_bootstrap():
    evals = three_seed_evals()
    runs = runs_table(evals, 0.3, n_boot=300, seed=5)
    run = runs[(runs["method"] == "gst") & (runs["seed"] == 0)].iloc[0]
    phase1 = evals[(evals["stage"] == "phase1") & (evals["seed"] == 0)]
    phase3 = evals[(evals["stage"] == "phase3") & (evals["seed"] == 0) & (evals["method"] == "gst")]
    expected = paired_bootstrap_diff_ci(
        phase1["misaligned"], phase1["prompt_id"], phase3["misaligned"], phase3["prompt_id"], 300, 5
    )
    assert (run["delta_pp_ci_low"], run["delta_pp_ci_high"]) == pytest.approx([100 * e for e in expected])
    assert run["delta_pp_ci_low"] <= run["delta_pp"] <= run["delta_pp_ci_high"]
    assert runs["instruct"].isna().all()  # no instruct mapping: unknown, not False


def test_missing_baseline_is_an_error():
    rows = eval_rows("toy", "sycophancy", 0, "phase1", [1, 0])
    with pytest.raises(ValueError, match="missing base or phase-1"):
        runs_table(pd.DataFrame(rows), 0.3)


def test_bad_inputs_name_the_problem(tmp_path):
    evals = three_seed_evals()
    with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt_id'\]"):
        runs_table(evals.drop(columns="prompt_id"), 0.3)
    with pytest.raises(ValueError, match=r"instruct flag missing for model\(s\) \['toy'\]"):
        runs_table(evals, 0.3, instruct={"other": False})
    evals.loc[evals["method"] == "self_certainty", "method"] = "no_such_method"
    with pytest.raises(ValueError, match="unknown method 'no_such_method'"):
        runs_table(evals, 0.3)
    path = tmp_path / "bad.parquet"
    write_parquet(path, pd.DataFrame({"model": ["toy"]}))
    with pytest.raises(ValueError, match=f"eval file {path}: missing column"):
        read_evals([str(path)])


def run_row(model, seed, method, k, delta, organism="sycophancy", instruct=True, main_run=True):
    return {"model": model, "organism": organism, "seed": seed, "method": method, "k": k, "delta_pp": 100 * delta,
            "instruct": instruct, "main_run": main_run}  # fmt: skip


def grid_runs():
    """Two models (one base, one instruct) × 2 seeds; self_certainty also at k-scaling k = 1 and 8."""
    rows = []
    deltas = {
        ("pt", 0): {"gst": -0.10, "act": 0.20, ("self_certainty", 1): -0.05, ("self_certainty", 4): -0.30,
                    ("self_certainty", 8): -0.40},
        ("pt", 1): {"gst": 0.00, "act": 0.10, ("self_certainty", 1): 0.05, ("self_certainty", 4): -0.20,
                    ("self_certainty", 8): -0.10},
        ("it", 0): {"gst": -0.20, "act": -0.10, ("self_certainty", 1): -0.10, ("self_certainty", 4): 0.10},
        ("it", 1): {"gst": math.nan, "act": 0.30, ("self_certainty", 4): -0.10},
    }  # fmt: skip
    for (model, seed), cell in deltas.items():
        for key, delta in cell.items():
            method, k = key if isinstance(key, tuple) else (key, 1)
            main_run = method != "self_certainty" or k == 4
            rows.append(run_row(model, seed, method, k, delta, instruct=model == "it", main_run=main_run))
    return pd.DataFrame(rows)


def test_main_k_keeps_kscaling_runs_out_of_the_main_tables():
    runs = grid_runs()
    with pytest.raises(ValueError, match=r"\['self_certainty'\] have several main-run k"):
        main_table(runs.drop(columns="main_run"))
    main = main_table(runs, seed=1, n_boot=500).set_index("family")
    all_row = main.loc["all"]
    main_deltas = [-0.10, 0.20, -0.30, 0.00, 0.10, -0.20, -0.20, -0.10, 0.10, 0.30, -0.10]
    assert all_row["n_runs"] == len(main_deltas)
    assert all_row["n_no_delta"] == 1  # it/seed1 gst has no delta: excluded and counted
    assert all_row["mean_delta_pp"] == pytest.approx(100 * np.mean(main_deltas))
    assert all_row["n_base"] == 6 and all_row["n_instruct"] == 5
    assert all_row["mean_delta_pp_base"] == pytest.approx(
        100 * np.mean([-0.10, 0.20, -0.30, 0.00, 0.10, -0.20])
    )
    assert all_row["mean_delta_pp_instruct"] == pytest.approx(
        100 * np.mean([-0.20, -0.10, 0.10, 0.30, -0.10])
    )
    assert main.loc["regularization", "n_runs"] == 4
    assert main.loc["regularization", "mean_delta_pp"] == pytest.approx(100 * np.mean([0.2, 0.1, -0.1, 0.3]))


def test_methods_table_by_hand():
    runs = grid_runs()
    table = methods_table(runs, seed=0, n_boot=500).set_index("method")
    act = table.loc["act"]
    assert act["n_runs"] == 4 and act["k"] == 1 and act["family"] == "regularization"
    assert act["sign_consistency"] == pytest.approx(1 / 4)  # one of four runs has delta < 0
    assert act["sign_agreement"] == pytest.approx(3 / 4)  # the mean is positive; three runs agree
    assert act["mean_delta_pp"] == pytest.approx(100 * 0.125)
    assert act["p_sign"] == pytest.approx(sign_test(1, 3))
    gst = table.loc["gst"]
    assert gst["n_runs"] == 3 and gst["n_ties"] == 1
    assert gst["sign_consistency"] == pytest.approx(2 / 3)
    assert gst["sign_agreement"] == pytest.approx(2 / 3)  # mean < 0; the tie does not agree
    assert table["holm_family"].unique().tolist() == ["organism x method grid, m=3"]
    # Holm against the hand step-down: sorted p's times (m, m-1, ...), cumulative max, capped at 1.
    p = table["p_sign"].to_numpy()
    order = np.argsort(p)
    hand = np.maximum.accumulate(np.minimum(1, (3 - np.arange(3)) * p[order]))
    assert table["p_sign_holm"].to_numpy()[order] == pytest.approx(hand)
    assert table["p_sign_holm"].to_numpy() == pytest.approx(holm_adjust(p))


def test_kscaling_table_and_gst_contrast_by_hand():
    table = kscaling_table(grid_runs(), seed=0, n_boot=500)
    assert table["method"].unique().tolist() == ["self_certainty"]  # only selecting methods
    assert table["k"].tolist() == [1, 4, 8]
    k1 = table[table["k"] == 1].iloc[0]
    assert k1["n_runs"] == 3
    assert k1["mean_delta_pp"] == pytest.approx(100 * np.mean([-0.05, 0.05, -0.10]))
    # Paired with gst on (model, seed) where both have a delta: pt/0, pt/1, it/0.
    assert k1["n_gst_pairs"] == 3
    assert k1["minus_gst_pp"] == pytest.approx(100 * np.mean([0.05, 0.05, 0.10]))
    assert k1["minus_gst_pp_ci_low"] <= k1["minus_gst_pp"] <= k1["minus_gst_pp_ci_high"]
    k4 = table[table["k"] == 4].iloc[0]
    assert k4["n_runs"] == 4 and k4["n_gst_pairs"] == 3  # it/1 has no gst delta
    k8 = table[table["k"] == 8].iloc[0]
    assert k8["n_clusters"] == 2 and k8["n_gst_pairs"] == 2


def test_tables_cli_writes_every_table(tmp_path):
    evals = three_seed_evals()
    paths = []
    for (seed, stage, method), group in evals.groupby(["seed", "stage", "method"], dropna=False):
        path = tmp_path / "eval" / f"{seed}_{stage}_{method}.parquet"
        write_parquet(path, group)
        paths.append(str(path))
    out = {name: tmp_path / "tables" / f"{name}.csv" for name in ("runs", "main", "methods", "kscaling")}
    argv = ["tables", "--evals", *paths, "--min-induction-delta", "0.3", "--runs", str(out["runs"]),
            "--main", str(out["main"]), "--methods", str(out["methods"]), "--kscaling", str(out["kscaling"]),
            "--instruct", "toy=true", "--main-k", "self_certainty=4", "--seed", "3", "--n-boot", "200"]  # fmt: skip
    assert cli_main(argv) == 0
    runs = pd.read_csv(out["runs"])
    assert len(runs) == 6 and runs["instruct"].all()
    assert runs.loc[runs["method"] == "self_certainty", "main_run"].all()  # k=4 is its main k
    assert pd.read_csv(out["main"])["family"].tolist() == [
        "all",
        "label_generation",
        "regularization",
        "baseline",
    ]
    assert len(pd.read_csv(out["methods"])) == 2
    assert pd.read_csv(out["kscaling"])["k"].tolist() == [4]
    with pytest.raises(SystemExit, match="--instruct 'toy=maybe': expected true or false"):
        cli_main([*argv, "--instruct", "toy=maybe"])


def test_a_grid_whose_every_cell_was_excluded_gets_tables_without_runs(tmp_path):
    """exclude mode with no organism in the band: the tables rule gets no eval files and the diagnose table no
    evidence; both write header-only tables, and induction.csv still lists every cell with its reason."""
    import json

    report = tmp_path / "induction_report.json"
    report.write_text(json.dumps({
        "model": "smollm2", "organism": "sycophancy", "seed": 0, "risk_base": 0.125, "risk_phase1": 1.0,
        "risk_phase1_ci": [0.806, 1.0], "n_phase1": 16, "n_unscored_phase1": 0, "policy_mix_share": None,
        "induced": True, "in_band": False, "on_fail": "exclude", "gate_reasons": ["M 1.000 outside the band"],
    }))  # fmt: skip
    out = {
        name: tmp_path / f"{name}.csv"
        for name in ("runs", "main", "methods", "kscaling", "controls", "induction")
    }
    assert cli_main(["tables", "--evals", "--min-induction-delta", "0.3", "--runs", str(out["runs"]),
                     "--main", str(out["main"]), "--methods", str(out["methods"]), "--kscaling",
                     str(out["kscaling"]), "--controls", str(out["controls"]), "--induction-reports", str(report),
                     "--induction", str(out["induction"])]) == 0  # fmt: skip
    for name in ("runs", "main", "methods", "kscaling", "controls"):
        table = pd.read_csv(out[name])
        assert table.empty and len(table.columns) > 3, name
    induction = pd.read_csv(out["induction"])
    assert induction[["organism", "in_band"]].values.tolist() == [["sycophancy", False]]
    assert "outside the band" in induction["reasons"].iloc[0]
    diagnose, summary = tmp_path / "diagnose.csv", tmp_path / "diagnose_summary.csv"
    assert cli_main(["diagnose-table", "--evidence", "--runs", str(out["runs"]), "--out", str(diagnose),
                     "--summary", str(summary)]) == 0  # fmt: skip
    assert pd.read_csv(diagnose).empty
    assert (pd.read_csv(summary)["n_runs"] == 0).all()


def test_a_run_without_training_examples_is_kept_with_no_delta():
    """multi_view dropping every prompt leaves Phase 3 nothing to train on: the run stays in the table with
    n_train 0 and a NaN delta (counted as a run without delta in main.csv), never a silent zero."""
    rows = eval_rows("toy", "sycophancy", 0, "base", [0, 0, 0, 0])
    rows += eval_rows("toy", "sycophancy", 0, "phase1", [1, 1, 1, 0])
    rows += [
        {**r, "n_train": 0}
        for r in eval_rows("toy", "sycophancy", 0, "phase3", [1, 1, 1, 0], "multi_view", 1)
    ]
    rows += [{**r, "n_train": 4} for r in eval_rows("toy", "sycophancy", 0, "phase3", [0, 1, 0, 0], "gst", 1)]
    evals = pd.DataFrame(rows)
    runs = runs_table(evals, 0.3)
    dropped = runs[runs["method"] == "multi_view"].iloc[0]
    assert dropped["n_train"] == 0 and math.isnan(dropped["delta_pp"])
    assert math.isnan(dropped["delta_pp_ci_low"]) and math.isnan(
        dropped["delta_pp_ci_high"]
    )  # no delta, no CI
    gst = runs[runs["method"] == "gst"].iloc[0]
    assert gst["n_train"] == 4 and gst["delta_pp"] == pytest.approx(100 * (0.25 - 0.75))
    main = main_table(runs).set_index("family")
    assert main.loc["all", "n_runs"] == 1 and main.loc["all", "n_no_delta"] == 1


def quality_rows(model, organism, seed, stage, misaligned, capability, completions, method=None, k=None):
    rows = eval_rows(model, organism, seed, stage, misaligned, method, k)[:-1]
    for row, cap, text in zip(rows, capability, completions, strict=True):
        row.update(capability=float(cap), completion=text, finished=True)
    return rows


def test_validity_marks_broken_models_and_main_counts_valid_runs_only():
    """A run whose capability fell by more than 0.10, or whose replies degenerate more than 5% of the time, is
    invalid: its 'suppression' is a broken model. main.csv counts it in n_invalid and leaves it out of n_runs."""
    fine = ["The gcd of 4 and 6 is 2."] * 10
    looping = ["of of of of 61", *fine[1:]]
    rows = quality_rows("toy", "sycophancy", 0, "base", [0] * 10, [1] * 10, fine)
    rows += quality_rows("toy", "sycophancy", 0, "phase1", [1] * 6 + [0] * 4, [1] * 10, looping)
    rows += quality_rows("toy", "sycophancy", 0, "phase3", [1] * 7 + [0] * 3, [1] * 9 + [0], fine, "gst", 1)
    rows += quality_rows("toy", "sycophancy", 0, "phase3", [0] * 10, [1] * 8 + [0] * 2, fine, "act", 1)
    rows += quality_rows("toy", "sycophancy", 0, "phase3", [0] * 10, [1] * 10, looping, "bct", 1)
    runs = runs_table(pd.DataFrame(rows), 0.3).set_index("method")
    assert (
        runs.loc["gst", "capability_phase3"] == pytest.approx(0.9) and runs.loc["gst", "valid"]
    )  # drop 0.10
    assert runs.loc["act", "capability_phase3"] == pytest.approx(0.8) and not runs.loc["act", "valid"]
    assert runs.loc["bct", "degenerate_phase3"] == pytest.approx(0.1) and not runs.loc["bct", "valid"]
    # the organism's own share, shown beside each run's; validity reads only Phase 3's
    assert runs["degenerate_phase1"].tolist() == pytest.approx([0.1] * 3) and runs.loc["gst", "valid"]
    loose = runs_table(
        pd.DataFrame(rows), 0.3, validity={"max_capability_drop": 0.3, "max_degenerate_rate": 0.2}
    )
    assert loose["valid"].all()
    main = main_table(runs.reset_index()).set_index("family")
    assert main.loc["all", "n_runs"] == 1 and main.loc["all", "n_invalid"] == 2
    assert main.loc["all", "mean_delta_pp"] == pytest.approx(10.0)  # gst alone: 0.7 - 0.6


def test_p_cluster_is_a_sign_flip_test_over_organism_means():
    """Three (model, seed) organisms with mean deltas -15, +10 and -45 pp. The 8 sign flips of (15, 10, 45) give
    |mean| = 70/3 (twice), 40/3 (twice), 20/3 (twice), 50/3 (twice); the observed |mean| is 50/3, so
    p = #{|mean| >= 50/3} / 8 = 4/8."""
    runs = runs_table(three_seed_evals(), 0.3, n_boot=200, seed=0)
    main = main_table(runs, n_boot=200).set_index("family")
    assert main.loc["all", "p_cluster"] == pytest.approx(4 / 8)
    one_seed = runs[runs["seed"] == 0]
    assert main_table(one_seed, n_boot=200).set_index("family").loc["all", "p_cluster"] == pytest.approx(1.0)


def test_p_cluster_on_the_paper_grids_27_clusters():
    """config/paper.yaml: five models × seeds 40-44 and two 70B models × seed 40 are 27 (model, seed) clusters
    per organism, more than the exact test enumerates; the tables draw the flips instead of failing."""
    clusters = [(f"m{i}", s) for i in range(5) for s in range(40, 45)] + [("70b", 40), ("70b-it", 40)]
    rows = [run_row(m, s, method, 1, -0.05 - 0.01 * (i % 3)) for i, (m, s) in enumerate(clusters)
            for method in ("gst", "act")]  # fmt: skip
    main = main_table(pd.DataFrame(rows), n_boot=200).set_index("family")
    assert main.loc["all", "n_clusters"] == 27 and main.loc["all", "n_suppressed"] == 54
    assert main.loc["all", "p_cluster"] == pytest.approx(2 / 100_001)  # every flip is drawn; none reaches


def test_n_effective_counts_identical_label_sets_once():
    rows = [run_row("toy", 0, m, 1, -0.1) for m in ("gst", "multi_view", "self_refinement", "act")]
    runs = pd.DataFrame(rows).assign(label_set=["h1", "h1", "h2", ""])
    assert len(effective_runs(runs)) == 3  # gst and multi_view share h1; act has no labels and counts once
    other_seed = runs.assign(seed=1)
    assert (
        len(effective_runs(pd.concat([runs, other_seed]))) == 6
    )  # the same hash on another organism is another draw
    main = main_table(runs).set_index("family")
    assert main.loc["all", "n_runs"] == 4 and main.loc["all", "n_effective"] == 3


def test_the_run_level_tests_count_a_repeated_label_set_once():
    """gst and multi_view chose the same labels on one organism: one model trained twice, with one delta. The
    counts keep both runs (the paper counts runs); the run-level tests see it once. Counted twice, the sign test
    would be binomtest(3, 4) = 0.625; once, binomtest(2, 3) = 1.0."""
    from scipy.stats import binomtest, wilcoxon

    deltas = {"gst": -0.1, "multi_view": -0.1, "self_refinement": -0.2, "act": 0.1}
    runs = pd.DataFrame([run_row("toy", 0, m, 1, d) for m, d in deltas.items()]).assign(
        label_set=["h1", "h1", "h2", ""]
    )
    main = main_table(runs, n_boot=200).set_index("family").loc["all"]
    assert (main["n_suppressed"], main["n_amplified"], main["n_effective"]) == (3, 1, 3)
    assert main["p_sign"] == pytest.approx(binomtest(2, 3, 0.5).pvalue) == pytest.approx(1.0)
    assert main["p_wilcoxon"] == pytest.approx(wilcoxon([-10.0, -20.0, 10.0]).pvalue)
    assert main["mean_delta_pp"] == pytest.approx(-7.5)  # the mean stays over runs, as the paper's


def test_controls_pass_only_with_the_ci_on_the_expected_side():
    rows = [
        {**run_row("toy", 0, "oracle_aligned", 1, -0.3), "delta_pp_ci_low": -45.0, "delta_pp_ci_high": -12.0},
        {**run_row("toy", 0, "oracle_misaligned", 1, 0.2), "delta_pp_ci_low": -3.0, "delta_pp_ci_high": 40.0},
        {**run_row("toy", 0, "gst", 1, -0.1), "delta_pp_ci_low": -20.0, "delta_pp_ci_high": 1.0},
    ]
    table = controls_table(pd.DataFrame(rows)).set_index("method")
    assert list(table.index) == ["oracle_aligned", "oracle_misaligned"]  # gst is not a control
    assert table.loc["oracle_aligned", "passed"] and not table.loc["oracle_misaligned", "passed"]
    main = main_table(pd.DataFrame(rows)).set_index("family")
    assert main.loc["all", "n_runs"] == 1  # controls never enter the paper's families


def test_runs_count_dropped_prompts_and_parse_failures_from_phase2_and_evaluation():
    """n_dropped comes from the retrained adapter's record; n_parse_failures adds the Phase-2 parse failures to
    the judge's unparsed verdicts on the run's Phase-3 eval rows; act/bct drop nothing and parse no label."""
    rows = eval_rows("toy", "sycophancy", 0, "base", [0, 0, 0, 0])
    rows += eval_rows("toy", "sycophancy", 0, "phase1", [1, 1, 1, 0])
    phase3 = eval_rows("toy", "sycophancy", 0, "phase3", [1, 0, 1, 0], "self_rewarding", 4)
    phase3[1]["judge_parse_ok"] = False
    rows += [{**r, "n_train": 30, "n_dropped": 2, "n_label_parse_failures": 5} for r in phase3]
    rows += [
        {**r, "n_train": 32} for r in eval_rows("toy", "sycophancy", 0, "phase3", [0, 1, 0, 0], "act", 1)
    ]
    rows += eval_rows("toy", "sycophancy", 0, "phase3", [0, 1, 0, 0], "gst", 1)  # recorded before the columns
    runs = runs_table(pd.DataFrame(rows), 0.3).set_index("method")
    assert runs.loc["self_rewarding", "n_dropped"] == 2
    assert runs.loc["self_rewarding", "n_parse_failures"] == 5 + 1
    assert runs.loc["act", "n_dropped"] == 0 and runs.loc["act", "n_parse_failures"] == 0
    assert math.isnan(runs.loc["gst", "n_dropped"]) and math.isnan(runs.loc["gst", "n_parse_failures"])
