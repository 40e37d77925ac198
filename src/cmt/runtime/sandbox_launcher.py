"""The sandbox's launcher (cmt.runtime.sandbox): run as `python -I -S sandbox_launcher.py --launch CONFIG`, inside
the namespaces when there are any. It sets up the mounts as root, and for each program of its batch forks the
limited child, which execs the interpreter on the program, and reports the child's fate as one line (a Python
literal) on a status pipe. Between two programs it kills whatever the first left running and renews the IPC
namespace and the writable tmpfs mounts; each program writes to its own pipes and sees no other's.

It is a file of its own, importing only what the launcher needs from the standard library, because it starts
afresh for every batch: importing all of sandbox.py (dataclasses, subprocess, pathlib, re, ...) took about
40 ms of each 63-ms run, and json and signal (through enum and re) another 8 ms of the 41 left. CONFIG is
marshalled, in hex. Run as a script under -I it can import nothing of cmt.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` imports enum, and with it a third of the launcher's start
import ctypes
import marshal
import os
import resource
import sys
import time


def _ns(kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return None


_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_MOVE, _MS_REC = 1, 2, 4, 32, 4096, 8192, 16384
_MS_PRIVATE = 1 << 18
_PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 38, 36
_CLONE_NEWIPC, _MNT_DETACH = 0x08000000, 2
_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
_WORKDIR = "/tmp/work"


class _Timeout(Exception):
    pass


def _launch(config: dict) -> None:
    status_fd = config["status_fd"]
    libc = ctypes.CDLL(None, use_errno=True)

    def report(**fields) -> None:
        os.write(status_fd, (repr(fields) + "\n").encode())  # a Python literal: json would cost its import

    try:
        programs = config["programs"]
        if len(programs) > 1 and not (config["mounts"] and os.getpid() == 1):
            raise OSError("a batch needs the PID namespace and private mounts to part its programs")
        sources = []
        for program in programs:  # cwd is the parent's throw-away directory
            with open(program["script"], "rb") as fh:
                sources.append(fh.read())
        if os.getpid() != 1:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us to be killed
        for index, (program, source) in enumerate(zip(programs, sources, strict=True)):
            _run_program(libc, config, index, program, source, report)
    except BaseException as err:
        report(error=f"launcher: {type(err).__name__}: {err}")
    os._exit(0)


def _run_program(libc, config: dict, index: int, program: dict, source: bytes, report) -> None:
    """One program of the batch, in a fresh child. Every program after the first gets what the one before could
    have left state in renewed first: an IPC namespace (SysV objects, POSIX queues) and the writable tmpfs
    mounts; the processes it left were all killed after it."""
    uid = program["uid"]
    if index:
        if libc.unshare(_CLONE_NEWIPC) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWIPC)")
        _renew_scratch(libc, config, source, uid)
    elif config["mounts"]:
        _mount_private_fs(libc, config, source, uid)
    if config["mounts"]:
        workdir, script = _WORKDIR, _WORKDIR + "/main.py"
    else:
        workdir, script = os.path.abspath("work"), os.path.abspath(program["script"])
    env = {**config["env"], "HOME": workdir, "TMPDIR": workdir}
    argv = [config["exe"], "-I", "-S", "-u", "-c", _boot_code(), script]
    stdin_fd = os.open(config["stdin"], os.O_RDONLY)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _exec_child(
            libc, config, index, uid, workdir, argv, env, (stdin_fd, program["out_fd"], program["err_fd"])
        )
    os.close(stdin_fd)
    timed_out = False
    alarm = _Alarm(config["limits"]["timeout_s"])
    try:
        while True:  # as PID 1 we also reap orphans
            wpid, wstatus, usage = os.wait4(-1, 0)
            if wpid == pid:
                break
        alarm.done()
    except _Timeout:
        timed_out = True
        try:
            os.kill(pid, signal.SIGKILL)
            wpid, wstatus, usage = os.wait4(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            # The alarm landed just after wait4 had reaped the child (e.g. killed by its CPU limit at the
            # same second): its status is lost with that return value, so report a killed child.
            wstatus, usage = signal.SIGKILL, resource.getrusage(resource.RUSAGE_CHILDREN)
    alarm.done()
    if os.getpid() == 1:
        _kill_namespace()  # nothing the program started may meet the next one
    else:
        _kill_descendants()
    os.close(program["out_fd"])  # the caller's end of the program's output sees EOF once unshare exits
    os.close(program["err_fd"])
    report(
        i=index,
        exit_code=os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else None,
        signal=os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None,
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        maxrss_kb=usage.ru_maxrss,
        timed_out=timed_out,
        wall_s=round(time.monotonic() - started, 3),
        pid=os.getpid(),
        net_ns=_ns("net"),
        mounted=config["mounts"],
        uid=uid if uid is not None else os.getuid(),
    )


class _Alarm:
    """The wall-clock limit: SIGALRM raises _Timeout until `done()`. An alarm that lands after the child was
    reaped but before the timer is disarmed is then ignored: raised there, outside the wait, it failed the whole
    run as a sandbox error (seen when a program's CPU limit and the timeout fell in the same instant)."""

    def __init__(self, seconds: float):
        self.active = True
        signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _fire(self, signum, frame):
        if self.active:
            raise _Timeout

    def done(self) -> None:
        self.active = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def _exec_child(libc, config: dict, index: int, uid, workdir: str, argv: list, env: dict, fds: tuple) -> None:
    try:
        status_fd = config["status_fd"]
        for target, fd in enumerate(fds):  # stdin, stdout, stderr: this program's own
            os.dup2(fd, target)
        # The other programs' output pipes stay with the launcher: no program may write into another's.
        os.closerange(3, status_fd)
        os.closerange(status_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # none is above it
        os.chdir(workdir)
        lim = config["limits"]
        cpu = max(1, int(lim["cpu_s"] + 0.999))
        mib = 1024 * 1024
        nproc = lim["max_procs"] + (config["host_nproc"] or 0)
        for res, value in [
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at the soft limit, SIGKILL a second later
            (resource.RLIMIT_AS, (lim["memory_mb"] * mib,) * 2),
            (resource.RLIMIT_FSIZE, (lim["max_file_mb"] * mib,) * 2),
            (resource.RLIMIT_NPROC, (nproc, nproc)),
            (resource.RLIMIT_NOFILE, (lim["max_open_files"],) * 2),
            (resource.RLIMIT_CORE, (0, 0)),
            (resource.RLIMIT_MEMLOCK, (0, 0)),
        ]:
            resource.setrlimit(res, value)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)  # clears every capability
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError("uid did not change")
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # setuid binaries cannot regain root
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        os.write(status_fd, (repr({"i": index, "seccomp": _install_seccomp(libc)}) + "\n").encode())
        os.close(status_fd)
        os.execve(argv[0], argv, env)
    except BaseException as err:
        os.write(2, f"sandbox: child setup failed: {type(err).__name__}: {err}\n".encode())
    os._exit(126)


# Syscalls refused with EPERM (x86_64 numbers): namespaces and mounts (user namespaces are the usual road
# to kernel bugs), tracing, BPF, keyrings, io_uring, modules and the like. clone with a namespace flag is
# refused too, and clone3 answers ENOSYS so that libc falls back to clone, whose flags a filter can read.
_SECCOMP_DENY = {
    "ptrace": 101, "syslog": 103, "personality": 135, "pivot_root": 155, "chroot": 161, "acct": 163,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "setns": 308, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442,
}  # fmt: skip
_SYS_CLONE, _SYS_CLONE3 = 56, 435
_CLONE_NEW_ANY = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET


def _seccomp_program() -> list[tuple[int, int, int, int]]:
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys, kill = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x80000000
    body: list = [(ld, 0, 0, 4), (jeq, 0, "KILL", 0xC000003E), (ld, 0, 0, 0), (jge, "EPERM", 0, 0x40000000)]
    body += [(jeq, "EPERM", 0, nr) for nr in sorted(_SECCOMP_DENY.values())]
    body += [(jeq, "ENOSYS", 0, _SYS_CLONE3), (jeq, 0, "ALLOW", _SYS_CLONE)]
    body += [(ld, 0, 0, 16), (jset, "EPERM", "ALLOW", _CLONE_NEW_ANY)]  # clone's flags, low 32 bits
    rets = {"ALLOW": allow, "EPERM": eperm, "ENOSYS": enosys, "KILL": kill}
    where = {name: len(body) + i for i, name in enumerate(rets)}

    def jump(i: int, to) -> int:
        return where[to] - i - 1 if isinstance(to, str) else to

    prog = [(code, jump(i, jt), jump(i, jf), k) for i, (code, jt, jf, k) in enumerate(body)]
    return prog + [(ret, 0, 0, k) for k in rets.values()]


def _install_seccomp(libc) -> bool:
    """Best effort: False (recorded in the verdict) on other architectures or kernels without filters."""
    if os.uname().machine != "x86_64":
        return False

    class Filter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_ushort),
            ("jt", ctypes.c_ubyte),
            ("jf", ctypes.c_ubyte),
            ("k", ctypes.c_uint),
        ]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    program = _seccomp_program()
    filters = (Filter * len(program))(*[Filter(*ins) for ins in program])
    prog = Prog(len(program), filters)
    return libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


_SYS_EXECVE, _SYS_EXECVEAT = 59, 322
# Audit events (PEP 578) raised just before Python starts another program.
_EXEC_EVENTS = ("os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "pty.spawn")


def _exec_deny_program() -> list[tuple[int, int, int, int]]:
    """The second filter: execve and execveat fail with EPERM. The first filter cannot hold this rule, because
    the launcher's child still has to exec the interpreter; the interpreter installs this one itself (_BOOT)
    before the program runs. The first filter has already checked the architecture."""
    ld, jeq, ret = 0x20, 0x15, 0x06
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    return [(ld, 0, 0, 0), (jeq, 2, 0, _SYS_EXECVE), (jeq, 1, 0, _SYS_EXECVEAT), (ret, 0, 0, allow),
            (ret, 0, 0, eperm)]  # fmt: skip


# Run by `python -I -S -u -c _BOOT main.py`: deny exec (seccomp where it exists, and an audit hook that says
# so on stderr, which names the limit in the verdict), then run main.py as __main__. Standard library only.
_BOOT = """\
import ctypes, errno, os, sys, types
PROGRAM = __PROGRAM__
EVENTS = __EVENTS__
def _deny(event, args):
    if event in EVENTS:
        what = next((a for a in args if isinstance(a, (str, bytes, list, tuple))), event)
        if isinstance(what, (list, tuple)):
            what = what[0] if what else event
        if isinstance(what, bytes):
            what = os.fsdecode(what)
        os.write(2, ("sandbox: exec denied: %r\\n" % (what,)).encode("utf-8", "replace"))
        raise PermissionError(errno.EPERM, "sandbox: exec denied", str(what))
if PROGRAM:
    class F(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint)]
    class P(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
    filters = (F * len(PROGRAM))(*[F(*ins) for ins in PROGRAM])
    if ctypes.CDLL(None).prctl(22, 2, ctypes.byref(P(len(PROGRAM), filters)), 0, 0) != 0:
        os.write(2, b"sandbox: child setup failed: cannot install the exec filter\\n")
        os._exit(126)
sys.addaudithook(_deny)
script = sys.argv[1]
sys.argv = sys.argv[1:]
main = types.ModuleType("__main__")
main.__file__ = script
main.__builtins__ = __builtins__
sys.modules["__main__"] = main
with open(script, "rb") as fh:
    code = compile(fh.read(), script, "exec")
exec(code, main.__dict__)
"""


def _boot_code() -> str:
    program = _exec_deny_program() if os.uname().machine == "x86_64" else []
    return _BOOT.replace("__PROGRAM__", repr(program)).replace("__EVENTS__", repr(_EXEC_EVENTS))


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mount_private_fs(libc, config: dict, source: bytes, uid) -> None:
    """Fresh tmpfs over every world-writable directory; empty tmpfs over the hidden ones, with the
    interpreter's prefix bound back read-only at its own path when it lives under one (pyenv in /root)."""
    secure = _MS_NOSUID | _MS_NODEV
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount may propagate to the host
    tmp_mb = config["limits"]["tmp_mb"]
    _mount(libc, "tmpfs", "/tmp", "tmpfs", secure, f"size={tmp_mb}m,mode=1777")
    prefix, stage = config["prefix"], "/tmp/.prefix"
    exposed = any(prefix.startswith(h + "/") for h in config["hide"])
    if exposed:
        os.mkdir(stage)
        _mount(libc, prefix, stage, None, _MS_BIND | _MS_REC)
    for hidden in config["hide"]:
        _mount(libc, "tmpfs", hidden, "tmpfs", secure, "size=1m,mode=755")
    if exposed:
        os.makedirs(prefix, mode=0o755, exist_ok=True)
        _mount(libc, stage, prefix, None, _MS_MOVE)
        _mount(libc, None, prefix, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | secure)
        os.rmdir(stage)
    for writable in _WRITABLE_DIRS[1:]:
        if os.path.isdir(writable):
            _mount(libc, "tmpfs", writable, "tmpfs", secure, f"size={tmp_mb}m,mode=1777")
    _write_workdir(source, uid)


def _renew_scratch(libc, config: dict, source: bytes, uid) -> None:
    """The writable tmpfs mounts again, empty: the last program's files go with the old ones."""
    tmp_mb = config["limits"]["tmp_mb"]
    for writable in _WRITABLE_DIRS:
        if writable == "/tmp" or os.path.isdir(writable):  # those _mount_private_fs mounted
            if libc.umount2(writable.encode(), _MNT_DETACH) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"umount {writable}: {os.strerror(err)}")
            _mount(libc, "tmpfs", writable, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={tmp_mb}m,mode=1777")
    _write_workdir(source, uid)


def _write_workdir(source: bytes, uid) -> None:
    os.mkdir(_WORKDIR, 0o700)
    with open(_WORKDIR + "/main.py", "wb") as fh:
        fh.write(source)
    if uid is not None:
        os.chown(_WORKDIR, uid, uid)
        os.chown(_WORKDIR + "/main.py", uid, uid)


def _kill_namespace() -> None:
    """As the PID namespace's init: kill every other process in it, then reap them all. kill(-1) reaches each
    process of the namespace but init and is atomic with respect to fork, so nothing escapes by forking."""
    try:  # noqa: SIM105 (contextlib would cost its import in every run)
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _kill_descendants() -> None:
    """As a subreaper: kill our children until none are left (their orphans are reparented to us)."""
    while True:
        for child in _children():
            try:  # noqa: SIM105 (contextlib would cost its import in every run)
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _children() -> list[int]:
    kids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as fh:
                kids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
    return kids


if __name__ == "__main__" and sys.argv[1:2] == ["--launch"]:
    _launch(marshal.loads(bytes.fromhex(sys.argv[2])))
