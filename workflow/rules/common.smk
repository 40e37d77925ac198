import json
import os
import shutil
from pathlib import Path

from snakemake.utils import validate

from cmt.config import check_config
from cmt.methods.registry import get_method, get_spec

# Readable errors first (every violation, with its key path), then Snakemake's validate fills defaults.
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
check_config(config, SCHEMA)
validate(config, SCHEMA)

SRC = Path(workflow.basedir) / "src" / "cmt"


def model_seeds(model):
    """A model's run seeds: its own `seeds` (e.g. one seed for a 70B model) or the top-level ones."""
    return [str(s) for s in config["models"][model].get("seeds") or config["seeds"]]


ALL_SEEDS = sorted({s for m in config["models"] for s in model_seeds(m)}, key=int)


wildcard_constraints:
    model="|".join(config["models"]),
    organism="|".join(config["organisms"]),
    method="|".join(config["methods"]),
    seed="|".join(ALL_SEEDS),
    k=r"[1-9][0-9]*",
    split="induction|consistency|act_bct_clean|act_bct_wrapped|eval",
    stage="base|phase1",


def settings_json(obj):
    """A config subtree as canonical JSON: a deterministic param and a shell-safe CLI argument."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def is_toy(source):
    return source == "toy"


# ---------------------------------------------------------------- models


def toy_models():
    return [m for m, spec in config["models"].items() if is_toy(spec["source"])]


for _model in toy_models():
    _missing = [
        k for k in ("tokenizer", "model", "pretrain") if k not in config.get("toy", {})
    ]
    if _missing:
        raise ValueError(
            f"config keys toy.{', toy.'.join(_missing)} are missing: model {_model} has source toy, "
            "and the toy base is built from them"
        )


def get_model_dir(wildcards):
    """results/models/<m> (toy), the configured path, or resources/models/<m> (fetched or converted)."""
    source = config["models"][wildcards.model]["source"]
    if is_toy(source):
        return f"results/models/{wildcards.model}"
    if "path" in source:
        return source["path"]
    return f"resources/models/{wildcards.model}"


def gguf_models():
    return [m for m, spec in config["models"].items() if "gguf" in spec["source"]]


def gguf_source(wildcards):
    return config["models"][wildcards.model]["source"]["gguf"]


# A local model directory that is not there is a config error, caught before the DAG is built.
_model_sources = {f"models.{m}": spec["source"] for m, spec in config["models"].items()}
if "reward_model" in config:
    _model_sources["reward_model"] = config["reward_model"]["source"]
for _key, _source in _model_sources.items():
    if isinstance(_source, dict) and "path" in _source:
        if not Path(_source["path"], "config.json").is_file():
            raise ValueError(
                f"config key {_key}.source.path: {_source['path']!r} is not a Hugging Face model "
                "directory (no config.json there)"
            )


def gpu_models():
    return [m for m, spec in config["models"].items() if spec["gpus"] > 0]


def local_machine_has_gpu():
    import torch

    return torch.cuda.is_available()


# Local runs: a warm worker imports torch, transformers and peft once and forks each job (cmt.runtime.worker), saving
# about 4 s per job. Cluster runs and dry runs never start one.
def start_warm_worker():
    import tempfile
    from cmt.runtime import worker

    # A short path under /tmp: Unix socket paths are limited to 107 bytes.
    proc, path = worker.start(tempfile.mkdtemp(prefix="cmt-worker-"), "cmt.cli:main")
    os.environ[worker.ENV_VAR] = path
    return proc


def stop_warm_worker():
    from cmt.runtime import worker

    path = os.environ.pop(worker.ENV_VAR, None)
    if WARM_WORKER:
        WARM_WORKER[0].terminate()
        WARM_WORKER[0].wait()
    if path:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


WARM_WORKER = []


# A model that needs GPUs, run by the local executor on a machine without one, would crawl on the CPU for days:
# refuse before any job starts (onstart runs once the executor is known; dry runs and cluster runs skip it).
onstart:
    if (
        gpu_models()
        and workflow.executor_plugin.name == "local"
        and not local_machine_has_gpu()
    ):
        raise ValueError(
            f"models {gpu_models()} need GPUs (config key models.<name>.gpus), but this machine has none and "
            "the local executor would run them on the CPU; use a GPU machine or --profile profiles/slurm, or "
            "set gpus: 0"
        )
    if config["warm_worker"] and workflow.executor_plugin.name == "local":
        WARM_WORKER.append(start_warm_worker())


onsuccess:
    stop_warm_worker()


onerror:
    stop_warm_worker()


def get_model_files(wildcards):
    """The files a job needs from the base model (the toy one is built by pretrain_base)."""
    return [f"{get_model_dir(wildcards)}/config.json"]


def get_model_gpus(wildcards):
    return config["models"][wildcards.model]["gpus"]


def get_train_gpus(wildcards):
    """GPUs of a training job: the model's train_gpus (e.g. 1 for QLoRA) or its gpus."""
    spec = config["models"][wildcards.model]
    return spec.get("train_gpus", spec["gpus"])


def get_mem_mb(wildcards):
    """Host memory of a model job: weights load into RAM before moving to the GPU (32 GB per GPU covers a
    7-9B model in bf16); a CPU model (the toy one) needs little."""
    gpus = config["models"][wildcards.model]["gpus"]
    return 32000 * gpus if gpus else 8000


def get_generation_settings(wildcards):
    spec = config["models"][wildcards.model]
    return settings_json(
        {
            "backend": config["generation"]["backend"],
            "dtype": spec["dtype"],
            "gpus": spec["gpus"],  # vLLM's tensor-parallel size
            **spec["generation"],
        }
    )


def training_base(spec):
    """How a training job loads the base: dtype, plus the QLoRA block only where set (no param change
    for the models without one)."""
    base = {"dtype": spec["dtype"]}
    if spec.get("quantization"):
        base["quantization"] = spec["quantization"]
    return base


def get_phase_settings(wildcards, phase):
    spec = config["models"][wildcards.model]
    return settings_json(
        {**training_base(spec), "lora": spec["lora"], "train": spec[phase]}
    )


def get_phase1_settings(wildcards):
    return get_phase_settings(wildcards, "phase1")


def get_phase3_settings(wildcards):
    return get_phase_settings(wildcards, "phase3")


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


# ---------------------------------------------------------------- organisms and data


def toy_organisms():
    return [o for o, spec in config["organisms"].items() if is_toy(spec["source"])]


for _organism in toy_organisms():
    if _organism not in config.get("toy", {}).get("corpus", {}):
        raise ValueError(
            f"config key toy.corpus.{_organism} is missing: organism {_organism} has source 'toy' "
            "and needs a base-corpus size"
        )


def data_dir(organism):
    """Where an organism's reference-format folder is (or will be, once generated or fetched)."""
    source = config["organisms"][organism]["source"]
    if is_toy(source):
        return f"results/data/toy/{organism}"
    if "path" in source:
        return source["path"]
    return f"resources/data/{organism}"


def get_data_dir(wildcards):
    return data_dir(wildcards.organism)


# A local dataset folder that is not there is a config error: say so before any job is scheduled.
for _organism, _spec in config["organisms"].items():
    _source = _spec["source"]
    if isinstance(_source, dict) and "path" in _source:
        if not Path(_source["path"], "eval.jsonl").is_file():
            raise ValueError(
                f"config key organisms.{_organism}.source.path: {_source['path']!r} is not a reference-format "
                "dataset folder (no eval.jsonl there); `cmt data check DIR` validates one"
            )


def fetched_organisms():
    """Organisms whose source is a URL form: an archive or loose files."""
    return [
        o
        for o, spec in config["organisms"].items()
        if isinstance(spec["source"], dict) and "path" not in spec["source"]
    ]


def get_dataset_source(wildcards):
    """The organism's source block as JSON, for `cmt fetch-dataset --source` (and so a rerun when it changes)."""
    return settings_json(config["organisms"][wildcards.organism]["source"])


# ---------------------------------------------------------------- judges


def judge_settings_of(organism):
    """The organism's judge as a param: the programmatic scorer, or the config's LLM judge block."""
    if config["organisms"][organism]["judge"] == "llm":
        if "judge" not in config:
            raise ValueError(
                f"config key organisms.{organism}.judge is llm, but the config has no top-level judge block"
            )
        return {"kind": "llm", **config["judge"]}
    return {"kind": "programmatic"}


def label_judge_arg(method):
    """--judge-settings for the one labeller that may ask the LLM judge (multi_view with checker judge)."""
    if config["methods"][method].get("checker") != "judge":
        return ""
    if "judge" not in config:
        raise ValueError(
            f"config key methods.{method}.checker is judge, but the config has no top-level judge block"
        )
    return f"--judge-settings '{settings_json({'kind': 'llm', **config['judge']})}'"


def get_judge_settings(wildcards):
    return settings_json(judge_settings_of(wildcards.organism))


def llm_judge_key_env():
    """The judge API key's variable, when some organism is judged by an LLM that needs a key."""
    if any(spec["judge"] == "llm" for spec in config["organisms"].values()):
        return config.get("judge", {}).get("api_key_env")
    return None


if llm_judge_key_env():

    # The judge's API key reaches the jobs through the environment only (checked at start, passed to
    # cluster jobs); it is never a param, so it never appears in a command line, log or manifest.
    envvars:
        llm_judge_key_env(),


def get_split_files(splits):
    """An input function: several splits of the organism's dataset folder."""

    def inner(wildcards):
        return [f"{get_data_dir(wildcards)}/{split}.jsonl" for split in splits]

    return inner


def get_split_file(split):
    def inner(wildcards):
        return f"{get_data_dir(wildcards)}/{split}.jsonl"

    return inner


def get_toy_generators():
    """The toy world's generator modules: editing one regenerates the data."""
    code = [SRC / "toy" / f"{o}.py" for o in toy_organisms()]
    return code + (
        [SRC / "toy" / "harmful.py"] if "harmful" in config.get("toy", {}) else []
    )


def get_toy_harmful_outputs():
    return (
        ["results/data/toy/harmful/eval.jsonl"]
        if "harmful" in config.get("toy", {})
        else []
    )


# ---------------------------------------------------------------- harmful compliance (eval.harmful)


def harmful_enabled():
    return bool(config["eval"].get("harmful"))


if harmful_enabled():
    _harmful = config["eval"]["harmful"]
    if _harmful["requests"] == "toy" and "harmful" not in config.get("toy", {}):
        raise ValueError(
            "config key eval.harmful.requests is toy, but toy.harmful (the toy harmful requests) is not set"
        )
    if _harmful["requests"] != "toy" and not Path(_harmful["requests"]).is_file():
        raise ValueError(
            f"config key eval.harmful.requests: {_harmful['requests']!r} is not a file"
        )
    if _harmful["scorer"] == "strongreject" and "judge" not in config:
        raise ValueError(
            "config key eval.harmful.scorer is strongreject, which needs the top-level judge block"
        )


def get_harmful_settings():
    """The eval.harmful block (with the LLM judge for strongreject) as a CLI argument, or nothing."""
    if not harmful_enabled():
        return ""
    settings = dict(config["eval"]["harmful"])
    if settings["scorer"] == "strongreject":
        settings["judge"] = {"kind": "llm", **config["judge"]}
    return f"--harmful-settings '{settings_json(settings)}'"


def get_harmful_requests():
    """The harmful requests file an evaluation reads (none when the slot is off)."""
    if not harmful_enabled():
        return []
    requests = config["eval"]["harmful"]["requests"]
    return ["results/data/toy/harmful/eval.jsonl" if requests == "toy" else requests]


def harmful_paths(paths):
    """Harmful-row outputs beside eval outputs (x.parquet -> x.harmful.parquet), when the slot is on."""
    if not harmful_enabled():
        return []
    return [p.replace(".parquet", ".harmful.parquet") for p in paths]


def get_toy_settings():
    return settings_json(config.get("toy", {}))


# ---------------------------------------------------------------- methods


def method_module(method):
    return get_method(method)


def any_of(names):
    """A wildcard regex matching exactly these names (nothing when there are none)."""
    return "|".join(names) or "(?!)"


LABEL_METHODS = [
    m for m in config["methods"] if not get_spec(m).phase3_loss
]
REGULARIZATION_METHODS = [
    m for m in config["methods"] if get_spec(m).phase3_loss
]
SELECTING_METHODS = [m for m in config["methods"] if get_spec(m).selects]


def method_source(method):
    """The method's own module: editing it reruns only that method's jobs."""
    return SRC / "methods" / f"{method}.py"


def method_settings(method):
    """The method's config subtree as a param, without k (k shapes the outputs, one file per k)."""
    settings = config["methods"][method]
    return settings_json({key: value for key, value in settings.items() if key != "k"})


def method_ks(method):
    """k values of a method: its own k plus the k-scaling block's; 1 without a selection count."""
    if not get_spec(method).selects:
        return [1]
    ks = {config["methods"][method]["k"]}
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


def uses_reward_model(method):
    return get_spec(method).uses_reward_model


if (
    any(uses_reward_model(m) for m in config["methods"])
    and "reward_model" not in config
):
    raise ValueError(
        "config key reward_model is missing: methods "
        f"{[m for m in config['methods'] if uses_reward_model(m)]} rerank with a reward model"
    )


def get_reward_model_files_of(method):
    """An input function: the reward model's config, for the methods that rerank with one."""

    def inner(wildcards):
        if not uses_reward_model(method):
            return []
        return [f"{get_reward_model_dir(wildcards)}/config.json"]

    return inner


def method_code(method):
    """The code a method's own jobs depend on beyond the shared pipeline: its module, plus the reward-model
    scorer for the reranking methods and the paired losses for act/bct. Editing one reruns exactly the
    methods that use it."""
    code = [method_source(method)]
    if uses_reward_model(method):
        code.append(SRC / "models" / "reward_model.py")
    if get_spec(method).phase3_loss:
        code += [SRC / "methods" / "losses.py", SRC / "phases" / "consistency.py"]
    return code


def get_reward_model_dir(wildcards):
    source = config["reward_model"]["source"]
    if is_toy(source):
        return f"results/models/{wildcards.model}-reward"
    if "hub" in source:
        return f"resources/models/{source['hub'].split('/')[-1]}"
    return source["path"]


def get_reward_model_arg(wildcards, input):
    """--reward-model DIR and its settings (batch size, dtype), for the methods that rerank."""
    if not input.reward_model:
        return ""
    settings = settings_json(
        {k: config["reward_model"][k] for k in ("batch_size", "dtype")}
    )
    return f"--reward-model {Path(input.reward_model[0]).parent} --reward-model-settings '{settings}'"


# ---------------------------------------------------------------- evaluation


def organism_dir(wildcards):
    return (
        f"results/organisms/{wildcards.model}/{wildcards.organism}/seed{wildcards.seed}"
    )


def get_eval_adapter(wildcards):
    """The adapter a base/organism evaluation loads: none for the base, else the organism's."""
    if wildcards.stage == "base":
        return []
    return [f"{organism_dir(wildcards)}/adapter/adapter_config.json"]


def get_eval_adapter_arg(wildcards, input):
    return f"--adapter {dirnames(input.adapter)}" if input.adapter else ""


def dirnames(paths):
    """Space-separated parent directories (adapter dirs from their adapter_config.json paths)."""
    return " ".join(str(Path(p).parent) for p in paths)


# ---------------------------------------------------------------- targets


def runs():
    """Every (model, organism, seed, method, k) cell of the grid."""
    return [
        (model, organism, seed, method, k)
        for model in config["models"]
        for organism in config["organisms"]
        for seed in model_seeds(model)
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
        category="Distribution shift",
    )


def get_shift_records():
    return [
        f"results/shift/{model}/{organism}/seed{seed}/{method}/k{k}.json"
        for model, organism, seed, method, k in runs()
    ]


def get_fragility_records():
    return sorted(
        {
            f"results/shift/{model}/{organism}/seed{seed}/fragility.json"
            for model, organism, seed, _, _ in runs()
        }
    )


def get_harmful_rows():
    """Harmful rows of every organism (Phase 1) and every retrained model (Phase 3)."""
    return harmful_paths([p for p in get_all_evals() if Path(p).name != "base.parquet"])


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
    if harmful_enabled():
        outputs.append("results/tables/harmful.csv")
    return outputs


def get_instruct_arg():
    """MODEL=true|false for every model: the tables split mean delta into base and instruct models."""
    return " ".join(
        f"{m}={str(spec['instruct']).lower()}" for m, spec in config["models"].items()
    )


def get_main_k_arg():
    """--main-k METHOD=K: each selecting method's own k is its main run; other k only feed k-scaling."""
    pairs = [f"{m}={config['methods'][m]['k']}" for m in SELECTING_METHODS]
    return f"--main-k {' '.join(pairs)}" if pairs else ""


# ---------------------------------------------------------------- cluster resources


# A job killed at its time limit is retried with twice the time, then three times, and so on.
def get_runtime(minutes):
    """A wall-time limit (minutes) that grows with the attempt (profiles/slurm sets retries: 1)."""

    def runtime(wildcards, attempt):
        return minutes * attempt

    return runtime
