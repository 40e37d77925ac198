# The config, checked once before anything reads it, and the wildcard values it allows.
import os
import re

from snakemake.utils import validate

from cmt.runtime import allocator, verdict_cache

from cmt.config import check_workflow_config, config_file_errors

# Every problem at once, each naming its key path (schema, method registry, keys needed by other keys, local
# folders) or, for a key given twice in one file, the file and its lines; then Snakemake's validate fills the
# schema's defaults.
CONFIG_PROBLEMS = config_file_errors(workflow.configfiles) + check_workflow_config(
    config, SCHEMA
)
if CONFIG_PROBLEMS:
    raise SystemExit("invalid config:\n  " + "\n  ".join(CONFIG_PROBLEMS))
validate(config, SCHEMA)

# The jobs' shells and the warm worker get tcmalloc where the machine has it: the same numbers in less time
# (cmt.runtime.allocator). Decided where the jobs run (a Slurm job parses this file on its node), so nothing is
# exported from the login node; Snakemake itself keeps its allocator. Conda and container rules bring their own.
try:
    PRELOAD = allocator.preload_library(
        config["allocator"],
        own_software=bool(workflow.deployment_settings.deployment_method),
    )
except allocator.AllocatorError as err:
    raise SystemExit(f"invalid config:\n  {err}") from None
# Every job loads models offline from local folders (the download rule alone turns this off for itself).
# huggingface_hub reads the variable once at import, so it must be set before Python starts. The prefix is
# formatted like a rule's command, hence the doubled braces.
shell.prefix(
    "set -euo pipefail; export HF_HUB_OFFLINE=1; "
    + allocator.shell_export(PRELOAD).replace("{", "{{").replace("}", "}}")
)

# Jobs (local, forked by the warm worker, or on Slurm, where each job parses this file again) find the sandbox's
# verdict cache through this variable (cmt.runtime.verdict_cache).
if config["sandbox_cache"]:
    os.environ[verdict_cache.ENV_VAR] = os.path.abspath(config["sandbox_cache"])
else:
    os.environ.pop(verdict_cache.ENV_VAR, None)


def model_seeds(model):
    """A model's run seeds: its own `seeds` (e.g. one seed for a 70B model) or the top-level ones."""
    return [str(s) for s in config["models"][model].get("seeds") or config["seeds"]]


ALL_SEEDS = sorted({s for m in config["models"] for s in model_seeds(m)}, key=int)


def base_name(model, seed):
    """The folder under results/models of the toy base a run loads: the model's own, or with `base_per_seed`
    one per run seed (cmt pretrains it with the run seed added to the pretraining seed).
    """
    return (
        f"{model}/seed{seed}" if config["models"][model].get("base_per_seed") else model
    )


# Every base by name: (model, run seed), the seed None where the model's seeds share one base. Only toy bases
# are built here (pretrain_base, train_reward_model); the {base} wildcard takes these names.
BASES = {
    base_name(m, s): (m, s if config["models"][m].get("base_per_seed") else None)
    for m in config["models"]
    for s in model_seeds(m)
}


def any_of(names):
    """A wildcard regex matching exactly these names (nothing when there are none). Escaped: model names may
    hold dots (Qwen2.5-7B), which would otherwise match any character."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    model=any_of(config["models"]),
    model_a=any_of(config["models"]),
    model_b=any_of(config["models"]),
    base=any_of(BASES),
    organism=any_of(config["organisms"]),
    method=any_of(config["methods"]),
    seed=any_of(ALL_SEEDS),
    k=r"[1-9][0-9]*",
    split=any_of(SPLITS),
    stage="base|phase1",
