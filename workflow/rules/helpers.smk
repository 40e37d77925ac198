# Helpers of the rules: where a model or dataset is, the settings each job gets as params (canonical JSON, so a
# changed setting reruns exactly the jobs that read it) and resources. The judge and harmful slot: judges.smk.
import json
import shlex
from types import SimpleNamespace

from cmt.organisms import toy_source
from cmt.runtime.sources import package_files
from cmt.toy.world import CHECK_GENERATORS


def settings_json(obj):
    """A config subtree as canonical JSON: a deterministic param. Not shell-safe (user text may hold a quote):
    the rules pass it as {params.x:q}, or through `option_arg`."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def get_analysis_code(*modules, via_reports=True):
    """The code of an aggregate job: each named module of cmt.analysis with every module of it that
    it imports (cmt.runtime.sources), and reports.py, which wires the tables to the CLI (`via_reports`).
    Editing one reruns exactly the tables and figures made with it; no per-run measurement
    reads them."""
    analysis = SRC / "analysis"
    files = {analysis / "reports.py"} if via_reports else set()
    for module in modules:
        files.update(package_files("cmt.analysis", module, analysis))
    return sorted(files)


def option_arg(option, value):
    """`OPTION VALUE` with the value shell-quoted, for a param that is a whole optional argument."""
    return f"{option} {shlex.quote(str(value))}"


def paths_arg(option, paths):
    """`OPTION PATH...` with each path shell-quoted, or nothing without paths."""
    return " ".join([option, *map(shlex.quote, paths)]) if paths else ""


class NoTrigger:
    """A param value that reaches the command but is no rerun trigger: Snakemake records the params of a job
    (its params trigger) only where they are builtin values (str, numbers, lists, dicts; Snakemake 9's
    persistence._serialize_param) and skips any other object. For what a job needs but that cannot change its
    outputs: the LLM judge's transport settings and the guard on its key (judges.smk).
    """

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text

    def __format__(self, spec):
        return format(self.text, spec)


def is_toy(source):
    """`toy`, or a toy variant {toy: GENERATOR, stability: LEVEL}."""
    return source == "toy" or (isinstance(source, dict) and "toy" in source)


# Job priorities for Snakemake's scheduler (docs/pipeline.md, "Job order"). The induction gates first, so that a
# failing one stops the run within minutes: without this, a gate whose inputs were ready at 180 s ran at 866 s
# of a 955-s grid. The reward model holds both cores, so it otherwise waits until nothing else is ready; the
# scheduler maximises the summed priority of the jobs it starts, so it must outweigh two gate jobs.
PRIORITY = {"reward_model": 100, "gate": 40}


def dirnames(paths):
    """Space-separated, shell-quoted parent directories (adapter dirs from their adapter_config.json paths)."""
    return " ".join(shlex.quote(str(Path(p).parent)) for p in paths)


# ---------------------------------------------------------------- models


def toy_models():
    return [m for m, spec in config["models"].items() if is_toy(spec["source"])]


def get_model_dir(wildcards):
    """results/models/<base> (toy: the model's, or its run seed's with base_per_seed), the configured path, or
    resources/models/<m> (fetched or converted)."""
    source = config["models"][wildcards.model]["source"]
    if is_toy(source):
        return f"results/models/{base_name(wildcards.model, wildcards.seed)}"
    if "path" in source:
        return source["path"]
    return f"resources/models/{wildcards.model}"


def get_pretrain_report(wildcards):
    """A toy base's pretrain report (its numeric path goes into the induction report); none for other models."""
    if is_toy(config["models"][wildcards.model]["source"]):
        return {"pretrain_report": f"{get_model_dir(wildcards)}/pretrain_report.json"}
    return {}


def get_pretrain_report_arg(wildcards, input):
    return (
        option_arg("--pretrain-report", input.pretrain_report)
        if "pretrain_report" in input.keys()
        else ""
    )


def get_model_files(wildcards):
    """The files a job needs from the base model (the toy one is built by pretrain_base)."""
    return [f"{get_model_dir(wildcards)}/config.json"]


def gguf_models():
    return [m for m, spec in config["models"].items() if "gguf" in spec["source"]]


def gguf_source(wildcards):
    return config["models"][wildcards.model]["source"]["gguf"]


def attention_kernel(spec):
    """The attention kernel only where set: no param change for the models without one."""
    kernel = spec.get("attn_implementation")
    return {"attn_implementation": kernel} if kernel else {}


def get_generation_settings(wildcards):
    spec = config["models"][wildcards.model]
    return settings_json(
        {
            "backend": config["generation"]["backend"],
            "dtype": spec["dtype"],
            "gpus": spec["gpus"],  # vLLM's tensor-parallel size
            **attention_kernel(spec),
            **spec["generation"],
        }
    )


def training_base(spec):
    """How a training job loads the base: dtype, plus the QLoRA block and the attention kernel only where
    set (no param change for the models without them)."""
    base = {"dtype": spec["dtype"], **attention_kernel(spec)}
    if spec.get("quantization"):
        base["quantization"] = spec["quantization"]
    return base


def phase_settings(wildcards, phase, overrides=None):
    spec = config["models"][wildcards.model]
    return {
        **training_base(spec),
        "lora": spec["lora"],
        "train": {**spec[phase], **(overrides or {})},
    }


def get_phase_settings(wildcards, phase, overrides=None):
    """A model's phase1/phase3 training settings, with a method's own `train` overrides where given."""
    return settings_json(phase_settings(wildcards, phase, overrides))


def get_phase1_settings(wildcards):
    """Phase 1's settings with the organism's own phase1 overrides, plus its induce_until stop rule with the
    model's reply budget (no param change for the organisms without either)."""
    organism = config["organisms"][wildcards.organism]
    settings = phase_settings(wildcards, "phase1", organism.get("phase1"))
    until = organism.get("induce_until")
    if until:
        budget = config["models"][wildcards.model]["generation"]["max_new_tokens"]
        settings["until"] = {**until, "max_new_tokens": budget}
    return settings_json(settings)


# ---------------------------------------------------------------- organisms and data


def toy_organisms():
    return [o for o, spec in config["organisms"].items() if is_toy(spec["source"])]


def toy_generator(organism):
    """The toy generator behind an organism with a toy source (a variant names its own)."""
    return toy_source(organism, config["organisms"][organism]["source"])[0]


def toy_check_organisms():
    """Toy organisms that get a check split (cmt.toy.world.CHECK_GENERATORS, with toy.sizes.check set)."""
    if not config.get("toy", {}).get("sizes", {}).get(CHECK_SPLIT):
        return []
    return [o for o in toy_organisms() if toy_generator(o) in CHECK_GENERATORS]


def toy_organism_specs():
    """cmt toy-data's --organisms: NAME, or NAME=GENERATOR:STABILITY for a variant."""
    specs = []
    for o in toy_organisms():
        generator, level = toy_source(o, config["organisms"][o]["source"])
        plain = config["organisms"][o]["source"] == "toy"
        specs.append(o if plain else f"{o}={generator}:{level}")
    return specs


def toy_generator_dirs():
    """GENERATOR=DIR, one folder per toy generator: its variants share every prompt, so one folder holds
    the held-out prompts and the eval rows of all of them (pretrain's gate, the reward model's pairs).
    """
    dirs = {}
    for o in toy_organisms():
        dirs.setdefault(toy_generator(o), f"{TOY_DATA}/{o}")
    return [f"{g}={d}" for g, d in dirs.items()]


def data_dir(organism):
    """Where an organism's reference-format folder is (or will be, once generated or fetched)."""
    source = config["organisms"][organism]["source"]
    if is_toy(source):
        return f"{TOY_DATA}/{organism}"
    if "path" in source:
        return source["path"]
    return f"resources/data/{organism}"


def get_data_dir(wildcards):
    return data_dir(wildcards.organism)


def has_reference(organism, split):
    """Whether the organism's folder holds a control's reference replies (its `split`): the toy world writes the
    consistency oracles' always and the harmful-compliance replies with toy.harmful; a local folder may hold
    them; a fetched dataset is checked only after its fetch, so it has none here.
    """
    source = config["organisms"][organism]["source"]
    if is_toy(source):
        return split in REFERENCE_SPLITS or (
            split == HARMFUL_COMPLIANCE_SPLIT and "harmful" in config.get("toy", {})
        )
    if isinstance(source, dict) and "path" in source:
        return (Path(source["path"]) / f"{split}.jsonl").is_file()
    return False


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
    """The toy world's generator modules, those of toy.corpus_generators included: editing one regenerates the
    data."""
    generators = dict.fromkeys(toy_generator(o) for o in toy_organisms())
    if generators:
        generators.update(
            dict.fromkeys(config.get("toy", {}).get("corpus_generators", []))
        )
    code = [SRC / "toy" / f"{g}.py" for g in generators]
    code += [SRC / "toy" / "stability.py"] if generators else []
    return code + (
        [SRC / "toy" / "harmful.py"] if "harmful" in config.get("toy", {}) else []
    )


def get_toy_harmful_outputs():
    """The held-out harmful requests, and each organism's harmful-compliance control replies."""
    if "harmful" not in config.get("toy", {}):
        return []
    return [f"{TOY_DATA}/harmful/eval.jsonl"] + expand(
        TOY_SPLIT, organism=toy_organisms(), split=HARMFUL_COMPLIANCE_SPLIT
    )


# Toy keys only pretraining reads (cmt.toy.pretrain): the world's data never depends on them.
PRETRAIN_ONLY_TOY_KEYS = ("tokenizer", "model", "pretrain")


def get_toy_settings():
    """toy_data's settings: the toy subtree without the keys only pretraining reads, so that a changed model
    size or pretraining schedule retrains the base without writing the world again."""
    toy = config.get("toy", {})
    return settings_json(
        {key: value for key, value in toy.items() if key not in PRETRAIN_ONLY_TOY_KEYS}
    )


def get_pretrain_settings(wildcards):
    """The toy subtree, plus the attention kernel the base's model loads with, its own pretraining seed where
    it sets one (plus the run seed with base_per_seed), and the induction gate's max_base.
    """
    model, run_seed = BASES[wildcards.base]
    spec = config["models"][model]
    toy = config.get("toy", {})
    pretrain = dict(toy["pretrain"])
    if "pretrain_seed" in spec:
        pretrain["seed"] = spec["pretrain_seed"]
    if run_seed is not None:
        pretrain["seed"] += int(run_seed)
    gate = config["analysis"].get("induction_gate") or {}
    if (
        "max_base" in gate
    ):  # the base's own gate checks it too, where more pretraining can still fix it
        pretrain["max_misalignment"] = gate["max_base"]
    return settings_json({**toy, "pretrain": pretrain, **attention_kernel(spec)})


# ---------------------------------------------------------------- resources


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


# A job killed at its time limit is retried with twice the time, then three times, and so on.
def get_runtime(minutes):
    """A wall-time limit (minutes) that grows with the attempt (profiles/slurm sets retries: 1)."""

    def runtime(wildcards, attempt):
        return minutes * attempt

    return runtime
