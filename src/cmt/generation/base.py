"""The `Generator` interface shared by every backend."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. temperature 0 means greedy; num_beams > 1 means beam search (greedy beams)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    num_beams: int = 1

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("beam search is deterministic here: use temperature 0 with num_beams > 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)


# How a model's reply is laid out. plain: the decoded text is the reply. harmony (gpt-oss): the model writes an
# analysis channel, then the answer in the final channel; only the final channel is the reply.
REPLY_FORMATS = ("plain", "harmony")
HARMONY_FINAL = "<|channel|>final<|message|>"
_HARMONY_MESSAGE_ENDS = ("<|end|>", "<|return|>", "<|call|>", "<|start|>")


def harmony_final(raw: str) -> str | None:
    """The last final-channel message of a harmony-format reply decoded with its special tokens; None if the
    reply has no final channel (the reasoning used up the token budget)."""
    at = raw.rfind(HARMONY_FINAL)
    if at < 0:
        return None
    text = raw[at + len(HARMONY_FINAL) :]
    ends = [i for i in (text.find(end) for end in _HARMONY_MESSAGE_ENDS) if i >= 0]
    return (text[: min(ends)] if ends else text).strip()


def decode_reply(tokenizer, tokens: list[int], reply_format: str = "plain") -> str | None:
    """The reply text of generated tokens (end of turn already cut off); None: the reply holds no answer."""
    if reply_format == "plain":
        return tokenizer.decode(tokens, skip_special_tokens=True)
    if reply_format == "harmony":
        return harmony_final(tokenizer.decode(tokens, skip_special_tokens=False))
    raise ValueError(f"unknown reply_format {reply_format!r}; valid: {list(REPLY_FORMATS)}")


def reply_prefix_ids(tokenizer, reply_format: str = "plain") -> list[int]:
    """Tokens between the generation prompt and the reply text, for teacher-forced scoring of a reply: the
    final channel's header for harmony (the scored text is the final answer, not the reasoning)."""
    if reply_format == "harmony":
        return tokenizer(HARMONY_FINAL, add_special_tokens=False)["input_ids"]
    return []


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finished: bool  # ended with an end-of-turn token rather than hitting max_new_tokens
    # The sampled tokens as generated: up to and including the end-of-turn token that stopped the reply (none
    # when the budget cut it), every channel of a harmony reply included. None: the backend cannot say.
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SequenceScore:
    """Teacher-forced statistics of one completion under the model (untempered distribution)."""

    logprob_sum: float
    num_tokens: int
    # Self-certainty of Kang et al.: mean over positions of KL(next-token distribution || uniform).
    kl_uniform_mean: float = float("nan")

    @property
    def logprob_mean(self) -> float:
        return self.logprob_sum / max(self.num_tokens, 1)


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed for one sampler, derived from the run seed and what the sampler is for."""
    digest = hashlib.sha256(":".join(map(str, (seed, *purpose))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Generator(abc.ABC):
    """Batched generation and teacher-forced scoring of chat prompts."""

    @abc.abstractmethod
    def generate(
        self, prompts: list[Messages], n: int, params: SamplingParams, seed: int
    ) -> list[list[Completion]]:
        """n completions per prompt, in prompt order; seeded so the same call gives the same output."""

    @abc.abstractmethod
    def score(
        self, prompts: list[Messages], completions: list[str], end_of_turn: bool = True
    ) -> list[SequenceScore]:
        """log P(completion, end-of-turn | prompt) per pair, under the loaded model. With end_of_turn False,
        log P(completion | prompt) alone: the probability of a reply cut at the token budget."""

    def score_ids(
        self, prompts: list[Messages], token_ids: list[Sequence[int]], end_of_turn: bool = False
    ) -> list[SequenceScore]:
        """log P(token_ids | prompt) per pair, teacher-forced right after the generation prompt (no reply
        prefix: `Completion.token_ids` already hold everything generated, end-of-turn included when sampled).
        With end_of_turn True, the backend's end-of-turn token is appended and scored too."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot score token ids; score the decoded text with `score` instead"
        )


class RepeatedCallCache(Generator):
    """A generator whose repeated calls (same prompts, n, settings and seed) return the first call's outputs.
    Generation is seeded, so a repeat could only give the same again: a job that meets the same weights twice
    (two adapters trained on identical labels) generates once."""

    def __init__(self, inner: Generator):
        self.inner = inner
        self._generated: dict[str, list[list[Completion]]] = {}

    def generate(
        self, prompts: list[Messages], n: int, params: SamplingParams, seed: int
    ) -> list[list[Completion]]:
        import json

        key = json.dumps([prompts, n, params.to_dict(), seed], sort_keys=True)
        if key not in self._generated:
            self._generated[key] = self.inner.generate(prompts, n, params, seed)
        return self._generated[key]

    def score(
        self, prompts: list[Messages], completions: list[str], end_of_turn: bool = True
    ) -> list[SequenceScore]:
        return self.inner.score(prompts, completions, end_of_turn)

    def score_ids(
        self, prompts: list[Messages], token_ids: list[Sequence[int]], end_of_turn: bool = False
    ) -> list[SequenceScore]:
        return self.inner.score_ids(prompts, token_ids, end_of_turn)
