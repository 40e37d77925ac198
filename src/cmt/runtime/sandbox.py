"""Run untrusted, model-written Python in a separate, limited process and return a verdict.

The reward-hacking organism executes the model's answer against tests, so that code is hostile by assumption.
Layers, each recorded in the verdict because some are unavailable on some machines (docs/sandbox.md):

- namespaces via util-linux `unshare`: network (no interface but a downed loopback), PID (the whole tree
  dies with its init), IPC, UTS, and mount (private tmpfs over every world-writable directory; the home
  directories and the project directory are hidden);
- as root: a fresh uid/gid per run, no supplementary groups, no capabilities and `no_new_privs`, so the code
  can write only to its own tmpfs, cannot signal or trace anything else, and RLIMIT_NPROC counts only its
  own processes;
- rlimits: CPU, address space, file size, processes, open files, no core dumps, no locked memory;
- seccomp: namespace, mount, tracing and similar syscalls are refused; once the interpreter has started,
  execve is refused too (no shell or other program can be started), and an audit hook says so on stderr;
- a wall-clock timeout, an environment built from an allow-list, `python -I -S`, and a throw-away directory.

The launcher, `python -I -S sandbox_launcher.py --launch CONFIG`, runs inside the namespaces as root, sets up
the mounts, forks the limited child and reports its fate on a status pipe
(cmt.runtime.sandbox_launcher, standard library only).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import marshal
import os
import random
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cmt.runtime import sandbox_launcher
from cmt.runtime.sandbox_launcher import _WRITABLE_DIRS, _ns

STATUSES = (
    "ok",
    "error",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "file_size_limit",
    "process_limit",
    "killed",
    "sandbox_error",
)
# which_limit: a resource limit (its own status), or a denial the program tripped over (status "error").
LIMITS = (
    "wall_time", "cpu_time", "memory", "file_size", "disk_space", "processes", "network", "permission", "exec",
)  # fmt: skip

# A fresh uid per run, far above login and subuid ranges: RLIMIT_NPROC is counted per uid, so a shared uid
# (such as nobody) would let concurrent sandboxes starve or kill each other.
_UID_BASE, _UID_SPAN = 2_000_000_000, 100_000_000
_ENV_ALLOW = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_UNSHARE_FLAGS = ["--net", "--pid", "--ipc", "--uts", "--mount-proc", "--fork", "--kill-child"]
# Programs per launcher in run_python_batch: each holds two pipes open in the caller until the batch ends.
BATCH_SIZE = 32
# Grace on top of timeout_s for namespace setup and teardown before the parent's own backstop fires.
_BACKSTOP_S = 10.0
# The longest timeout_s and cpu_s: a day (the interval timer overflows somewhere above 1e9 s).
MAX_SECONDS = 86_400.0
# Parsed from the tail of stderr: the last match names the limit that broke the program.
_STDERR_LIMITS = [
    ("memory", re.compile(rb"MemoryError|Cannot allocate memory|std::bad_alloc")),
    ("file_size", re.compile(rb"\[Errno 27\]|File too large")),
    ("disk_space", re.compile(rb"\[Errno 28\]|No space left on device|Disk quota exceeded")),
    (
        "processes",
        re.compile(rb"\[Errno 11\] Resource temporarily unavailable|can't start new thread|fork: "),
    ),
    # 101: no route (IPv4 loopback is down); 99: no address to bind (IPv6 ::1); -3: no DNS.
    (
        "network",
        re.compile(
            rb"\[Errno 101\]|Network is unreachable|\[Errno 99\]|Cannot assign requested address"
            rb"|\[Errno -3\]|name resolution"
        ),
    ),
    ("permission", re.compile(rb"\[Errno 13\]|\[Errno 1\] Operation not permitted|\[Errno 30\]")),
    ("exec", re.compile(rb"sandbox: exec denied")),  # written by _BOOT's audit hook
]
_LIMIT_STATUS = {
    "wall_time": "timeout",
    "cpu_time": "cpu_limit",
    "memory": "memory_limit",
    "file_size": "file_size_limit",
    "disk_space": "file_size_limit",
    "processes": "process_limit",
    "network": "error",
    "permission": "error",
    "exec": "error",
}


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str
    exit_code: int | None
    signal: str | None
    which_limit: str | None
    wall_s: float
    cpu_s: float | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_bytes: int
    stderr_bytes: int
    network_isolated: bool
    pid_isolated: bool
    private_fs: bool
    privileges_dropped: bool
    seccomp: bool
    uid: int | None
    limits: dict
    message: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def run_file(path: str | os.PathLike, **kwargs) -> Verdict:
    """run_python on a file's text; FileNotFoundError (IsADirectoryError, ...) names the file it cannot read."""
    return run_python(Path(path).read_text(), **kwargs)


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    cpu_s: float | None = None,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    max_procs: int = 32,
    stdin: str | bytes | None = None,
    max_output_bytes: int = 16384,
    max_open_files: int = 64,
) -> Verdict:
    """Execute `code` as a script under `python -I -S` in the sandbox; never raises for the code's faults.

    cpu_s defaults to timeout_s. Writable space inside (its /tmp, which holds the working directory) is a
    tmpfs of 2 * max_file_mb + 16 MiB where mount namespaces work. A timeout_s or cpu_s that is not a positive
    finite number of seconds up to MAX_SECONDS raises ValueError (the caller's fault, not the code's).
    """
    limits = _limits(timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, max_file_mb=max_file_mb,
                     max_procs=max_procs, max_open_files=max_open_files)  # fmt: skip
    return _run_batch([code], stdin, limits, max_output_bytes)[0]


def run_python_batch(codes: Sequence[str], **options) -> list[Verdict]:
    """`run_python` on each program, with the same keyword options (its limits, stdin and max_output_bytes) for
    all of them; the verdicts in order.

    With namespaces and private mounts (root; `mechanisms()`), up to BATCH_SIZE programs share one launcher
    and its namespaces, which saves a launcher's start (about half of a short run's 27 ms). Each program still
    gets a fresh interpreter, uid, IPC namespace, tmpfs mounts, limits and seccomp filter, and whatever
    processes it left are killed before the next one starts (docs/sandbox.md). Elsewhere each runs alone.
    A verdict's wall_s is then the program's own, from fork to the last of its processes killed.
    """
    defaults = run_python.__kwdefaults__  # one signature for both
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"run_python_batch() got unexpected keyword arguments {unknown}")
    options = {**defaults, **options}
    stdin, cap = options.pop("stdin"), options.pop("max_output_bytes")
    limits = _limits(**options)
    mech = mechanisms()
    size = BATCH_SIZE if mech["namespaces"] and mech["mounts"] else 1
    verdicts = []
    for first in range(0, len(codes), size):
        verdicts += _run_batch(list(codes[first : first + size]), stdin, limits, cap)
    return verdicts


def _limits(*, timeout_s, cpu_s, memory_mb, max_file_mb, max_procs, max_open_files) -> dict:
    for name, value in (("timeout_s", timeout_s), ("cpu_s", cpu_s)):
        if value is not None and not (isinstance(value, int | float) and 0 < value <= MAX_SECONDS):
            raise ValueError(
                f"{name} must be a positive number of seconds up to {MAX_SECONDS:g}, got {value!r}"
            )
    return {
        "timeout_s": float(timeout_s),
        "cpu_s": float(cpu_s if cpu_s is not None else timeout_s),
        "memory_mb": int(memory_mb),
        "max_file_mb": int(max_file_mb),
        "max_procs": int(max_procs),
        "max_open_files": int(max_open_files),
        "tmp_mb": 2 * int(max_file_mb) + 16,
    }


def _run_batch(codes: list[str], stdin, limits: dict, cap: int) -> list[Verdict]:
    start = time.monotonic()
    host_dir = Path(tempfile.mkdtemp(prefix="cmt-sandbox-"))
    try:
        return _run(codes, stdin, limits, cap, host_dir, start)
    except Exception as err:  # the sandbox itself failed, not the code
        return [_verdict_error(f"{type(err).__name__}: {err}", limits, time.monotonic() - start)] * len(codes)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def mechanisms() -> dict:
    """What this machine allows, probed once: namespaces via unshare, and dropping to a fresh uid."""
    global _MECHANISMS
    if _MECHANISMS is None:
        root = os.geteuid() == 0
        unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
        flags = None
        if unshare:
            # As root the namespaces need no user namespace; otherwise one maps the caller to itself.
            for candidate in ([[]] if root else []) + [["--map-current-user"]]:
                probe = [unshare, *candidate, *_UNSHARE_FLAGS, "/bin/true"]
                if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                    flags = candidate + _UNSHARE_FLAGS
                    break
        _MECHANISMS = {
            "unshare": unshare,
            "unshare_flags": flags,
            "namespaces": flags is not None,
            "mounts": flags is not None and root,
            "drop_privileges": root,
        }
    return _MECHANISMS


_MECHANISMS: dict | None = None


def _run(codes: list[str], stdin, limits: dict, cap: int, host_dir: Path, start: float) -> list[Verdict]:
    mech = mechanisms()
    # The interpreter behind the venv: under -S the venv would add nothing, and the code gets the stdlib only.
    exe = os.path.realpath(sys._base_executable)
    uids = _fresh_uids(len(codes)) if mech["drop_privileges"] else [None] * len(codes)
    scripts = ["main.py"] + [f"main_{i}.py" for i in range(1, len(codes))]
    for script, code in zip(scripts, codes, strict=True):
        (host_dir / script).write_text(code)
    (host_dir / "stdin").write_bytes(stdin.encode() if isinstance(stdin, str) else (stdin or b""))
    if not mech["mounts"]:
        # No private tmpfs: the working directory is a plain directory the sandbox uid owns.
        work = host_dir / "work"
        work.mkdir()
        if uids[0] is not None:
            os.chmod(host_dir, 0o711)
            os.chmod(host_dir / "main.py", 0o444)
            os.chown(work, uids[0], uids[0])
            exe = _reachable_interpreter(exe)
    pipes = [(os.pipe(), os.pipe()) for _ in codes]  # each program's stdout and stderr
    config = {
        "programs": [
            {"uid": uid, "script": script, "out_fd": out[1], "err_fd": err[1]}
            for uid, script, (out, err) in zip(uids, scripts, pipes, strict=True)
        ],
        "stdin": "stdin",
        "exe": exe,
        "prefix": os.path.realpath(sys.base_prefix),
        "mounts": mech["mounts"],
        "hide": _hidden_dirs(exe),
        "limits": limits,
        # RLIMIT_NPROC counts every process of the real uid, user namespaces or not: without a fresh uid the
        # caller's own processes count too, so the budget starts from how many it has now.
        "host_nproc": None if uids[0] is not None else _proc_uids().count(os.getuid()),
        "env": dict(_ENV_ALLOW),
        "status_fd": None,
    }
    status_r, status_w = os.pipe()
    config["status_fd"] = status_w
    launcher = [
        exe,
        "-I",
        "-S",
        str(Path(sandbox_launcher.__file__).resolve()),
        "--launch",
        marshal.dumps(config).hex(),  # marshal is built in: the launcher imports no json
    ]
    argv = ([mech["unshare"], *mech["unshare_flags"]] if mech["namespaces"] else []) + launcher
    write_ends = [fd for out, err in pipes for fd in (out[1], err[1])]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=host_dir,
            env=dict(_ENV_ALLOW),
            pass_fds=(status_w, *write_ends),
            start_new_session=True,  # the backstop kills the whole group
        )
    finally:
        for fd in (status_w, *write_ends):
            os.close(fd)
    outs, errs = [_Capture(cap) for _ in codes], [_Capture(cap) for _ in codes]
    own_out, own_err = _Capture(4096), _Capture(4096)  # the launcher's own (a crash's traceback)
    streams = {proc.stdout.fileno(): own_out, proc.stderr.fileno(): own_err}
    for (out, err), out_cap, err_cap in zip(pipes, outs, errs, strict=True):
        streams[out[0]], streams[err[0]] = out_cap, err_cap
    status_buf = bytearray()
    deadline = start + len(codes) * limits["timeout_s"] + _BACKSTOP_S
    try:
        backstop = _pump(proc, streams, status_r, status_buf, deadline)
    finally:
        for fd in (status_r, *(fd for out, err in pipes for fd in (out[0], err[0]))):
            os.close(fd)
    if not mech["namespaces"]:
        # Without a PID namespace: whatever stayed in the launcher's group, and every process of the uid.
        _killpg(proc.pid)
        if uids[0] is not None:
            _kill_uid(uids[0], exe)
    if uids[0] is not None and not mech["mounts"]:
        _sweep_files(uids[0])
    wall = round(time.monotonic() - start, 3)
    reports: list[dict] = [{} for _ in codes]
    launcher_error = None
    for line in status_buf.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError, SyntaxError):  # a line cut short by a kill
            fields = ast.literal_eval(line)
            if not isinstance(fields, dict):
                continue
            if isinstance(fields.get("i"), int) and 0 <= fields["i"] < len(codes):
                reports[fields["i"]].update(fields)
            elif "error" in fields:
                launcher_error = fields["error"]
    own_stderr = own_err.tail[-500:].decode(errors="replace") if own_err.total else ""
    verdicts = []
    for i, report in enumerate(reports):
        finished = "exit_code" in report
        if not finished and backstop and all("exit_code" in r for r in reports[:i]):
            report = report | {"timed_out": True, "exit_code": None}  # it was running when the backstop fired
        elif not finished:
            report = report | {
                "error": launcher_error or f"launcher exited with {proc.returncode} and no status"
            }
        verdicts.append(
            _verdict(
                report,
                outs[i],
                errs[i],
                own_stderr,
                limits,
                uids[i],
                report.get("wall_s", wall) if len(codes) > 1 else wall,
            )
        )
    return verdicts


def _verdict(
    report: dict, out: _Capture, err: _Capture, own_stderr: str, limits: dict, uid, wall: float
) -> Verdict:
    common = {
        "wall_s": wall,
        "stdout": out.text(),
        "stderr": err.text(),
        "stdout_truncated": out.truncated,
        "stderr_truncated": err.truncated,
        "stdout_bytes": out.total,
        "stderr_bytes": err.total,
        "network_isolated": bool(report.get("net_ns")) and report.get("net_ns") != _ns("net"),
        "pid_isolated": report.get("pid") == 1,
        "private_fs": bool(report.get("mounted")),
        "privileges_dropped": uid is not None and report.get("uid") == uid,
        "seccomp": bool(report.get("seccomp")),
        "uid": report.get("uid"),
        "limits": limits,
    }
    if "error" in report:
        stderr = " ".join(
            s for s in (own_stderr, err.tail[-500:].decode(errors="replace") if err.total else "") if s
        )
        message = report["error"] + (f"; stderr: {stderr}" if stderr else "")
        return Verdict("sandbox_error", None, None, None, cpu_s=None, message=message, **common)
    sig = report.get("signal")
    status, which = _classify(report, err.tail, limits)
    return Verdict(
        status,
        report.get("exit_code"),
        signal.Signals(sig).name if sig else None,
        which,
        cpu_s=report.get("cpu_s"),
        **common,
    )


def _classify(report: dict, stderr_tail: bytes, limits: dict) -> tuple[str, str | None]:
    sig, code = report.get("signal"), report.get("exit_code")
    cpu = report.get("cpu_s") or 0.0
    if report.get("timed_out"):
        return "timeout", "wall_time"
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits["cpu_s"] - 0.05):
        return "cpu_limit", "cpu_time"
    if sig == signal.SIGXFSZ:
        return "file_size_limit", "file_size"
    # Python turns a refused allocation, write, fork or exec into an exception; its traceback ends stderr.
    found = [(m.end(), name) for name, rx in _STDERR_LIMITS for m in rx.finditer(stderr_tail)]
    which = max(found)[1] if found else None
    if code == 0 and not sig:
        # The program succeeded, but a child process or a caught exception may still have hit a limit.
        return "ok", which
    if which:
        return _LIMIT_STATUS[which], which
    return ("killed" if sig else "error"), None


def _verdict_error(message: str, limits: dict, wall: float) -> Verdict:
    return Verdict("sandbox_error", None, None, None, round(wall, 3), None, "", "", False, False, 0, 0,
                   False, False, False, False, False, None, limits, message)  # fmt: skip


class _Capture:
    """Keeps the head and the tail of a stream (tracebacks and result lines come last), counts the rest."""

    def __init__(self, cap: int):
        self.cap, self.head, self.tail, self.total = cap, bytearray(), b"", 0
        self.tail_cap = max(cap // 4, 4096)

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
        self.tail = (self.tail + chunk)[-self.tail_cap :]

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def text(self) -> str:
        if not self.truncated:
            return self.head.decode(errors="replace")
        keep_tail = min(self.cap // 4, len(self.tail))
        head = self.head[: self.cap - keep_tail].decode(errors="replace")
        tail = self.tail[len(self.tail) - keep_tail :].decode(errors="replace") if keep_tail else ""
        return f"{head}\n[... {self.total - self.cap} bytes truncated ...]\n{tail}"


def _pump(proc, streams: dict, status_r: int, status_buf: bytearray, deadline: float) -> bool:
    """Drain output and status until the launcher is gone; True when the parent's backstop had to kill."""
    sel = selectors.DefaultSelector()
    for fd in [*streams, status_r]:
        sel.register(fd, selectors.EVENT_READ)
    exited_at = None
    killed = False
    while sel.get_map():
        now = time.monotonic()
        if proc.poll() is not None:
            exited_at = exited_at or now
            if now - exited_at > 1.0:  # a leftover holds a pipe open; stop reading
                break
        if now > deadline and not killed:
            _killpg(proc.pid)
            killed = True
            deadline = now + 2.0
        elif killed and now > deadline:
            break
        for key, _ in sel.select(timeout=0.1):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
            elif key.fd == status_r:
                status_buf += chunk
            else:
                streams[key.fd].feed(chunk)
    sel.close()
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid)
        proc.wait()
    return killed


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_uid(uid: int, exe: str) -> None:
    # kill(-1) as the sandbox uid reaches every process of that uid and nothing else; kill(-1) is atomic
    # with respect to fork, so a fork bomb cannot outrun it.
    code = "import os, signal\nfor _ in range(3):\n    try: os.kill(-1, signal.SIGKILL)\n    except OSError: pass"
    subprocess.run([exe, "-I", "-S", "-c", code], user=uid, group=uid, extra_groups=[],
                   env=dict(_ENV_ALLOW), cwd="/", check=False, timeout=30)  # fmt: skip


def _sweep_files(uid: int) -> None:
    """Without a private tmpfs the code could write to the host's world-writable directories; nobody else
    owns files under its fresh uid, so remove them all."""
    for top in _WRITABLE_DIRS:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                try:
                    if os.lstat(path).st_uid != uid:
                        continue
                    if name in dirnames and not os.path.islink(path):
                        dirnames.remove(name)
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                except OSError:
                    pass


def _fresh_uids(n: int) -> list[int]:
    busy, uids = set(_proc_uids()), []
    while len(uids) < n:
        uid = _UID_BASE + random.randrange(_UID_SPAN)
        if uid not in busy:
            busy.add(uid)
            uids.append(uid)
    return uids


def _proc_uids() -> list[int]:
    """The owner of every running process, one entry per process."""
    uids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                uids.append(os.stat(entry.path).st_uid)
    return uids


def _hidden_dirs(exe: str) -> list[str]:
    """Home directories and the directory the pipeline runs in (configs, .env files, results)."""
    hide = ["/root", "/home"]
    cwd = os.path.realpath(os.getcwd())
    system = ("/", "/usr", "/bin", "/lib", "/etc", "/tmp", "/var", "/proc", "/sys", "/dev", "/opt")
    if (
        cwd not in system
        and not cwd.startswith(("/tmp/", "/usr/", "/proc/", "/sys/", "/dev/"))
        and not (exe + "/").startswith(cwd + "/")
        and not any(cwd.startswith(h + "/") for h in hide)
    ):
        hide.append(cwd)
    return [d for d in hide if os.path.isdir(d)]


def _reachable_interpreter(exe: str) -> str:
    """Without mounts to re-expose it, an interpreter under a private directory (pyenv in /root) is out of
    an unprivileged uid's reach; fall back to the system python3."""
    path = Path(exe)
    if all(p.stat().st_mode & stat.S_IXOTH for p in path.parents) and path.stat().st_mode & stat.S_IXOTH:
        return exe
    return shutil.which("python3", path="/usr/bin:/bin") or exe
