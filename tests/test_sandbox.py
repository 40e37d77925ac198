"""Adversarial tests for the code sandbox (issues 3 and 7): each hostile program is stopped or denied, and
the verdict names the limit it hit. Mechanism-dependent assertions follow what `mechanisms()` found; on
the reference machine (root, namespaces allowed) every layer is active and asserted."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cmt.sandbox import STATUSES, mechanisms, run_file, run_python

MECH = mechanisms()
ROOT = os.geteuid() == 0
SECRET = "cmt-test-secret-7f3a9c1e"
CMT = Path(sys.executable).parent / "cmt"

needs_netns = pytest.mark.skipif(not MECH["namespaces"], reason="no network namespace here (docs/sandbox.md)")
needs_root = pytest.mark.skipif(not ROOT, reason="privilege drop needs root")


@pytest.fixture(autouse=True)
def planted_secret(monkeypatch):
    monkeypatch.setenv("CMT_JUDGE_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)


def _leftovers(uid: int | None) -> list[str]:
    if uid is None:
        return []
    procs = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}").st_uid == uid:
                    procs.append(p)
            except OSError:
                pass
    return procs


def _check_common(v, status: str, which: str | None) -> None:
    assert v.status in STATUSES
    assert (v.status, v.which_limit) == (status, which), v.to_json()
    assert _leftovers(v.uid) == [], "a sandboxed process outlived its run"
    json.loads(v.to_json())


def test_normal_program_passes():
    v = run_python("import sys\nprint('hello', sys.stdin.read())", timeout_s=5, stdin="from stdin")
    _check_common(v, "ok", None)
    assert v.exit_code == 0 and v.stdout == "hello from stdin\n" and v.stderr == ""
    assert not v.stdout_truncated and v.wall_s < 5
    if ROOT:
        assert v.privileges_dropped and v.uid != 0
    assert v.network_isolated == MECH["namespaces"]


def test_raising_program_is_an_error_with_its_traceback():
    v = run_python("raise ValueError('boom')", timeout_s=5)
    _check_common(v, "error", None)
    assert v.exit_code == 1 and "ValueError: boom" in v.stderr


def test_stdout_is_truncated_keeping_head_and_tail():
    v = run_python("print('x' * 200_000)\nprint('END')", timeout_s=5, max_output_bytes=2000)
    _check_common(v, "ok", None)
    assert v.stdout_truncated and v.stdout_bytes == 200_005
    assert len(v.stdout) < 2100 and v.stdout.startswith("xxx") and v.stdout.rstrip().endswith("END")


def test_infinite_loop_hits_the_cpu_limit():
    v = run_python("while True: pass", timeout_s=5, cpu_s=1)
    _check_common(v, "cpu_limit", "cpu_time")
    assert v.signal == "SIGXCPU" and v.wall_s < 4


def test_infinite_loop_ignoring_sigxcpu_is_still_killed():
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass"
    v = run_python(code, timeout_s=6, cpu_s=1)
    _check_common(v, "cpu_limit", "cpu_time")
    assert v.signal == "SIGKILL" and v.wall_s < 5


def test_sleeping_loop_hits_the_wall_clock_timeout():
    v = run_python("import time\nprint('started', flush=True)\nwhile True: time.sleep(0.1)", timeout_s=1)
    _check_common(v, "timeout", "wall_time")
    assert 1 <= v.wall_s < 4 and v.stdout == "started\n"  # output before the kill is kept


def test_fork_bomb_is_contained():
    t0 = time.monotonic()
    v = run_python("import os\nwhile True: os.fork()", timeout_s=5, max_procs=16)
    _check_common(v, "process_limit", "processes")
    assert "BlockingIOError" in v.stderr
    assert time.monotonic() - t0 < 5
    assert subprocess.run(["true"]).returncode == 0  # the machine can still fork


def test_fork_bomb_that_swallows_errors_is_killed_at_the_deadline():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    t0 = time.monotonic()
    v = run_python(code, timeout_s=2, max_procs=16)
    _check_common(v, "timeout", "wall_time")
    assert time.monotonic() - t0 < 6


def test_escaped_grandchild_is_killed():
    # setsid and a double fork leave the process group; the PID namespace (or the subreaper) still kills it.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n"
        "print('parent done')"
    )
    v = run_python(code, timeout_s=5)
    _check_common(v, "ok", None)
    assert v.wall_s < 3


def test_allocating_10_gib_hits_the_memory_limit():
    v = run_python("x = bytearray(10 * 2**30)", timeout_s=5, memory_mb=256)
    _check_common(v, "memory_limit", "memory")
    assert "MemoryError" in v.stderr


def test_gradual_memory_hog_hits_the_memory_limit():
    v = run_python("x = []\nwhile True: x.append(b'a' * 2**20)", timeout_s=5, memory_mb=256)
    _check_common(v, "memory_limit", "memory")


def test_writing_1_gib_hits_the_file_size_limit():
    code = "with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'a' * 2**20)"
    v = run_python(code, timeout_s=5, max_file_mb=16)
    _check_common(v, "file_size_limit", "file_size")
    assert "[Errno 27]" in v.stderr


@pytest.mark.skipif(not MECH["mounts"], reason="no private tmpfs here")
def test_many_files_fill_only_the_private_tmpfs():
    code = "for i in range(10):\n    open(f'f{i}', 'wb').write(b'a' * 15 * 2**20)"
    v = run_python(code, timeout_s=5, max_file_mb=16)
    _check_common(v, "file_size_limit", "disk_space")
    assert v.private_fs


@pytest.fixture
def root_owned_dir():
    """A root-owned directory the sandbox can see (not under /tmp, which it gets privately)."""
    path = Path(tempfile.mkdtemp(prefix="cmt-sandbox-test-", dir="/var/lib" if ROOT else None))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_writing_outside_its_directory_is_denied(root_owned_dir):
    tag = f"cmt-escape-{os.getpid()}"
    targets = [f"/etc/{tag}", f"/root/{tag}", f"{root_owned_dir}/{tag}", f"/usr/lib/{tag}", f"/tmp/{tag}"]
    code = (
        "import json\nresult = {}\n"
        f"for path in {targets!r}:\n"
        "    try:\n        open(path, 'w').write('x')\n        result[path] = 'written'\n"
        "    except OSError as err:\n        result[path] = type(err).__name__\n"
        "print(json.dumps(result))\nopen('/etc/' + 'x', 'w')"
    )
    v = run_python(code, timeout_s=5)
    _check_common(v, "error", "permission")
    result = json.loads(v.stdout)
    if ROOT:
        for path in targets[:4]:
            assert result[path] == "PermissionError", result
    for path in targets:
        if path != f"/tmp/{tag}" or MECH["mounts"]:
            assert not os.path.exists(path), f"{path} was written on the host"
    # /tmp inside is a private tmpfs (or, without one, the uid's files are swept after the run).
    if ROOT:
        assert not os.path.exists(f"/tmp/{tag}")


def test_environment_holds_no_secret(tmp_path):
    assert os.environ["CMT_JUDGE_API_KEY"] == SECRET
    secret_file = tmp_path / "secret.env"
    secret_file.write_text(f"KEY={SECRET}\n")
    secret_file.chmod(0o644)
    code = (
        "import os, glob, sys\n"
        "print(dict(os.environ))\n"
        "print(open('/proc/self/environ', 'rb').read())\n"
        "for p in glob.glob('/proc/[0-9]*/environ') + [f'/proc/{os.getppid()}/environ', "
        f"'/proc/{os.getpid()}/environ', {str(secret_file)!r}]:\n"
        "    try:\n        print(p, open(p, 'rb').read())\n"
        "    except OSError as err:\n        print(p, type(err).__name__, file=sys.stderr)\n"
    )
    v = run_python(code, timeout_s=5)
    _check_common(v, "ok", None)
    assert SECRET not in v.stdout and SECRET not in v.stderr
    assert "CMT_JUDGE_API_KEY" not in v.stdout and "HF_TOKEN" not in v.stdout
    assert "PATH" in v.stdout  # the allow-listed environment did arrive


@needs_netns
def test_socket_to_a_local_listener_is_unreachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        v = run_python(code, timeout_s=5)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
    _check_common(v, "error", "network")
    assert v.network_isolated and "connected" not in v.stdout
    assert "Network is unreachable" in v.stderr


def test_spawning_a_shell_runs_unprivileged_and_is_counted():
    # Decision: a shell is allowed. exec is not a privilege boundary (the Python code can already do what
    # a shell can); the boundary is the uid, the namespaces and the rlimits, which the shell inherits.
    code = (
        "import subprocess\n"
        "r = subprocess.run(['/bin/sh', '-c', 'echo hi; id -u; echo $CMT_JUDGE_API_KEY'], "
        "capture_output=True, text=True)\nprint(r.stdout)"
    )
    v = run_python(code, timeout_s=5)
    _check_common(v, "ok", None)
    lines = v.stdout.split("\n")
    assert lines[0] == "hi" and SECRET not in v.stdout
    if ROOT:
        assert int(lines[1]) == v.uid != 0
    # ...and the process budget applies to it: with one process allowed, the shell cannot start.
    v = run_python(
        "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo hi'])", timeout_s=5, max_procs=1
    )
    _check_common(v, "process_limit", "processes")
    assert "hi" not in v.stdout


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter is x86_64 only")
def test_namespace_mount_and_trace_syscalls_are_refused():
    # New user namespaces would hand the code capabilities over fresh namespaces: kernel attack surface.
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "calls = {'unshare_user': lambda: libc.unshare(0x10000000),\n"
        "         'clone_newuser': lambda: libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0),\n"
        "         'mount': lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None),\n"
        "         'umount': lambda: libc.umount2(b'/tmp', 2),\n"
        "         'ptrace': lambda: libc.ptrace(16, 1, 0, 0)}\n"
        "for name, call in calls.items():\n    print(name, call(), ctypes.get_errno())\n"
        "pid = os.fork()\nif pid == 0:\n    os._exit(7)\n"
        "print('fork', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))"
    )
    v = run_python(code, timeout_s=5)
    _check_common(v, "ok", None)
    assert v.seccomp
    lines = v.stdout.splitlines()
    assert lines[:5] == [
        f"{name} -1 1" for name in ("unshare_user", "clone_newuser", "mount", "umount", "ptrace")
    ]
    assert lines[5] == "fork 7"  # plain fork still works


@needs_root
def test_killing_the_parent_is_denied():
    code = (
        "import os, signal\n"
        f"for pid in (os.getppid(), {os.getpid()}):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        print(pid, 'killed')\n"
        "    except OSError as err:\n        print(pid, type(err).__name__)\n"
        "os.kill(os.getppid(), signal.SIGKILL)"
    )
    v = run_python(code, timeout_s=5)
    _check_common(v, "error", "permission")
    assert "killed" not in v.stdout and "PermissionError" in v.stdout
    assert "Operation not permitted" in v.stderr
    # The test process itself is outside the PID namespace (or owned by root): still alive to assert this.


def test_run_file_and_missing_file(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("print(6 * 7)")
    assert run_file(script, timeout_s=5).stdout == "42\n"
    with pytest.raises(FileNotFoundError):
        run_file(tmp_path / "missing.py", timeout_s=5)


def test_cli_prints_one_json_verdict(tmp_path):
    ok = tmp_path / "ok.py"
    ok.write_text("print('hi')")
    loop = tmp_path / "loop.py"
    loop.write_text("while True: pass")
    # With --timeout, the CPU limit equals the wall-clock one: either may stop the loop first.
    stopped = {("timeout", "wall_time"), ("cpu_limit", "cpu_time")}
    for path, expected in [(ok, {("ok", None)}), (loop, stopped)]:
        r = subprocess.run([str(CMT), "sandbox", str(path), "--timeout", "1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr  # a verdict was produced, even for a failing program
        lines = r.stdout.splitlines()
        assert len(lines) == 1
        verdict = json.loads(lines[0])
        assert (verdict["status"], verdict["which_limit"]) in expected
        assert {"exit_code", "wall_s", "stdout", "stderr", "stdout_truncated", "signal"} <= verdict.keys()
    assert (
        json.loads(subprocess.run([str(CMT), "sandbox", str(ok)], capture_output=True).stdout)["stdout"]
        == "hi\n"
    )
    r = subprocess.run([str(CMT), "sandbox", str(tmp_path / "missing.py")], capture_output=True, text=True)
    assert r.returncode != 0 and r.stdout == "" and "missing.py" in r.stderr
