import json
from pathlib import Path

from snakemake.utils import validate

from cmt.config import check_config

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


# ---------------------------------------------------------------- organisms and data


def toy_organisms():
    return [o for o, spec in config["organisms"].items() if is_toy(spec["source"])]


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


def get_method_source(wildcards):
    """The method's own module: editing it reruns only that method's jobs."""
    return SRC / "methods" / f"{wildcards.method}.py"


def get_method_settings(wildcards):
    return settings_json(config["methods"][wildcards.method])


def method_ks(method):
    """k values for a method: 1 for methods without a selection count."""
    return [1]


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


def get_final_outputs():
    return [
        "results/tables/main.csv",
        "results/tables/runs.csv",
        *get_induction_reports(),
    ]
