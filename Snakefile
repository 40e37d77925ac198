# cmt: consistency-training misalignment pipeline.
# Phase 1 induces model organisms, Phase 2 pseudo-labels with consistency methods, Phase 3 retrains,
# and the tables compare misalignment risk before and after.
import importlib.util
import os
import shutil
import sys

from snakemake.utils import min_version

min_version("9.19")

# Jobs run `cmt` from the environment Snakemake runs in, so `.venv/bin/snakemake` works without an activated venv.
os.environ.update(
    PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
)
if importlib.util.find_spec("cmt") is None or shutil.which("cmt") is None:
    raise SystemExit(
        f"cmt is not installed in the environment of {sys.executable}: run `make venv`, then .venv/bin/snakemake"
    )

# The default grid. A --configfile replaces it whole (as --replace-workflow-config would); it is never deep-merged
# into these toy defaults, on the login node or in a cluster job. --config KEY=VALUE alone still edits them.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/paths.smk"
include: "workflow/rules/config.smk"
include: "workflow/rules/helpers.smk"
include: "workflow/rules/judges.smk"
include: "workflow/rules/methods.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/hooks.smk"
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
include: "workflow/rules/diagnose.smk"
include: "workflow/rules/stability.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
