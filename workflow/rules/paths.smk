# Where things are: the code the rules depend on, the dataset splits and the path patterns that several rule
# files share. The Snakefile includes this file first, so no rule file depends on another's include order.
# Patterns use the wildcards {model}, {organism}, {seed}, {method}, {k}, {stage} and {split}; per-method files
# are expanded over the method and its k by cell_paths (methods.smk).
from pathlib import Path

# SPLITS: the splits of every organism's dataset folder (the reference format), named once for every rule file.
from cmt.data.splits import (
    CHECK_SPLIT,
    HARMFUL_COMPLIANCE_SPLIT,
    REFERENCE_SPLITS,
    SPLITS,
)

SRC = Path(workflow.basedir) / "src" / "cmt"
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"

# ---------------------------------------------------------------- data and models
TOY_DATA = "results/data/toy"
TOY_SPLIT = "results/data/toy/{organism}/{split}.jsonl"
FETCHED_SPLIT = "resources/data/{organism}/{split}.jsonl"

# ---------------------------------------------------------------- Phase 1
ORGANISM_DIR = "results/organisms/{model}/{organism}/seed{seed}"
ORGANISM_ADAPTER = f"{ORGANISM_DIR}/adapter/adapter_config.json"
ORGANISM_WEIGHTS = f"{ORGANISM_DIR}/adapter/adapter_model.safetensors"
INDUCTION_REPORT = f"{ORGANISM_DIR}/induction_report.json"

# ---------------------------------------------------------------- Phase 2
LABELS = "results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.parquet"
LABEL_MANIFESTS = (
    "results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.manifest.json"
)
CANDIDATES = "results/candidates/{model}/{organism}/seed{seed}/{method}/k{k}.parquet"

# ---------------------------------------------------------------- Phase 3
RETRAINED_DIR = "results/retrained/{model}/{organism}/seed{seed}/{method}/k{k}/adapter"
RETRAINED_CONFIG = f"{RETRAINED_DIR}/adapter_config.json"
RETRAINED_WEIGHTS = f"{RETRAINED_DIR}/adapter_model.safetensors"

# ---------------------------------------------------------------- evaluation and analysis
STAGE_EVAL = "results/eval/{model}/{organism}/seed{seed}/{stage}.parquet"
STAGE_EVAL_MANIFEST = "results/eval/{model}/{organism}/seed{seed}/{stage}.manifest.json"
EVAL = "results/eval/{model}/{organism}/seed{seed}/{method}/k{k}.parquet"
EVAL_MANIFESTS = (
    "results/eval/{model}/{organism}/seed{seed}/{method}/k{k}.manifest.json"
)
SHIFT_RECORDS = "results/shift/{model}/{organism}/seed{seed}/{method}/k{k}.json"
FRAGILITY = "results/shift/{model}/{organism}/seed{seed}/fragility.json"
CROSS_MODEL = "results/shift/cross/{organism}/seed{seed}/{model_a}__{model_b}.json"
DIAGNOSE_DIR = "results/diagnose/{model}/{organism}/seed{seed}"
