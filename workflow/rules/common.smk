import json
from pathlib import Path

from snakemake.utils import validate

from cmt.config import check_config
from cmt.methods import get_method

# Readable errors first (every violation, with its key path), then Snakemake's validate fills defaults.
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
check_config(config, SCHEMA)
validate(config, SCHEMA)

SRC = Path(workflow.basedir) / "src" / "cmt"
SEEDS = [str(s) for s in config["seeds"]]


wildcard_constraints:
    model="|".join(config["models"]),
    organism="|".join(config["organisms"]),
    method="|".join(config["methods"]),
    seed="|".join(SEEDS),
    k=r"[1-9][0-9]*",
    split="induction|consistency|act_bct_clean|act_bct_wrapped|eval",
    stage=r"base|phase1|[a-z_]+/k[1-9][0-9]*",


def settings_json(obj):
    """A config subtree as canonical JSON: a deterministic param and a shell-safe CLI argument."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def is_toy(source):
    return source == "toy"


# ---------------------------------------------------------------- models


def toy_models():
    return [m for m, spec in config["models"].items() if is_toy(spec["source"])]


def get_model_dir(wildcards):
    spec = config["models"][wildcards.model]
    if is_toy(spec["source"]):
        return f"results/models/{wildcards.model}"
    return spec["source"]["path"]


def get_model_files(wildcards):
    """The files a job needs from the base model (the toy one is built by pretrain_base)."""
    return [f"{get_model_dir(wildcards)}/config.json"]


def get_model_gpus(wildcards):
    return config["models"][wildcards.model]["gpus"]


def get_generation_settings(wildcards):
    spec = config["models"][wildcards.model]
    return settings_json(
        {
            "backend": config["generation"]["backend"],
            "dtype": spec["dtype"],
            **spec["generation"],
        }
    )


def get_phase_settings(wildcards, phase):
    spec = config["models"][wildcards.model]
    return settings_json(
        {"dtype": spec["dtype"], "lora": spec["lora"], "train": spec[phase]}
    )


def get_phase1_settings(wildcards):
    return get_phase_settings(wildcards, "phase1")


def get_phase3_settings(wildcards):
    return get_phase_settings(wildcards, "phase3")


def get_consistency_settings(wildcards):
    """Phase-3 training settings plus the regularisation method's own subtree (and the model's generation
    budget, which only bct's sft variant uses)."""
    spec = config["models"][wildcards.model]
    method = config["methods"][wildcards.method]
    settings = {"dtype": spec["dtype"], "train": spec["phase3"], "method": method}
    if method.get("variant") == "sft":
        settings["generation"] = {
            "batch_size": spec["generation"]["batch_size"],
            "max_new_tokens": method.get("max_new_tokens")
            or spec["generation"]["max_new_tokens"],
        }
    return settings_json(settings)


# ---------------------------------------------------------------- organisms and data


def toy_organisms():
    return [o for o, spec in config["organisms"].items() if is_toy(spec["source"])]


for _organism in toy_organisms():
    if _organism not in config.get("toy", {}).get("corpus", {}):
        raise ValueError(
            f"config key toy.corpus.{_organism} is missing: organism {_organism} has source 'toy' "
            "and needs a base-corpus size"
        )


def get_data_dir(wildcards):
    spec = config["organisms"][wildcards.organism]
    if is_toy(spec["source"]):
        return f"results/data/toy/{wildcards.organism}"
    return spec["source"]["path"]


def get_split_file(split):
    def inner(wildcards):
        return f"{get_data_dir(wildcards)}/{split}.jsonl"

    return inner


def get_toy_settings():
    return settings_json(config["toy"])


# ---------------------------------------------------------------- methods


def method_module(method):
    return get_method(method)


def any_of(names):
    """A wildcard regex matching exactly these names (nothing when there are none)."""
    return "|".join(names) or "(?!)"


LABEL_METHODS = [
    m for m in config["methods"] if method_module(m).FAMILY != "regularization"
]
REGULARIZATION_METHODS = [
    m for m in config["methods"] if method_module(m).FAMILY == "regularization"
]
SELECTING_METHODS = [m for m in config["methods"] if method_module(m).SELECTS]


def get_method_source(wildcards):
    """The method's own module: editing it reruns only that method's jobs."""
    return SRC / "methods" / f"{wildcards.method}.py"


def get_method_settings(wildcards):
    """The method's config subtree without k (k is the path's wildcard, so other k's jobs keep)."""
    settings = config["methods"][wildcards.method]
    return settings_json({key: value for key, value in settings.items() if key != "k"})


def method_ks(method):
    """k values of a method: its own k plus the k-scaling block's; 1 without a selection count."""
    if not method_module(method).SELECTS:
        return [1]
    ks = {config["methods"][method]["k"]}
    if method in config["kscaling"]["methods"]:
        ks |= set(config["kscaling"]["ks"])
    return sorted(ks)


def uses_reward_model(method):
    return getattr(method_module(method), "USES_REWARD_MODEL", False)


if (
    any(uses_reward_model(m) for m in config["methods"])
    and "reward_model" not in config
):
    raise ValueError(
        "config key reward_model is missing: methods "
        f"{[m for m in config['methods'] if uses_reward_model(m)]} rerank with a reward model"
    )


def get_reward_model_files(wildcards):
    """The reward model's config, for the methods that rerank with one."""
    if not uses_reward_model(wildcards.method):
        return []
    return [f"{get_reward_model_dir(wildcards)}/config.json"]


def get_reward_model_dir(wildcards):
    spec = config["reward_model"]
    if is_toy(spec["source"]):
        return f"results/models/{wildcards.model}-reward"
    return spec["source"]["path"]


def get_reward_model_arg(wildcards, input):
    return (
        f"--reward-model {Path(input.reward_model[0]).parent}"
        if input.reward_model
        else ""
    )


# ---------------------------------------------------------------- evaluation


def organism_dir(wildcards):
    return (
        f"results/organisms/{wildcards.model}/{wildcards.organism}/seed{wildcards.seed}"
    )


def get_eval_adapter(wildcards):
    """The adapter an evaluation loads: none for the base, the organism, or a retrained adapter."""
    if wildcards.stage == "base":
        return []
    if wildcards.stage == "phase1":
        return f"{organism_dir(wildcards)}/adapter/adapter_config.json"
    run = wildcards.stage  # "{method}/k{k}"
    return f"results/retrained/{wildcards.model}/{wildcards.organism}/seed{wildcards.seed}/{run}/adapter/adapter_config.json"


def get_eval_args(wildcards, input):
    """CLI arguments that identify the evaluated model."""
    if wildcards.stage in ("base", "phase1"):
        args = f"--stage {wildcards.stage}"
    else:
        run = Path(wildcards.stage)  # "{method}/k{k}"
        args = f"--stage phase3 --method {run.parent.name} --k {run.name[1:]}"
    if input.adapter:
        args += f" --adapter {Path(input.adapter).parent}"
    return args


# ---------------------------------------------------------------- targets


def runs():
    """Every (model, organism, seed, method, k) cell of the grid."""
    return [
        (model, organism, seed, method, k)
        for model in config["models"]
        for organism in config["organisms"]
        for seed in SEEDS
        for method in config["methods"]
        for k in method_ks(method)
    ]


def get_all_evals(wildcards=None):
    evals = set()
    for model, organism, seed, method, k in runs():
        prefix = f"results/eval/{model}/{organism}/seed{seed}"
        evals |= {
            f"{prefix}/base.parquet",
            f"{prefix}/phase1.parquet",
            f"{prefix}/{method}/k{k}.parquet",
        }
    return sorted(evals)


def get_induction_reports():
    return sorted(
        {
            f"results/organisms/{model}/{organism}/seed{seed}/induction_report.json"
            for model, organism, seed, _, _ in runs()
        }
    )


def get_candidates():
    """Every selecting method's candidates on eval prompts, at each of its k (for eta(s))."""
    return sorted(
        {
            f"results/candidates/{model}/{organism}/seed{seed}/{method}/k{k}.parquet"
            for model, organism, seed, method, k in runs()
            if method in SELECTING_METHODS
        }
    )


def get_final_outputs():
    return [
        "results/tables/main.csv",
        "results/tables/runs.csv",
        *get_induction_reports(),
        *get_candidates(),
    ]


# ---------------------------------------------------------------- cluster resources


# A job killed at its time limit is retried with twice the time, then three times, and so on.
def get_runtime(minutes):
    """A wall-time limit (minutes) that grows with the attempt (profiles/slurm sets retries: 1)."""

    def runtime(wildcards, attempt):
        return minutes * attempt

    return runtime
