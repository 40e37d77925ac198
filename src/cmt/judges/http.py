"""A minimal client for any OpenAI-compatible chat-completions endpoint (`vllm serve`, a hosted API).

Standard library only: `urllib.request` for HTTP. Failed requests are retried with jittered exponential
backoff, honouring Retry-After. The API key is read from the environment variable named by
`settings.api_key_env`; it is held only in memory, sent only in the Authorization header and redacted from
every error and log line, and redirects are refused so that the header cannot follow one to another host.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529})


class JudgeError(RuntimeError):
    """Base class of judge failures."""


class JudgeConfigError(JudgeError, ValueError):
    """Bad judge settings: unknown key, a secret in the config, a missing API-key variable."""


class ClientSettings(Protocol):
    """What the client reads of its settings (cmt.judges.llm.JudgeSettings has all of it)."""

    base_url: str
    model: str
    api_key_env: str | None
    temperature: float
    timeout: float
    max_retries: int
    backoff_base: float
    backoff_max: float
    retry_after_max: float


def redact_url(url: str) -> str:
    """A URL without user:password and without its query string (either can carry a key)."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would resend the Authorization header to the new location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


@dataclass(frozen=True)
class Reply:
    text: str
    usage: dict[str, int]
    finish_reason: str | None
    attempts: int


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds (a float is tolerated) or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # nan
        return None
    return max(0.0, seconds)


class ChatClient:
    """A minimal OpenAI-compatible chat-completions client with retries. Thread-safe."""

    def __init__(self, settings: ClientSettings):
        self.settings = settings
        self._api_key: str | None = None
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise JudgeConfigError(
                    f"environment variable {settings.api_key_env} (judge.api_key_env) is not set or empty"
                )
            self._api_key = key
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._lock = threading.Lock()
        self.attempts = 0
        self.retries = 0

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={redact_url(self.url)!r}, model={self.settings.model!r})"

    def redact(self, text: str) -> str:
        """`text` with the API key (and any bearer token) replaced, for errors and logs."""
        if self._api_key:
            text = text.replace(self._api_key, "[REDACTED]")
        return re.sub(r"(?i)(bearer\s+)[^\s\"',;]+", r"\1[REDACTED]", text)

    def _post(self, payload: bytes) -> Reply:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.settings.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            try:
                detail = err.read(500).decode("utf-8", "replace")
            except Exception:
                detail = ""
            message = f"HTTP {err.code} {err.reason}" + (f": {detail.strip()}" if detail.strip() else "")
            if err.code in RETRY_STATUS:
                raise _Retryable(message, parse_retry_after(err.headers.get("Retry-After"))) from None
            raise _Fatal(message) from None
        except (
            TimeoutError,
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            OSError,
        ) as err:
            reason = getattr(err, "reason", err)
            kind = "timeout" if isinstance(reason, TimeoutError) else type(reason).__name__
            raise _Retryable(f"{kind}: {reason}") from None
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            text = choice["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable(f"malformed response: {body[:200]!r}") from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Reply(
            text="" if text is None else str(text),  # null content (e.g. only reasoning): LLMJudge asks again
            usage={k: int(v) for k, v in usage.items() if k.endswith("_tokens") and isinstance(v, int)},
            finish_reason=choice.get("finish_reason"),
            attempts=1,
        )

    def _delay(self, retry: int, retry_after: float | None) -> float:
        s = self.settings
        ceiling = min(s.backoff_max, s.backoff_base * 2**retry)
        delay = random.uniform(ceiling / 2, ceiling)  # "equal jitter": desynchronised, never near zero
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_after_max))
        return delay

    def complete(self, messages: list[dict], max_tokens: int) -> Reply:
        """One chat completion, retried on the statuses in RETRY_STATUS, timeouts, connection errors and malformed
        JSON."""
        payload = json.dumps(
            {
                "model": self.settings.model,
                "messages": messages,
                "temperature": self.settings.temperature,
                "max_tokens": max_tokens,
            }
        ).encode()
        for attempt in range(self.settings.max_retries + 1):
            with self._lock:
                self.attempts += 1
                if attempt:
                    self.retries += 1
            try:
                reply = self._post(payload)
                return dataclasses.replace(reply, attempts=attempt + 1)
            except _Fatal as err:
                raise JudgeError(self.redact(f"{redact_url(self.url)}: {err}")) from None
            except _Retryable as err:
                if attempt == self.settings.max_retries:
                    raise JudgeError(
                        self.redact(f"{redact_url(self.url)}: {err} (after {attempt + 1} attempts)")
                    ) from None
                delay = self._delay(attempt, err.retry_after)
                log.warning(
                    "%s", self.redact(f"judge request failed ({err}); retry {attempt + 1} in {delay:.2f}s")
                )
                time.sleep(delay)
        raise AssertionError("unreachable")
