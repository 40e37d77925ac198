"""The code sandbox's ordinary behaviour: verdicts, output capture, run_file and the CLI.

Hostile programs (issues 3 and 7) are in tests/test_sandbox_adversarial.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmt.runtime.sandbox import LIMITS, STATUSES, mechanisms, run_file, run_python

MECH = mechanisms()
CMT = Path(sys.executable).parent / "cmt"


def test_normal_program_passes():
    v = run_python("import sys\nprint('hello', sys.stdin.read())", timeout_s=5, stdin="from stdin")
    assert (v.status, v.which_limit) == ("ok", None), v.to_json()
    assert v.exit_code == 0 and v.stdout == "hello from stdin\n" and v.stderr == ""
    assert not v.stdout_truncated and v.wall_s < 5
    assert v.network_isolated == MECH["namespaces"]
    assert v.limits == {"timeout_s": 5.0, "cpu_s": 5.0, "memory_mb": 1024, "max_file_mb": 16, "max_procs": 32,
                        "max_open_files": 64, "tmp_mb": 48}  # fmt: skip


def test_program_runs_as_main_with_its_own_argv():
    code = "import sys\nprint(__name__, sys.argv[0] == __file__, len(sys.argv))\nif __name__ == '__main__': print('main')"
    v = run_python(code, timeout_s=5)
    assert v.stdout == "__main__ True 1\nmain\n", v.to_json()


def test_raising_program_is_an_error_with_its_traceback():
    v = run_python("raise ValueError('boom')", timeout_s=5)
    assert (v.status, v.which_limit, v.exit_code) == ("error", None, 1)
    assert "ValueError: boom" in v.stderr and 'main.py", line 1' in v.stderr


def test_exit_code_is_kept():
    v = run_python("import sys\nsys.exit(3)", timeout_s=5)
    assert (v.status, v.exit_code, v.signal) == ("error", 3, None)


def test_stdout_is_truncated_keeping_head_and_tail():
    v = run_python("print('x' * 200_000)\nprint('END')", timeout_s=5, max_output_bytes=2000)
    assert v.status == "ok"
    assert v.stdout_truncated and v.stdout_bytes == 200_005
    assert len(v.stdout) < 2100 and v.stdout.startswith("xxx") and v.stdout.rstrip().endswith("END")


def test_verdict_fields_and_vocabulary():
    verdict = json.loads(run_python("print(1)", timeout_s=5).to_json())
    assert verdict["status"] in STATUSES and "exec" in LIMITS
    assert {"status", "exit_code", "signal", "which_limit", "wall_s", "cpu_s", "stdout", "stderr",
            "stdout_truncated", "stderr_truncated", "network_isolated", "pid_isolated", "private_fs",
            "privileges_dropped", "seccomp", "uid", "limits", "message"} <= verdict.keys()  # fmt: skip


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


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf", "-inf", "1e12", "soon"])
def test_a_careless_timeout_is_a_one_line_usage_error(tmp_path, timeout):
    script = tmp_path / "prog.py"
    script.write_text("print(1)")
    r = subprocess.run(
        [str(CMT), "sandbox", str(script), "--timeout", timeout], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("cmt sandbox: error: argument --timeout"), (
        r.stderr
    )
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), float("inf"), 1e12])
def test_run_python_refuses_a_limit_that_is_not_a_positive_finite_time(timeout):
    with pytest.raises(ValueError, match="positive number of seconds"):
        run_python("print(1)", timeout_s=timeout)
    with pytest.raises(ValueError, match="cpu_s"):
        run_python("print(1)", timeout_s=5, cpu_s=timeout)


def test_a_directory_or_unreadable_file_as_the_program_is_a_one_line_error(tmp_path):
    binary = tmp_path / "prog.pyc"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for program, words in [(tmp_path, "is a directory"), (tmp_path / "missing.py", "no such file"),
                           (binary, "is not text")]:  # fmt: skip
        r = subprocess.run(
            [str(CMT), "sandbox", str(program), "--timeout", "1"], capture_output=True, text=True
        )
        assert r.returncode == 1 and r.stdout == "", r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("cmt sandbox: ") and words in r.stderr, (
            r.stderr
        )
        assert "Traceback" not in r.stderr


def test_an_alarm_after_the_child_ended_is_ignored():
    """An infinite loop's CPU limit and wall timeout fall in the same instant: the alarm could land after the
    child was reaped and, raised outside the wait, fail the run as a sandbox error (seen once in make test)."""
    import signal

    from cmt.runtime.sandbox_launcher import _Alarm, _Timeout

    previous = signal.getsignal(signal.SIGALRM)
    try:
        alarm = _Alarm(60)
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
        with pytest.raises(_Timeout):  # while the child runs, the alarm ends the wait
            signal.raise_signal(signal.SIGALRM)
        alarm.done()
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        signal.raise_signal(signal.SIGALRM)  # once it has ended, a late alarm changes nothing
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_batch_takes_run_pythons_options_and_names_a_wrong_one():
    from cmt.runtime.sandbox import run_python_batch

    with pytest.raises(TypeError, match="timout_s"):
        run_python_batch(["print(1)"], timout_s=5)
    (verdict,) = run_python_batch(["import sys\nprint(sys.stdin.read())"], stdin="x", max_output_bytes=1)
    assert verdict.stdout.startswith("x") and verdict.stdout_truncated and verdict.limits["timeout_s"] == 10.0
