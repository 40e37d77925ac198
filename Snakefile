# cmt: consistency-training misalignment pipeline.
# Phase 1 induces model organisms, Phase 2 pseudo-labels with consistency methods, Phase 3 retrains,
# and the tables compare misalignment risk before and after.
from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/induce.smk"
include: "workflow/rules/label.smk"
include: "workflow/rules/reward_model.smk"
include: "workflow/rules/retrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
