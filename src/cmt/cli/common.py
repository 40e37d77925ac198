"""What every command module shares: argument types, the job options the rules pass, and the parser class."""

from __future__ import annotations

import argparse
import json
import math

JUDGE_HELP = (
    'the organism\'s judge: {"kind": "programmatic"} (default) or the config\'s judge block (kind llm)'
)
JUDGE_TRANSPORT_HELP = (
    "the LLM judge's transport settings (base_url, api_key_env, timeout, retries, concurrency, cache_dir), "
    "merged into every LLM judge of the job; the rules pass them apart from --judge-settings so that they "
    "rerun no job"
)
MAX_TIMEOUT_S = 86_400.0  # a day; the sandbox's timers cannot take much more than this anyway


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: `cmt sandbox: error: ... (see cmt sandbox --help)`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def json_object(text: str) -> dict:
    """A JSON object argument (the rules pass config subtrees this way)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def positive_seconds(text: str) -> float:
    """A positive, finite number of seconds, at most a day: -1, 0, nan and inf are usage errors."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds up to {MAX_TIMEOUT_S:g}, got {text!r}"
        )
    return value


def add_job_options(p: argparse.ArgumentParser) -> None:
    """The options every rule passes: where the job log goes and the job's label and threads."""
    p.add_argument("--log", help="job log file (progress and messages go here)")
    p.add_argument("--job", default="", help="job label for the log header: rule and wildcards")
    p.add_argument("--threads", type=int, default=None, help="torch threads (Snakemake's {threads})")


def key_values(items: list[str] | None, option: str, convert) -> dict:
    """KEY=VALUE arguments as a dict; a malformed item is a one-line error naming the option."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError("expected KEY=VALUE")
            out[key] = convert(value)
        except ValueError as err:
            raise SystemExit(f"{option} {item!r}: {err}") from None
    return out


def bool_word(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError("expected true or false")
    return text.lower() == "true"


def add_judge_transport(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-transport", type=json_object, default=None, help=JUDGE_TRANSPORT_HELP)


def with_transport(judge: dict | None, transport: dict | None) -> dict | None:
    """An LLM judge's settings completed with the transport keys it does not set itself; any other judge (a
    programmatic one, or none) as it is."""
    if not judge or judge.get("kind") != "llm" or not transport:
        return judge
    return {**transport, **judge}


def fail(command: str, message: str) -> SystemExit:
    """A one-line error for the user (no traceback): `raise fail("sandbox", "...")`."""
    return SystemExit(f"cmt {command}: {message}")
