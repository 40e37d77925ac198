# The consistency methods as the rules see them, all read from the method registry (cmt.methods.registry):
# which rules a method gets, its k values, its own code and settings, and its reward model.
from cmt.methods.registry import get_method, get_spec, method_files, prompt_splits

# Phase-2 labellers get label_<m> and retrain_<m>; Phase-3 losses (act, bct) get retrain_<m> on the act_bct
# pairs; selecting methods also get candidates_eval_<m> (every candidate on eval prompts, for eta(s)).
LABEL_METHODS = [m for m in config["methods"] if not get_spec(m).phase3_loss]
REGULARIZATION_METHODS = [m for m in config["methods"] if get_spec(m).phase3_loss]
SELECTING_METHODS = [m for m in config["methods"] if get_spec(m).selects]


def uses_reward_model(method):
    return get_spec(method).uses_reward_model


def method_code(method):
    """The code a method's own jobs depend on beyond the shared pipeline: its module and every module of
    cmt.methods it imports (found in their import statements, cmt.methods.registry.method_files), plus the
    reward-model scorer for the reranking methods and the Phase-3 trainer for act/bct. Editing one reruns
    exactly the methods that use it."""
    code = list(method_files(method, SRC / "methods"))
    if uses_reward_model(method):
        code.append(SRC / "models" / "reward_model.py")
    if get_spec(method).phase3_loss:
        code.append(SRC / "phases" / "consistency.py")
    return code


def method_prompt_splits(method):
    """The splits whose prompts the method labels: the consistency prompts, or a control's own (its settings
    may add the consistency prompts to them: oracle_harmful's with_own_replies)."""
    return prompt_splits(method, config["methods"][method])


# Label methods whose labels answer the consistency prompts only, the ones diagnose judges (oracle_harmful
# labels its own prompts).
CONSISTENCY_LABEL_METHODS = [
    m for m in LABEL_METHODS if method_prompt_splits(m) == ("consistency",)
]


def get_reference_file_of(method):
    """An input function: a control's reference replies (its REFERENCE_SPLIT file) where they are not already
    among its prompts' files (method_prompt_splits); nothing for a method."""
    split = getattr(get_method(method), "REFERENCE_SPLIT", None)
    if split in method_prompt_splits(method):
        split = None

    def inner(wildcards):
        return [f"{get_data_dir(wildcards)}/{split}.jsonl"] if split else []

    return inner


def runs_on(method, organism):
    """Controls run only on organisms whose folder has their reference replies."""
    if get_spec(method).family != "control":
        return True
    return has_reference(organism, get_method(method).REFERENCE_SPLIT)


def method_settings(method):
    """The method's config subtree as the label job's param, without k (k shapes the outputs, one file per k)
    and without `train` (a control's Phase-3 dose, which its labels do not depend on).
    """
    settings = config["methods"][method]
    return settings_json(
        {key: value for key, value in settings.items() if key not in ("k", "train")}
    )


def method_ks(method):
    """k values of a method: its own k plus the k-scaling block's; 1 without a selection count."""
    if not get_spec(method).selects:
        return [1]
    ks = {main_k(method)}
    if method in config["kscaling"]["methods"]:
        ks |= set(config["kscaling"]["ks"])
    return sorted(ks)


def method_ks_arg(method):
    return " ".join(str(k) for k in method_ks(method))


def cell_paths(pattern, method):
    """A method's per-k paths from a pattern over {model}, {organism}, {seed}, {method} and {k}; the first three
    stay wildcards. One job writes all of them, so a method's cells share one process (one import of torch).
    """
    return expand(pattern, method=method, k=method_ks(method), allow_missing=True)


def main_k(method):
    """The k of the method's main run: its own k for a selecting method, else 1."""
    return config["methods"][method]["k"] if get_spec(method).selects else 1


def shift_ks(method):
    """The k values whose runs get the realised KL: the main k only, unless analysis.shift.kscaling is set (the
    other k share the main run's draws and never enter the shift correlations)."""
    shift = config["analysis"].get("shift") or {}
    if shift.get("kscaling"):
        return method_ks(method)
    return [main_k(method)]


def shift_cell_paths(pattern, method):
    """cell_paths over the k values of shift_ks."""
    return expand(pattern, method=method, k=shift_ks(method), allow_missing=True)


def main_cell_paths(pattern, method):
    """cell_paths at the main k only: the harmful-request slot, whose summary counts one run per method and
    seed (the other k share the main run's draws)."""
    return expand(pattern, method=method, k=main_k(method), allow_missing=True)


def get_retrain_settings_of(method_name):
    """A param function: the model's Phase-3 settings with the method's own `train` overrides (the controls'
    dose); a method without them gets the same JSON as ever, so no rerun."""

    def inner(wildcards):
        overrides = config["methods"][method_name].get("train")
        return get_phase_settings(wildcards, "phase3", overrides)

    return inner


def get_consistency_settings_of(method_name):
    """A param function: Phase-3 training settings plus the regularisation method's own subtree (and the
    model's generation budget, which only bct's sft variant uses)."""

    def inner(wildcards):
        spec = config["models"][wildcards.model]
        method = config["methods"][method_name]
        settings = {**training_base(spec), "train": spec["phase3"], "method": method}
        if method.get("variant") == "sft":
            settings["generation"] = {
                "batch_size": spec["generation"]["batch_size"],
                "max_new_tokens": method.get("max_new_tokens")
                or spec["generation"]["max_new_tokens"],
            }
        return settings_json(settings)

    return inner


# ---------------------------------------------------------------- the reward model (reranking methods)


def get_reward_model_dir(wildcards):
    source = config["reward_model"]["source"]
    if is_toy(source):
        return f"results/models/{base_name(wildcards.model, wildcards.seed)}-reward"
    if "hub" in source:
        return f"resources/models/{source['hub'].split('/')[-1]}"
    return source["path"]


def get_reward_model_files_of(method):
    """An input function: the reward model's config, for the methods that rerank with one."""

    def inner(wildcards):
        if not uses_reward_model(method):
            return []
        return [f"{get_reward_model_dir(wildcards)}/config.json"]

    return inner


def get_reward_model_arg(wildcards, input):
    """--reward-model DIR, for the methods that rerank. A param function of `input` is no params trigger
    (Snakemake leaves such params to the input trigger), so it carries the folder, never a setting.
    """
    if not input.reward_model:
        return ""
    return option_arg("--reward-model", Path(input.reward_model[0]).parent)


def get_reward_training_settings():
    """What `cmt train-reward-model` reads of the reward_model block: its pairs and training schedule (the seed
    is a param of its own; dtype and batch_size are the scoring jobs', reward_model_settings_of).
    """
    block = config.get("reward_model", {})
    return settings_json(
        {k: block[k] for k in ("pairs_per_organism", "train") if k in block}
    )


def reward_model_settings_of(method):
    """--reward-model-settings: what scoring reads of the reward_model block (batch size, dtype), for the
    methods that rerank; a param, so a changed dtype reruns their Phase 2."""
    if not uses_reward_model(method):
        return ""
    settings = {k: config["reward_model"][k] for k in ("batch_size", "dtype")}
    return option_arg("--reward-model-settings", settings_json(settings))
