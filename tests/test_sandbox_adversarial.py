"""Hostile programs against the code sandbox (issues 3 and 7): each is stopped or denied, and the verdict's
`which_limit` names the limit it hit.

The nine programs of issue 7 run four ways: through `run_python` with small limits, through `cmt sandbox` with
the default limits, as root with namespaces forced off, and as an unprivileged user (user namespaces, no
mounts, no uid change). The last two are the degraded modes of docs/sandbox.md; the tests pin down what still
holds there, and that the verdict says what did not (`network_isolated: false`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import cmt.runtime.sandbox as sandbox
from cmt.runtime.sandbox import STATUSES, mechanisms, run_python

MECH = mechanisms()
ROOT = os.geteuid() == 0
SECRET = "cmt-test-secret-7f3a9c1e"
CMT = Path(sys.executable).parent / "cmt"
TAG = f"cmt-escape-{os.getpid()}"
NOBODY = 65534


def current_mode() -> str | None:
    if ROOT and MECH["mounts"]:
        return "full"
    if ROOT:
        return "no_namespaces"
    if MECH["namespaces"]:
        return "unprivileged"
    return None  # not root and no user namespaces: docs/sandbox.md says not to score untrusted code so


MODE = current_mode()
needs_full = pytest.mark.skipif(MODE != "full", reason="needs root with namespaces (the reference machine)")
needs_root = pytest.mark.skipif(not ROOT, reason="switching to another uid or mode needs root")
pytestmark = pytest.mark.skipif(MODE is None, reason="no supported sandbox mode here (docs/sandbox.md)")

# The nine hostile programs of issue 7: (code, small limits for run_python). PORT and TARGET are filled in.
HOSTILE = {
    "infinite_loop": ("while True: pass", {"cpu_s": 1}),
    "fork_bomb": ("import os\nwhile True: os.fork()", {"max_procs": 16}),
    "allocate_10_gib": ("x = bytearray(10 * 2**30)", {"memory_mb": 256}),
    "write_1_gib": (
        "with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'a' * 2**20)",
        {"max_file_mb": 16},
    ),
    "write_outside": ("open(TARGET, 'w').write('x')\nprint('written')", {}),
    "read_environ": (
        "import os, sys\nprint(open('/proc/self/environ', 'rb').read())\nprint(dict(os.environ))\n"
        "for p in ['/proc/CALLER/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ']:\n"
        "    try:\n        print(p, open(p, 'rb').read())\n"
        "    except OSError as err:\n        print(p, type(err).__name__, file=sys.stderr)\n",
        {},
    ),
    "socket_to_listener": (
        "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=2)\nprint('connected')",
        {},
    ),
    "spawn_shell": (
        "import subprocess\nr = subprocess.run(['/bin/sh', '-c', 'echo hi; echo $CMT_JUDGE_API_KEY'], "
        "capture_output=True, text=True)\nprint(r.stdout)",
        {},
    ),
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('sent')", {}),
}
STOPPED = {
    "infinite_loop": ("cpu_limit", "cpu_time"),
    "fork_bomb": ("process_limit", "processes"),
    "allocate_10_gib": ("memory_limit", "memory"),
    "write_1_gib": ("file_size_limit", "file_size"),
    "write_outside": ("error", "permission"),
    "read_environ": ("ok", None),  # nothing to stop: the environment it reads holds no secret
    "socket_to_listener": ("error", "network"),
    "spawn_shell": ("error", "exec"),
    "kill_parent": ("error", "permission"),
}


def expected(name: str, mode: str) -> tuple[str, str | None]:
    if name == "socket_to_listener" and mode == "no_namespaces":
        return ("ok", None)  # not protected without a network namespace; the verdict says so (below)
    if name == "kill_parent" and mode == "unprivileged":
        # The parent is the PID namespace's init, which drops signals sent from inside: no effect.
        return ("ok", None)
    return STOPPED[name]


@pytest.fixture(autouse=True)
def planted_secret(monkeypatch):
    monkeypatch.setenv("CMT_JUDGE_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def was_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def render(name: str, port: int) -> str:
    code = HOSTILE[name][0]
    return (
        code.replace("PORT", str(port))
        .replace("TARGET", repr(f"/etc/{TAG}"))
        .replace("CALLER", str(os.getpid()))
    )


def leftovers(uid: int | None) -> list[str]:
    if uid is None or uid == os.getuid():
        return []
    procs = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{p}").st_uid == uid:
                    procs.append(p)
    return procs


def check(name: str, verdict: dict, mode: str, connected: bool | None = None) -> None:
    """The verdict of one hostile program in one mode, and what must (not) have happened on the host."""
    got = (verdict["status"], verdict["which_limit"])
    want = expected(name, mode)
    if name == "infinite_loop" and verdict["limits"]["cpu_s"] >= verdict["limits"]["timeout_s"]:
        assert got in {want, ("timeout", "wall_time")}, verdict  # CLI: equal limits, either may fire first
    else:
        assert got == want, json.dumps(verdict)[:3000]
    assert verdict["status"] in STATUSES
    out = verdict["stdout"] + verdict["stderr"]
    assert SECRET not in out
    if name == "allocate_10_gib":
        assert "MemoryError" in verdict["stderr"]
    elif name == "write_1_gib":
        assert "[Errno 27]" in verdict["stderr"]
    elif name == "write_outside":
        assert "written" not in verdict["stdout"] and not os.path.exists(f"/etc/{TAG}")
    elif name == "read_environ":
        assert "PATH=/usr/bin:/bin" in verdict["stdout"] and "CMT_JUDGE_API_KEY" not in out
    elif name == "socket_to_listener":
        if mode == "no_namespaces":
            assert verdict["network_isolated"] is False  # a scorer can refuse such verdicts
        else:
            assert verdict["network_isolated"] and connected is False and "connected" not in verdict["stdout"]
    elif name == "spawn_shell":
        assert "hi" not in verdict["stdout"] and "sandbox: exec denied: '/bin/sh'" in verdict["stderr"]
    elif name == "kill_parent":
        assert verdict["status"] != "sandbox_error"  # the launcher survived and reported
        if mode == "unprivileged":
            assert verdict["stdout"] == "sent\n"
        else:
            assert "Operation not permitted" in verdict["stderr"] and "sent" not in verdict["stdout"]
    assert leftovers(verdict["uid"]) == [], "a sandboxed process outlived its run"


# ---------------------------------------------------------------------------------------------------------
# The nine programs, four ways


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program(name, listener):
    _, limits = HOSTILE[name]
    t0 = time.monotonic()
    v = run_python(render(name, listener.getsockname()[1]), timeout_s=5, **limits)
    check(name, json.loads(v.to_json()), MODE, was_connected(listener))
    assert time.monotonic() - t0 < 5  # every one is stopped by its limit, long before the wall clock


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_through_the_cli_with_default_limits(name, listener, tmp_path):
    path = tmp_path / f"{name}.py"
    path.write_text(render(name, listener.getsockname()[1]))
    r = subprocess.run([str(CMT), "sandbox", str(path), "--timeout", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    check(name, json.loads(line), MODE, was_connected(listener))


@needs_root
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_as_root_without_namespaces(name, listener, monkeypatch):
    # Forced: what a container without CAP_SYS_ADMIN gives. The fresh uid, the rlimits, seccomp and the
    # subreaper remain; the network does not (documented), and the verdict records it.
    monkeypatch.setattr(
        sandbox,
        "_MECHANISMS",
        {
            "unshare": None,
            "unshare_flags": None,
            "namespaces": False,
            "mounts": False,
            "drop_privileges": True,
        },
    )
    _, limits = HOSTILE[name]
    v = run_python(render(name, listener.getsockname()[1]), timeout_s=5, **limits)
    assert not v.pid_isolated and not v.private_fs and v.privileges_dropped and v.seccomp
    check(name, json.loads(v.to_json()), "no_namespaces", was_connected(listener))
    assert not any(p.name.startswith("cmt-sandbox-") and p.owner() != "root" for p in Path("/tmp").iterdir())


# Runs as `nobody` under the system interpreter: the package's sandbox module only needs the stdlib.
_DRIVER = """
import json, sys
sys.path.insert(0, SRC)
from cmt.runtime.sandbox import mechanisms, run_python
cases = json.loads(sys.stdin.read())
print(json.dumps({"mechanisms": mechanisms()}))
for name, (code, limits) in cases.items():
    v = run_python(code, timeout_s=5, **limits)
    print(json.dumps({"name": name, "verdict": json.loads(v.to_json())}), flush=True)
"""


def _world_readable(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents) and bool(
        path.stat().st_mode & stat.S_IROTH
    )


@needs_root
def test_hostile_programs_as_an_unprivileged_user(listener):
    src = Path(sandbox.__file__).resolve().parents[2]  # src/cmt/runtime/sandbox.py -> src
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or not _world_readable(src / "cmt" / "runtime" / "sandbox.py"):
        pytest.skip("needs a system python3 and a world-readable checkout to run as nobody")
    port = listener.getsockname()[1]
    cases = {name: (render(name, port), limits) for name, (_, limits) in HOSTILE.items()}
    r = subprocess.run(
        [python, "-I", "-c", _DRIVER.replace("SRC", repr(str(src)))],
        input=json.dumps(cases), capture_output=True, text=True, timeout=120, cwd="/",
        user=NOBODY, group=NOBODY, extra_groups=[], env={"PATH": "/usr/bin:/bin", "CMT_JUDGE_API_KEY": SECRET},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    mech = lines[0]["mechanisms"]
    if not mech["namespaces"]:
        pytest.skip("no unprivileged user namespaces here: that mode is documented as unsupported")
    assert not mech["drop_privileges"] and not mech["mounts"]
    verdicts = {line["name"]: line["verdict"] for line in lines[1:]}
    assert list(verdicts) == list(HOSTILE)
    for name, verdict in verdicts.items():
        assert verdict["uid"] == NOBODY and verdict["network_isolated"] and verdict["pid_isolated"]
        check(name, verdict, "unprivileged", was_connected(listener))


# ---------------------------------------------------------------------------------------------------------
# Variants: the same attacks by other routes


def run(code: str, **limits):
    v = run_python(code, **{"timeout_s": 5, **limits})
    assert leftovers(v.uid) == [], "a sandboxed process outlived its run"
    return v


def test_infinite_loop_ignoring_sigxcpu_is_killed_at_the_hard_limit():
    v = run(
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass", timeout_s=6, cpu_s=1
    )
    assert (v.status, v.which_limit, v.signal) == ("cpu_limit", "cpu_time", "SIGKILL") and v.wall_s < 5


def test_sleeping_loop_hits_the_wall_clock_and_keeps_its_output():
    v = run("import time\nprint('started', flush=True)\nwhile True: time.sleep(0.1)", timeout_s=1)
    assert (v.status, v.which_limit) == ("timeout", "wall_time")
    assert 1 <= v.wall_s < 4 and v.stdout == "started\n"


def test_fork_bomb_that_swallows_errors_is_killed_at_the_deadline():
    t0 = time.monotonic()
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    v = run(code, timeout_s=2, max_procs=16)
    assert (v.status, v.which_limit) == ("timeout", "wall_time") and time.monotonic() - t0 < 6
    assert subprocess.run(["true"]).returncode == 0  # the machine can still fork


def test_thread_bomb_hits_the_process_limit():
    code = "import threading, time\nwhile True: threading.Thread(target=time.sleep, args=(60,), daemon=True).start()"
    v = run(code, timeout_s=3, max_procs=16)
    assert (v.status, v.which_limit) == (
        "process_limit",
        "processes",
    ) and "can't start new thread" in v.stderr


def test_escaped_grandchild_is_killed():
    # setsid and a double fork leave the process group; the PID namespace (or the subreaper) still kills it.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n"
        "print('parent done')"
    )
    v = run(code)
    assert (v.status, v.which_limit) == ("ok", None) and v.wall_s < 3


@pytest.mark.parametrize(
    "code",
    [
        "x = []\nwhile True: x.append(b'a' * 2**20)",  # gradual
        "import mmap\nm = mmap.mmap(-1, 10 * 2**30)",  # not through Python's allocator
        # raising its own limit first: the hard limit cannot be raised without privilege
        "import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\nexcept ValueError as e:\n"
        "    print(e)\nx = bytearray(10 * 2**30)",
    ],
)
def test_other_memory_hogs_hit_the_memory_limit(code):
    v = run(code, memory_mb=256)
    assert (v.status, v.which_limit) == ("memory_limit", "memory")


def test_child_process_hitting_a_limit_is_named_even_when_the_program_succeeds():
    v = run(
        "import os\nif os.fork() == 0:\n    x = bytearray(10 * 2**30)\nos.wait()\nprint('parent ok')",
        memory_mb=256,
    )
    assert (v.status, v.which_limit, v.stdout) == ("ok", "memory", "parent ok\n")


def test_raw_file_writes_hit_the_file_size_limit():
    code = "import os\nfd = os.open('big', os.O_WRONLY | os.O_CREAT)\nfor _ in range(1024): os.write(fd, b'a' * 2**20)"
    v = run(code, max_file_mb=16)
    assert (v.status, v.which_limit) == ("file_size_limit", "file_size")


@needs_full
def test_many_files_fill_only_the_private_tmpfs():
    v = run("for i in range(10):\n    open(f'f{i}', 'wb').write(b'a' * 15 * 2**20)", max_file_mb=16)
    assert (v.status, v.which_limit) == ("file_size_limit", "disk_space") and v.private_fs


@pytest.fixture
def root_owned_dir():
    """A root-owned directory the sandbox can see (not under /tmp, which it gets privately)."""
    path = Path(tempfile.mkdtemp(prefix="cmt-sandbox-test-", dir="/var/lib" if ROOT else None))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_full
def test_writes_anywhere_outside_land_nowhere_on_the_host(root_owned_dir):
    project_target = f"{os.getcwd()}/{TAG}"  # the pipeline's directory, hidden wherever it lies
    targets = [f"/etc/{TAG}", f"/root/{TAG}", f"{root_owned_dir}/{TAG}", f"/usr/lib/{TAG}", project_target,
               f"/var/tmp/{TAG}", f"/dev/shm/{TAG}", f"/tmp/{TAG}"]  # fmt: skip
    code = (
        "import json\nresult = {}\n"
        f"for path in {targets!r}:\n"
        "    try:\n        open(path, 'w').write('x')\n        result[path] = 'written'\n"
        "    except OSError as err:\n        result[path] = type(err).__name__\n"
        "print(json.dumps(result))\nopen('/etc/x', 'w')"
    )
    v = run(code)
    assert (v.status, v.which_limit) == ("error", "permission")
    result = json.loads(v.stdout)
    for path in targets[:4]:  # system folders: seen, but not writable by the sandbox's uid
        assert result[path] == "PermissionError", result
    # The project folder is hidden: behind an empty tmpfs (PermissionError), or, where it lies under /tmp, /root,
    # /home or another folder the sandbox mounts afresh, absent (FileNotFoundError). Either way the write fails.
    assert result[project_target] in ("PermissionError", "FileNotFoundError"), result
    for path in targets:  # the world-writable ones were private tmpfs mounts
        assert not os.path.exists(path), f"{path} was written on the host"


@needs_full
def test_project_directory_is_hidden():
    """Its listing is empty (an empty tmpfs over it) or the folder is absent (it lies under a folder the sandbox
    mounts afresh, such as /tmp); either way no file of the project can be read."""
    cwd = os.getcwd()
    code = (
        "import os\n"
        f"try:\n    print(os.listdir({cwd!r}))\nexcept FileNotFoundError:\n    print('absent')\n"
        f"print(open({cwd + '/pyproject.toml'!r}).read())"
    )
    v = run(code)
    assert v.stdout in ("[]\n", "absent\n") and "FileNotFoundError" in v.stderr, v.to_json()


@needs_full
def test_ipv6_loopback_is_unreachable_too():
    v = run("import socket\nsocket.create_connection(('::1', 22), timeout=2)")
    assert (v.status, v.which_limit) == ("error", "network")


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.system('echo hi')",
        "import os\nos.execv('/bin/sh', ['sh', '-c', 'echo hi'])",
        "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'echo hi'], {})",
        "import pty\npty.spawn(['/bin/sh', '-c', 'echo hi'])",
        "import subprocess\nsubprocess.run('echo hi', shell=True)",
    ],
)
def test_every_route_to_a_shell_is_denied(code):
    v = run(code)
    assert (v.status, v.which_limit) == ("error", "exec") and "hi" not in v.stdout


def test_a_caught_exec_denial_is_still_named():
    v = run(
        "import subprocess\ntry:\n    subprocess.run(['/bin/true'])\nexcept PermissionError as e:\n    print(e)"
    )
    assert (v.status, v.which_limit) == ("ok", "exec")
    assert v.stdout == "[Errno 1] sandbox: exec denied: '/bin/true'\n"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter is x86_64 only")
def test_exec_below_the_audit_hook_is_refused_by_seccomp():
    # ctypes skips the audit hook (and the code could remove hooks by poking memory); the kernel still refuses.
    code = (
        "import ctypes, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.execve(b'/bin/sh', None, None), ctypes.get_errno())\n"
        "print(libc.syscall(322, -100, b'/bin/sh', None, None, 0), ctypes.get_errno())"
    )
    v = run(code)
    assert (v.status, v.stdout, v.seccomp) == ("ok", "-1 1\n-1 1\n", True)


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
    v = run(code)
    assert (v.status, v.seccomp) == ("ok", True)
    lines = v.stdout.splitlines()
    assert lines[:5] == [
        f"{name} -1 1" for name in ("unshare_user", "clone_newuser", "mount", "umount", "ptrace")
    ]
    assert lines[5] == "fork 7"  # plain fork still works


@needs_root
def test_signals_reach_nothing_outside():
    # kill(-1) reaches only the sandbox uid's processes; the caller is out of sight (PID namespace) or
    # another uid.
    code = (
        "import os, signal\n"
        f"for pid in (-1, {os.getpid()}, 1):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        print(pid, 'sent')\n"
        "    except OSError as err:\n        print(pid, type(err).__name__)\n"
    )
    v = run(code)
    assert v.status == "ok"
    lines = dict(line.split() for line in v.stdout.splitlines())
    assert lines[str(os.getpid())] in ("ProcessLookupError", "PermissionError")
    assert lines["-1"] in ("ProcessLookupError", "sent")  # nothing else of its uid, or only its own


def test_output_flood_is_truncated_and_stopped():
    v = run("import sys\nwhile True: sys.stdout.write('x' * 65536)", cpu_s=1, max_output_bytes=4096)
    assert v.status in ("cpu_limit", "timeout") and v.stdout_truncated and len(v.stdout) < 4200
    assert v.stdout_bytes > 4096


# ---------------------------------------------------------------------------------------------------------
# Batches: programs that share a launcher (run_python_batch) must not meet each other

# Run after every other program of a batch: what the one before may have left. Prints one JSON line.
_PROBE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
found = {d: sorted(os.listdir(d)) for d in ('/tmp', '/var/tmp', '/dev/shm') if os.path.isdir(d)}
found['/tmp'] = [n for n in found['/tmp'] if n != 'work']
found['work'] = sorted(os.listdir('.'))
found['processes'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid()))
found['shm'] = libc.shmget(0xC47, 0, 0)  # -1: no segment of that key in this IPC namespace
print(json.dumps(found))
"""
_CLEAN = {"/tmp": [], "/var/tmp": [], "/dev/shm": [], "work": ["main.py"], "processes": [], "shm": -1}
# Leaves everything the probe looks for: files in every writable folder, a SysV segment, and a daemon that
# keeps running (setsid and a double fork) and writes to the output it was given. It also writes into every
# descriptor it inherited beyond its own three: none may lead to another program's output.
_LITTER = """
import ctypes, os, sys, time
for fd in range(3, 1024):
    try:
        os.write(fd, b'INTRUDER')
    except OSError:
        pass
for d in ('/tmp', '/var/tmp', '/dev/shm', '.'):
    open(os.path.join(d, 'left-behind'), 'w').write('x')
assert ctypes.CDLL(None).shmget(0xC47, 4096, 0o1666) >= 0
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for _ in range(100):
            print('LEAK', flush=True)
            time.sleep(0.05)
    os._exit(0)
print('littered', flush=True)
"""


def probe(verdict) -> dict:
    assert verdict.status == "ok", verdict.to_json()
    return json.loads(verdict.stdout)


@needs_full
def test_a_batch_parts_its_programs():
    verdicts = sandbox.run_python_batch([_LITTER, _PROBE, _LITTER, _PROBE], timeout_s=5)
    first = verdicts[0]
    assert first.status == "ok" and "littered" in first.stdout  # its own daemon's LEAK may come first
    for v in verdicts[1::2]:
        assert probe(v) == _CLEAN, v.stdout
        assert "LEAK" not in v.stdout
    assert not any("INTRUDER" in v.stdout + v.stderr for v in verdicts)
    uids = [v.uid for v in verdicts]
    assert len(set(uids)) == 4 and all(v.privileges_dropped and v.pid_isolated for v in verdicts)
    for uid in uids:
        assert leftovers(uid) == []


@needs_full
def test_the_probe_sees_what_a_program_leaves_while_it_runs():
    # Its positive control: in one program, the littering is seen (so a clean probe above means parted).
    v = sandbox.run_python(_LITTER + "time.sleep(0.2)\n" + _PROBE, timeout_s=5)
    # The daemon's LEAK lines share this output and may fall anywhere, even between the probe's JSON and its
    # newline (unbuffered output writes the two apart).
    found, _ = json.JSONDecoder().raw_decode(v.stdout, v.stdout.index("{"))
    assert found["/tmp"] == ["left-behind"] and found["/dev/shm"] == ["left-behind"] and found["shm"] >= 0
    assert "left-behind" in found["work"] and found["processes"] != []


@needs_full
def test_hostile_programs_in_one_batch(listener):
    # The nine of issue 7, each with its own limits and the probe after it in one batch: every verdict as when
    # run alone (check), and nothing carried over to the next program.
    port = listener.getsockname()[1]
    for name, (_, limits) in HOSTILE.items():
        hostile, after = sandbox.run_python_batch([render(name, port), _PROBE], timeout_s=5, **limits)
        check(name, json.loads(hostile.to_json()), MODE, was_connected(listener))
        assert probe(after) == _CLEAN, (name, after.stdout)


@needs_full
def test_a_timeout_in_a_batch_stops_that_program_only():
    codes = [
        "print('a')",
        "import time\nprint('started', flush=True)\nwhile True: time.sleep(0.1)",
        "print('c')",
    ]
    t0 = time.monotonic()
    verdicts = sandbox.run_python_batch(codes, timeout_s=1)
    assert [(v.status, v.which_limit) for v in verdicts] == [
        ("ok", None),
        ("timeout", "wall_time"),
        ("ok", None),
    ]
    assert [v.stdout for v in verdicts] == ["a\n", "started\n", "c\n"] and time.monotonic() - t0 < 4
    assert 1 <= verdicts[1].wall_s < 3 and verdicts[0].wall_s < 1


def test_a_batch_gives_each_program_the_verdict_it_gets_alone():
    codes = ["import sys\nprint('hello', sys.stdin.read())", "raise ValueError('boom')", "import os\nos.system('x')",
             "x = bytearray(10 * 2**30)", "print('x' * 100000)", "import sys\nprint('again', sys.stdin.read())"]  # fmt: skip
    kwargs = {"timeout_s": 5, "memory_mb": 256, "stdin": "in", "max_output_bytes": 4096}
    fields = ("status", "which_limit", "exit_code", "signal", "stdout", "stderr", "stdout_bytes", "seccomp",
              "network_isolated", "pid_isolated", "private_fs", "privileges_dropped")  # fmt: skip
    alone = [run_python(code, **kwargs) for code in codes]
    together = sandbox.run_python_batch(codes, **kwargs)
    for a, b in zip(alone, together, strict=True):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert together[0].stdout == "hello in\n" and together[1].status == "error"
    assert together[-1].stdout == "again in\n"  # each program reads the stdin from its start


@needs_root
def test_without_namespaces_a_batch_runs_one_program_at_a_time(monkeypatch, sandbox_launches):
    monkeypatch.setattr(sandbox, "_MECHANISMS", {"unshare": None, "unshare_flags": None, "namespaces": False,
                                                 "mounts": False, "drop_privileges": True})  # fmt: skip
    verdicts = sandbox.run_python_batch(["print(1)", "print(2)", "print(3)"], timeout_s=5)
    assert [v.stdout for v in verdicts] == ["1\n", "2\n", "3\n"] and sandbox_launches == [1, 1, 1]
    assert not any(v.pid_isolated for v in verdicts)
