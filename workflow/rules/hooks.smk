# Hooks around a real run (dry runs and the jobs Snakemake spawns on a cluster skip them): refuse a GPU grid on a
# machine without one, keep the scheduler's re-evaluation timers from multiplying, and start and stop the warm
# worker.
import os
import shutil


def gpu_models():
    return [m for m, spec in config["models"].items() if spec["gpus"] > 0]


def local_machine_has_gpu():
    import torch

    return torch.cuda.is_available()


# Local runs: a warm worker imports torch, transformers and peft once and forks each job (cmt.runtime.worker),
# saving about 4 s per job. Cluster runs and dry runs never start one.
def start_warm_worker():
    import tempfile
    from cmt.runtime import worker

    # A short path under /tmp: Unix socket paths are limited to 107 bytes.
    proc, path = worker.start(
        tempfile.mkdtemp(prefix="cmt-worker-"), "cmt.cli:main", preload=PRELOAD
    )
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
    # Snakemake starts one more 1-Hz scheduling chain per finished job (cmt.runtime.scheduler_timer).
    from cmt.runtime import scheduler_timer

    scheduler_timer.install()
    if config["warm_worker"] and workflow.executor_plugin.name == "local":
        WARM_WORKER.append(start_warm_worker())


onsuccess:
    stop_warm_worker()


onerror:
    stop_warm_worker()
