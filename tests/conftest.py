import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import REPO, run_snakemake, wait_for_socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that sleep at a barrier instead of spinning. With spinning, two torch processes of two threads
# each on two cores (two xdist workers, or a test beside its Snakemake jobs) took 9 times as long as one alone;
# sleeping costs one process alone about 3% (docs/testing.md). Set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# The files whose fixtures run the pipeline end to end (minutes each on two cores), then the Slurm file, which
# mostly waits on Slurm's status polls, then the vLLM file (skipped unless CMT_VLLM_PYTHON is set, as CI sets it),
# which the first worker to finish a pipeline runs while the Slurm file waits. They are collected first, so that
# under pytest-xdist (make test: whole files per worker, in collection order) they start at once and short files
# fill in around them.
FIRST_FILES = ("test_pipeline.py", "test_methods_pipeline.py", "test_slurm.py", "test_vllm_cpu.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


TINY_TOY = {
    "seed": 3,
    "max_operand": 40,
    "sizes": {"induction": 60, "consistency": 30, "act_bct": 20, "eval": 30},
    "corpus": {"sycophancy": 6000},
    "skills": {"views": 0.0, "refinement": 0.0, "grading": 0.0},  # the tiny world only needs the task
    "tokenizer": {"vocab_size": 350},
    "model": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_layers": 2,
        "num_heads": 4,
        "max_position_embeddings": 128,
    },
    "pretrain": {
        "seed": 0,
        "learning_rate": 5e-3,
        "epochs": 4,
        "batch_size": 64,
        "warmup_ratio": 0.05,
        "weight_decay": 0.01,
        "lr_scheduler": "cosine",
        "max_length": 128,
        "bf16": "auto",
        "eval_max_new_tokens": 24,
        "min_heldout_accuracy": 0.0,
    },
}


@pytest.fixture(autouse=True)
def restore_job_logging():
    """`cmt.cli.main` run in-process (runlog.setup) points the root logger and the progress bars at this test's
    stderr, which pytest closes afterwards; later tests would then fail on a closed file. Put both back."""
    import logging

    from cmt.runtime import runlog

    root = logging.getLogger()
    handlers, level, stream = root.handlers[:], root.level, runlog._progress_stream
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    runlog._progress_stream = stream


def run_scratch(config, tmp_path_factory) -> Path:
    """A folder shared by every pytest-xdist worker of this run (this session's own folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


@pytest.fixture(scope="session")
def tiny_world(request, tmp_path_factory):
    """A small toy world and a tiny base model pretrained on it (about 25 s on 2 cores), built once per run: the
    first xdist worker to ask builds it, the others wait on the lock and read it."""
    from filelock import FileLock

    from cmt.toy.pretrain import pretrain
    from cmt.toy.world import write_world

    root = run_scratch(request.config, tmp_path_factory) / "tiny_world"
    report_path = root / "pretrain_report.json"
    with FileLock(f"{root}.lock"):
        if not report_path.is_file():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed part-way
            write_world(root / "data", ["sycophancy"], TINY_TOY)
            report = pretrain(
                str(root / "data" / "corpus.jsonl"),
                {"sycophancy": str(root / "data" / "sycophancy")},
                str(root / "model"),
                TINY_TOY,
            )
            report_path.write_text(json.dumps(report))
    report = json.loads(report_path.read_text())
    return {"root": root, "data": root / "data", "model": root / "model", "report": report}


@pytest.fixture(scope="session")
def model_and_prompts(tiny_world):
    """The tiny world's base model, its tokenizer and 48 sycophancy eval prompts."""
    from cmt.data.splits import load_split
    from cmt.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_world["model"])
    model = load_model(tiny_world["model"])
    prompts = [e.prompt for e in load_split(tiny_world["data"] / "sycophancy", "eval")][:48]
    return model, tokenizer, prompts


PLANTED_SECRETS = {
    "HF_TOKEN": "hf_cmtPlantedSecret0123456789abcdef",
    "CMT_JUDGE_API_KEY": "sk-cmt-planted-secret-9f8e7d6c5b4a",
    "OPENAI_API_KEY": "sk-cmt-planted-openai-0a1b2c3d4e5f",
}


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory):
    """The mini pipeline run end to end once per session; tests read its outputs."""
    workdir = tmp_path_factory.mktemp("mini_run")
    # Recognisable fake secrets in the places real ones live; tests grep every output for them.
    proc = run_snakemake(workdir, "--cores", "2", "all", env=PLANTED_SECRETS)
    return {"workdir": workdir, "proc": proc, "secrets": PLANTED_SECRETS}


@pytest.fixture
def copy_config(tmp_path):
    def inner(src: Path = REPO / "tests" / "configs" / "mini.yaml") -> Path:
        dst = tmp_path / "config.yaml"
        shutil.copy(src, dst)
        return dst

    return inner


@pytest.fixture(scope="session")
def warm_worker(tmp_path_factory):
    """A running cmt.runtime.worker server, as the Snakefile starts one for local runs: (process, socket path)."""
    from cmt.runtime import worker

    if refusal := worker.fork_refusal():
        pytest.skip(f"the warm worker forks no job here: {refusal} (tests/test_gpu.py checks that)")
    proc, path = worker.start(str(tmp_path_factory.mktemp("warm_worker")), "cmt.cli:main")
    wait_for_socket(proc, path)
    yield proc, path
    proc.terminate()
    proc.wait()


@pytest.fixture
def sandbox_launches(monkeypatch):
    """The number of programs each sandbox launcher was started with, in order."""
    from cmt.runtime import sandbox

    launches = []
    real_run = sandbox._run

    def counting(codes, *args):
        launches.append(len(codes))
        return real_run(codes, *args)

    monkeypatch.setattr(sandbox, "_run", counting)
    return launches
