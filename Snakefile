# cmt: consistency-training misalignment pipeline.
# Phase 1 induces model organisms, Phase 2 pseudo-labels with consistency methods, Phase 3 retrains,
# and the tables compare misalignment risk before and after.
from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


# Every job loads models offline from local folders (the download rule alone turns this off for itself).
# huggingface_hub reads the variable once at import, so it must be set before Python starts.
shell.prefix("set -euo pipefail; export HF_HUB_OFFLINE=1; ")


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/induce.smk"
include: "workflow/rules/label.smk"
include: "workflow/rules/reward_model.smk"
include: "workflow/rules/retrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/shift.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
