# The grid's cells and the files that gather them: what the tables, eta, shift and harmful rules read, and the
# default target (rule all in the Snakefile). Also the analysis options those rules pass on.


def get_gate_arg():
    gate = config["analysis"].get("induction_gate")
    return option_arg("--gate", settings_json(gate)) if gate else ""


def excluding():
    """analysis.induction_gate.on_fail is exclude: cells outside the band get no Phase 2 or 3."""
    gate = config["analysis"].get("induction_gate") or {}
    return gate.get("on_fail") == "exclude"


def in_band(model, organism, seed):
    """The induction checkpoint's verdict for one cell (only called from input functions, in exclude mode)."""
    job = checkpoints.induction_report.get(model=model, organism=organism, seed=seed)
    with open(job.output[0]) as fh:
        return json.load(fh)["in_band"]


def runs():
    """Every (model, organism, seed, method, k) cell of the grid; controls only where the organism has their
    reference replies, and in exclude mode only the cells that passed the induction gate.
    """
    cells = [
        (model, organism, seed, method, k)
        for model in config["models"]
        for organism in config["organisms"]
        for seed in model_seeds(model)
        for method in config["methods"]
        if runs_on(method, organism)
        for k in method_ks(method)
    ]
    if excluding():
        passed = {key: in_band(*key) for key in {(m, o, s) for m, o, s, _, _ in cells}}
        cells = [cell for cell in cells if passed[cell[:3]]]
    return cells


def cells(pattern, methods=None):
    """`pattern` formatted for every cell of the grid (or of these methods' cells), each path once, sorted."""
    return sorted(
        {
            pattern.format(
                model=model, organism=organism, seed=seed, method=method, k=k
            )
            for model, organism, seed, method, k in runs()
            if methods is None or method in methods
        }
    )


def get_all_evals(wildcards=None):
    """Every evaluation: the base, the organism and each retrained model."""
    stages = [STAGE_EVAL.replace("{stage}", stage) for stage in ("base", "phase1")]
    return sorted({path for pattern in [*stages, EVAL] for path in cells(pattern)})


def get_induction_reports():
    """Every organism cell's induction report: known before any checkpoint, so a parse-time list."""
    return sorted(
        INDUCTION_REPORT.format(model=model, organism=organism, seed=seed)
        for model in config["models"]
        for organism in config["organisms"]
        for seed in model_seeds(model)
    )


def get_candidates(wildcards=None):
    """Every selecting method's candidates on eval prompts, at each of its k (for eta(s))."""
    return cells(CANDIDATES, SELECTING_METHODS)


def get_harmful_rows(wildcards=None):
    """Harmful rows of every organism (Phase 1) and of each method's main run (Phase 3)."""
    organisms = cells(STAGE_EVAL.replace("{stage}", "phase1"))
    main_runs = [
        EVAL.format(model=model, organism=organism, seed=seed, method=method, k=k)
        for model, organism, seed, method, k in runs()
        if k == main_k(method)
    ]
    return harmful_paths(sorted({*organisms, *main_runs}))


# ---------------------------------------------------------------- distribution shift (analysis.shift)


def shift_enabled():
    return bool(config["analysis"].get("shift"))


def shift_settings():
    return config["analysis"].get("shift") or {}


def get_shift_splits():
    return shift_settings().get("splits", ["consistency", "eval"])


def get_fragility_args():
    """--m and --size of the Monte-Carlo estimates, from analysis.shift (nothing when it is off)."""
    shift = shift_settings()
    if not shift:
        return ""
    size = f" --size {shift['size']}" if shift.get("size") else ""
    return f"--m {shift['m']}{size}"


def get_shift_args():
    """get_fragility_args plus the splits whose prompts the realised KL is estimated on."""
    args = get_fragility_args()
    return f"{args} --splits {' '.join(get_shift_splits())}" if args else ""


def get_shift_table():
    return ["results/tables/shift.csv"] if shift_enabled() else []


def get_shift_figures():
    """The delta-against-shift figure, declared only when shift.csv exists to draw it from."""
    if not shift_enabled():
        return []
    return report(
        multiext("results/figures/delta_vs_shift", ".png", ".pdf"),
        caption="../report/delta_vs_shift.rst",
        category="5. Distribution shift",
    )


def get_shift_records(wildcards=None):
    return [
        SHIFT_RECORDS.format(
            model=model, organism=organism, seed=seed, method=method, k=k
        )
        for model, organism, seed, method, k in runs()
        if k in shift_ks(method)
    ]


def get_fragility_records(wildcards=None):
    return cells(FRAGILITY)


def get_cross_model_records(wildcards=None):
    """KL(A || B) for every ordered pair of distinct models, on every organism and seed where both ran Phase 2
    (with analysis.shift set and two or more models)."""
    if not shift_enabled():
        return []
    ran = {(model, organism, seed) for model, organism, seed, _, _ in runs()}
    return sorted(
        CROSS_MODEL.format(model_a=a, model_b=b, organism=organism, seed=seed)
        for a, organism, seed in ran
        for b in config["models"]
        if b != a and (b, organism, seed) in ran
    )


def cross_model_side(side, helper):
    """An input or param function of a cross_model_kl job: `helper` (a per-model helper such as get_model_dir)
    applied to the model of one side, a or b, at the job's seed."""
    return lambda wildcards: helper(
        SimpleNamespace(model=wildcards[f"model_{side}"], seed=wildcards.seed)
    )


def get_cross_model_adapter(side):
    return lambda wildcards: ORGANISM_ADAPTER.format(
        model=wildcards[f"model_{side}"],
        organism=wildcards.organism,
        seed=wildcards.seed,
    )


# ---------------------------------------------------------------- tables


def get_instruct_arg():
    """MODEL=true|false for every model: the tables split mean delta into base and instruct models."""
    return " ".join(
        f"{m}={str(spec['instruct']).lower()}" for m, spec in config["models"].items()
    )


def get_main_k_arg():
    """--main-k METHOD=K: each selecting method's own k is its main run; other k only feed k-scaling."""
    pairs = [f"{m}={main_k(m)}" for m in SELECTING_METHODS]
    return f"--main-k {' '.join(pairs)}" if pairs else ""


def get_run_validity():
    """analysis.validity's run keys as JSON (runs.csv reads them; max_nonanswer_rise only the harm tables)."""
    validity = config["analysis"]["validity"]
    return settings_json(
        {key: validity[key] for key in ("max_capability_drop", "max_degenerate_rate")}
    )


def get_final_outputs():
    outputs = [
        "results/tables/main.csv",
        "results/tables/runs.csv",
        "results/tables/methods.csv",
        "results/tables/kscaling.csv",
        "results/figures/delta_by_method.png",
        "results/figures/kscaling.png",
        "results/tables/eta.csv",
        "results/figures/eta_rank.png",
        *get_induction_reports(),
    ]
    if shift_enabled():
        outputs.append("results/tables/shift.csv")
    if LABEL_METHODS:
        outputs.append("results/tables/diagnose_summary.csv")
    if harmful_enabled():
        outputs.append("results/tables/harmful.csv")
    if (
        shift_enabled() and len(config["models"]) >= 2
    ):  # the pairs themselves wait for the checkpoints
        outputs.append("results/tables/cross_model_kl.csv")
    if stability_swept():
        outputs.append("results/tables/stability_summary.csv")
    return outputs


def stability_swept():
    """A stability sweep: some toy generator appears at two or more stability levels, and fragility (the
    shift block) is measured, so Δ can be set against both (rule stability)."""
    levels = {}
    for organism in toy_organisms():
        generator, level = toy_source(organism, config["organisms"][organism]["source"])
        levels.setdefault(generator, set()).add(level)
    return shift_enabled() and any(len(found) >= 2 for found in levels.values())


# ---------------------------------------------------------------- diagnose


def diagnose_inputs(pattern, methods):
    """An input function: `pattern` for every method of `methods` that runs on the organism, at each k."""

    def inner(wildcards):
        return [
            pattern.format(**wildcards, method=method, k=k)
            for method in methods
            if runs_on(method, wildcards.organism)
            for k in method_ks(method)
        ]

    return inner


def get_diagnose_fragility(wildcards):
    return [FRAGILITY.format(**wildcards)] if shift_enabled() else []


def get_diagnose_evidence(wildcards=None):
    return cells(f"{DIAGNOSE_DIR}/evidence.parquet", CONSISTENCY_LABEL_METHODS)
