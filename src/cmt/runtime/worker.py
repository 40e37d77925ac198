"""A warm worker for local runs: jobs skip the ~4 s import of torch, transformers and peft.

`snakemake --cores N` on one machine starts one server (the Snakefile's onstart, config key `warm_worker`). The
server imports the heavy libraries once, then forks a fresh process for every `cmt` command that connects to it.
The `cmt` client sends its arguments, working directory, environment and standard streams (the file descriptors
themselves, so output goes exactly where a direct run's would), forwards signals to the job process, and exits
with its status (re-raising the same signal if it was killed by one). Snakemake sees an ordinary process.

The client runs the command itself, as if no server existed, whenever delegating could change behaviour:
`CMT_WORKER` unset or stale, a Slurm job (its allocation must hold the work), another Python environment (conda
rules), an environment variable read at import time that differs from the server's, or a machine with a CUDA GPU:
CUDA does not survive fork(), and a job forked there could not use the GPU (bitsandbytes, imported by peft, even
initializes CUDA in the server).

Processes: server -> supervisor (one per job; waits on the job and watches the client) -> job. If the client
dies (SIGKILL), the supervisor kills the job, so nothing outlives the command that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time

ENV_VAR = "CMT_WORKER"
# Variables that libraries read once, at import: a job whose values differ from the server's runs itself.
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "CUDA_", "OMP_", "MKL_",
                        "KMP_", "PYTHON", "TOKENIZERS_", "NUMEXPR_", "OPENBLAS_")  # fmt: skip
# Imported after the entry point's module, which sets variables that these libraries read at import.
# scipy.stats (0.5 s) is imported by the shift and diagnose jobs.
PRELOAD = ("torch", "transformers", "peft", "pandas", "pyarrow.parquet", "scipy.stats", "cmt.models.loading",
           "cmt.models.training", "cmt.generation.hf", "cmt.phases.label", "cmt.phases.evaluate", "cmt.phases.retrain",
           "cmt.phases.shift", "cmt.phases.diagnose")  # fmt: skip
# Run after the preloads: takes a model load, a training step and a decode once, so that no forked job pays their
# one-off costs (~0.1 s a job). Named as a string, as the preloads are: this layer imports nothing above it.
WARM_UP = "cmt.generation.warmup:warm_up"
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
_HEADER = struct.Struct("!I")
_ENTRY = ""  # the server's entry point, "module:function", which its forked jobs run
FORKED_JOB = False  # true in a job the warm worker forked (the job log's header says so)


# Snakemake sets these to each job's thread count. They are not compared: the job applies its own to torch
# (cmt's --threads does the same). NumPy's BLAS keeps the worker's thread count, which changes speed only.
THREAD_COUNT_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")  # fmt: skip


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) and k not in THREAD_COUNT_VARS}


def identity() -> dict:
    """What must match between the server and a client for a forked job to behave like a direct run."""
    return {"prefix": sys.prefix, "version": sys.version, "env": import_time_env(dict(os.environ))}


def _send_msg(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("worker connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv_msg(sock: socket.socket) -> dict:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return json.loads(_recv_exact(sock, size))


# ---------------------------------------------------------------- client


def delegate(argv: list[str]) -> int | None:
    """Run `cmt argv` in the warm worker and return its exit status, or None to run it in this process."""
    path = os.environ.get(ENV_VAR)
    if not path or "SLURM_JOB_ID" in os.environ:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        socket.send_fds(sock, [b"cmt"], [0, 1, 2])
        _send_msg(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "identity": identity()})
        reply = _recv_msg(sock)
    except (OSError, ConnectionError, ValueError):
        sock.close()
        return None
    if "refused" in reply:
        if os.environ.get("CMT_WORKER_DEBUG"):
            print(f"cmt: warm worker not used: {reply['refused']}", file=sys.stderr)
        sock.close()
        return None
    job_pid = reply["pid"]

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(job_pid, signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        status = _recv_msg(sock)
    except (OSError, ConnectionError, ValueError):
        status = {"signal": None, "code": 1}  # the supervisor vanished: fail the job
        print("cmt: the warm worker closed the connection before the job ended", file=sys.stderr)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    if status.get("signal"):
        signum = status["signal"]
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # die the way the job did, so Snakemake reports the same
        time.sleep(1)
        return 128 + signum
    return int(status["code"])


# ---------------------------------------------------------------- server


def _run_job(conn: socket.socket, fds: list[int], request: dict) -> None:
    """Supervisor process: fork the job, report its pid and final status, and kill it if the client dies."""
    job_pid = os.fork()
    if job_pid == 0:  # the job
        global FORKED_JOB
        FORKED_JOB = True
        code = 1
        try:
            conn.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            threads = os.environ.get("OMP_NUM_THREADS", "")
            if threads.isdigit() and int(threads) > 0:  # what torch would have read at start-up
                import torch

                torch.set_num_threads(int(threads))
            sys.argv = ["cmt", *request["argv"]]
            code = resolve_entry(_ENTRY)(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)  # as the interpreter prints it in a direct run
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    _send_msg(conn, {"pid": job_pid})
    pidfd = os.pidfd_open(job_pid)
    while True:
        ready, _, _ = select.select([pidfd, conn], [], [])
        if pidfd in ready:
            break
        if not conn.recv(1):  # EOF: the client is gone (SIGKILL), so the job must not outlive it
            os.kill(job_pid, signal.SIGKILL)
            break
    _, status = os.waitpid(job_pid, 0)
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    with contextlib.suppress(OSError):
        _send_msg(conn, {"signal": sig, "code": os.WEXITSTATUS(status) if sig is None else 128 + sig})


def fork_refusal() -> str | None:
    """Why no job may be forked from this process, or None. CUDA does not survive fork(): a child of a process
    that initialized CUDA (or merely asked the driver for its devices, as this check does) fails at its first
    CUDA call. So wherever a GPU is visible, no job is forked."""
    import torch

    if torch.cuda.is_available():
        return "this machine has a CUDA GPU, and CUDA does not survive fork(); GPU jobs run themselves"
    return None


def identity_differences(own: dict, theirs: dict, set_by_imports: dict[str, str]) -> list[str]:
    """The identity keys and import-time variables in which a client differs from the worker. A variable the
    worker's own imports set (torch sets TORCHINDUCTOR_CACHE_DIR when unset) matches a client that has the value
    those imports gave it, as a client that imported the same libraries earlier does."""
    differs = sorted(k for k in (own.keys() | theirs.keys()) - {"env"} if own.get(k) != theirs.get(k))
    own_env, their_env = own["env"], theirs.get("env", {})
    for key in sorted(own_env.keys() | their_env.keys()):
        value = their_env.get(key)
        if value != own_env.get(key) and not (key in set_by_imports and value == set_by_imports[key]):
            differs.append(f"env {key}")
    return differs


def _handle(
    conn: socket.socket, own_identity: dict, set_by_imports: dict[str, str], refusal: str | None = None
) -> None:
    """In the supervisor: read the request, refuse a mismatched client (or every client, with `refusal`),
    otherwise run the job."""
    for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    os.setsid()  # the server's terminal signals must not reach jobs; the client forwards its own
    _, fds, _, _ = socket.recv_fds(conn, 16, 3)
    request = _recv_msg(conn)
    differs = identity_differences(own_identity, request.get("identity", {}), set_by_imports)
    if len(fds) != 3 or differs or refusal:
        for fd in fds:
            os.close(fd)
        _send_msg(conn, {"refused": refusal or f"differs from the warm worker: {differs}"})
        return
    _run_job(conn, fds, request)


def resolve_entry(entry: str):
    """ "package.module:function" -> the function (the command a forked job runs with its argv)."""
    import importlib

    module, _, name = entry.partition(":")
    if not module or not name:
        raise ValueError(f"worker entry point {entry!r} is not of the form 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def serve(path: str, entry: str, parent_pid: int | None = None, idle_seconds: float = 3600.0) -> None:
    """Preload, listen on `path`, fork a supervisor per connection that runs `entry` ("module:function", called
    with the client's argv); stop when the parent exits or when idle, removing `path` and its folder if empty."""
    import gc
    import importlib

    global _ENTRY
    own_identity = identity()  # before the imports, some of which set variables
    resolve_entry(entry)  # the entry's module first (see PRELOAD)
    _ENTRY = entry
    refusal = fork_refusal()  # on a GPU machine: preload nothing more, refuse every job
    for name in PRELOAD if refusal is None else ():
        importlib.import_module(name)
    if refusal is None:
        try:
            resolve_entry(WARM_UP)()
        except Exception as exc:  # jobs still run, only without the head start
            print(
                f"cmt worker: warm-up failed, jobs pay its one-off costs themselves: {exc!r}", file=sys.stderr
            )
    after = import_time_env(dict(os.environ))
    set_by_imports = {k: v for k, v in after.items() if own_identity["env"].get(k) != v}
    gc.collect()
    gc.freeze()  # keep the preloaded objects' pages shared with every forked job
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped automatically
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}.tmp"
    server.bind(tmp)
    server.listen(64)
    os.replace(tmp, path)  # clients see the socket only once it accepts
    server.settimeout(1.0)
    last = time.monotonic()
    try:
        while True:
            if parent_pid is not None and os.getppid() != parent_pid:
                return  # Snakemake exited (or was killed): so does the worker
            if time.monotonic() - last > idle_seconds:
                return
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            last = time.monotonic()
            if os.fork() == 0:
                try:
                    server.close()
                    conn.settimeout(None)
                    _handle(conn, own_identity, set_by_imports, refusal)
                finally:
                    os._exit(0)
            conn.close()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # The folder is the worker's (start()): a killed Snakemake never runs its own clean-up.
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))


def start(directory: str, entry: str, preload: str | None = None) -> tuple[object, str]:
    """Start a server for this process (Snakemake) in the background, running jobs with `entry`
    ("module:function"); returns (Popen, socket path). `directory`: a new empty folder, which the server removes
    when it stops. `preload`: a library the server (and so every job it forks) starts with, as the jobs' shells
    preload it (cmt.runtime.allocator)."""
    import subprocess

    from cmt.runtime.allocator import with_preload

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # as every job's shell sets it
    if preload:
        env["LD_PRELOAD"] = with_preload(env.get("LD_PRELOAD"), preload)
    path = os.path.join(directory, "worker.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmt.runtime.worker", path, str(os.getpid()), entry],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("CMT_WORKER_DEBUG") else subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C goes to Snakemake, which stops the jobs; the server follows its parent
        env=env,
    )
    return proc, path


if __name__ == "__main__":
    from cmt.runtime import worker  # the importable module, not __main__: jobs read its FORKED_JOB

    worker.serve(sys.argv[1], entry=sys.argv[3], parent_pid=int(sys.argv[2]))
