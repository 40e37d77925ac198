"""vLLM backend: the `Generator` interface over vLLM's offline `LLM` engine, for GPU nodes.

vllm is an optional extra (`pip install .[vllm]`) and is never imported when this module is imported: every
mapping from the project's settings to vLLM's arguments is a pure function in cmt.generation.vllm_params, and
every mapping from vLLM's outputs back to Completions is one here, all unit-tested without vllm
(tests/test_generation_vllm.py). Only `import_vllm` imports it; `get_engine` and `VLLMGenerator` use the
classes it returns (tests pass stand-ins).

Semantics follow the HF backend (src/cmt/generation/hf.py):
- prompts are rendered with the tokenizer's chat template exactly as `HFGenerator.render` does and sent to
  vLLM as token ids, so both backends see the same tokens;
- n completions per prompt, in prompt order; temperature 0 is greedy; num_beams > 1 is beam search (vLLM's
  `LLM.beam_search`) returning the best n beams;
- a completion ends at the first end-of-turn token (any of the generation config's EOS ids or the
  tokenizer's); `num_tokens` counts that token, as in the HF backend;
- `score` is log P(completion, end-of-turn | prompt) under the untempered model, from vLLM's prompt
  log-probs over prompt + completion + end-of-turn, summed over the completion span; `score_ids` the same over
  given token ids (a completion's `token_ids`: the sampled tokens, no text round trip).

Every sampled request carries its own seed, derived from the run seed and the prompt's position, so results
do not depend on how vLLM batches requests. The organism (or retrained) LoRA adapter is served as a
`LoRARequest` on the base model (never merged), with a stable integer id per adapter path.

Known differences from the HF backend: sampled tokens come from vLLM's own samplers, so sampled replies differ
from HF's for the same seed (each backend is reproducible on its own); vLLM's beam search stops a beam only at
the tokenizer's EOS (other end-of-turn ids end the reply but not the beam's ranking) and ranks finished beams by
log-prob over the length of prompt plus reply, where HF divides by the reply's length; `score` gives no
kl_uniform_mean (NaN), as vLLM returns no full next-token distributions at an affordable cost.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

from cmt.generation.base import (
    Completion,
    Generator,
    Messages,
    SamplingParams,
    SequenceScore,
    decode_reply,
    reply_prefix_ids,
)
from cmt.generation.vllm_params import (
    beam_search_kwargs,
    engine_kwargs,
    lora_request_kwargs,
    read_adapter_rank,
    request_seed,
    scoring_sampling_kwargs,
    to_vllm_sampling_kwargs,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install .[vllm]"


class VLLMNotInstalled(ImportError):
    """The vllm backend was selected but the vllm package is not importable here."""


def import_vllm() -> SimpleNamespace:
    """The vllm classes this backend uses, or a VLLMNotInstalled error that says how to install vllm."""
    try:
        from vllm import LLM
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import BeamSearchParams, SamplingParams
    except ImportError as err:
        raise VLLMNotInstalled(
            f"generation backend 'vllm' needs the vllm package, which is not importable here ({err}). "
            f"Install the optional extra: `{INSTALL_HINT}` (it pins vllm==0.30.0; next to the core numpy pin "
            "pip cannot solve it, so in the generate env of a GPU node run `pip install vllm==0.30.0`, as "
            "workflow/envs/generate.yml says), or set generation.backend: hf in the config."
        ) from err
    return SimpleNamespace(
        LLM=LLM, LoRARequest=LoRARequest, SamplingParams=SamplingParams, BeamSearchParams=BeamSearchParams
    )


# ---------------------------------------------------------------- vLLM outputs -> Completions (pure functions)


def merge_eos_ids(generation_eos: int | Sequence[int] | None, tokenizer_eos: int | None) -> list[int]:
    """End-of-turn token ids: the generation config's EOS ids plus the tokenizer's, sorted (as the HF
    backend builds them, so `[0]` is the same end-of-turn token that both backends score)."""
    if generation_eos is None:
        ids = set()
    elif isinstance(generation_eos, int):
        ids = {generation_eos}
    else:
        ids = set(generation_eos)
    ids.add(tokenizer_eos)
    eos = sorted(i for i in ids if i is not None)
    if not eos:
        raise ValueError("no end-of-turn token: neither the generation config nor the tokenizer names an EOS")
    return eos


def render_chat_ids(tokenizer, messages: Messages) -> list[int]:
    """Prompt token ids exactly as `HFGenerator.render` builds them: the chat template with the generation
    prompt, then tokenized without extra special tokens (the template adds BOS itself)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_from_tokens(
    token_ids: Sequence[int],
    eos_ids: Sequence[int],
    decode: Callable[[list[int]], str | None],
    stopped: bool = False,
    stop_reason: object = None,
) -> Completion:
    """A Completion from generated token ids, cut at the first end-of-turn token (as HFGenerator._decode).

    `stopped` is vLLM's finish_reason == "stop": the sequence ended on a stop token even where vLLM left that
    token out of `token_ids`. Its `token_ids` then get the stop token back from `stop_reason` (vLLM's id of a
    matched stop token); without one, which end-of-turn token ended the reply is unknown and they are None.
    """
    tokens = list(token_ids)
    sampled: list[int] | None = tokens
    finished = False
    for pos, tok in enumerate(tokens):
        if tok in eos_ids:
            tokens, sampled, finished = tokens[:pos], tokens[: pos + 1], True
            break
    if stopped and not finished:
        sampled = [*tokens, stop_reason] if stop_reason in eos_ids else None
    finished = finished or stopped
    text = decode(tokens)
    if text is None:  # no answer (harmony: no final channel): counted as unfinished
        text, finished = "", False
    return Completion(text=text, num_tokens=len(tokens) + int(finished), finished=finished,
                      token_ids=None if sampled is None else tuple(sampled))  # fmt: skip


def beam_completions(
    sequences: Sequence,
    prompt_len: int,
    n: int,
    eos_ids: Sequence[int],
    decode: Callable[[list[int]], str],
) -> list[Completion]:
    """The best n beams of one vLLM BeamSearchOutput (sequences best first; each `.tokens` holds the prompt
    and the continuation, so the prompt is cut off here)."""
    if len(sequences) < n:
        raise ValueError(f"beam search returned {len(sequences)} sequences, {n} requested")
    return [completion_from_tokens(seq.tokens[prompt_len:], eos_ids, decode) for seq in sequences[:n]]


def _logprob_value(entry) -> float:
    """vLLM stores a Logprob object (with `.logprob`) per token; plain floats are accepted too."""
    return float(getattr(entry, "logprob", entry))


def completion_logprob_sum(prompt_logprobs: Sequence, token_ids: Sequence[int], start: int) -> float:
    """Sum of log P(token_ids[i] | token_ids[:i]) for i in [start, len(token_ids)).

    `prompt_logprobs[i]` is vLLM's dict {token id: Logprob} for position i (None at position 0).
    """
    if len(prompt_logprobs) != len(token_ids):
        raise ValueError(f"{len(prompt_logprobs)} prompt log-prob positions for {len(token_ids)} tokens")
    if not 1 <= start < len(token_ids):
        raise ValueError(f"completion span start {start} outside 1..{len(token_ids) - 1}")
    total = 0.0
    for pos in range(start, len(token_ids)):
        entry = prompt_logprobs[pos]
        if entry is None or token_ids[pos] not in entry:
            raise ValueError(f"vLLM returned no log-prob for token {token_ids[pos]} at position {pos}")
        total += _logprob_value(entry[token_ids[pos]])
    return total


# ---------------------------------------------------------------- engine and generator (need vllm)

# One live engine per process, keyed by its arguments: a job that evaluates several adapters of one base model
# loads the weights once. A different key releases the old engine first (two would not fit on the GPU).
_ENGINES: dict[str, object] = {}


def release_engines() -> None:
    """Shut the cached engine down and return its GPU memory (best effort: vLLM has no public close)."""
    if not _ENGINES:
        return
    for llm in _ENGINES.values():
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()  # the engine-core process holds the weights and KV cache
    _ENGINES.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch comes with vllm
        pass


def get_engine(kwargs: dict, api: SimpleNamespace | None = None):
    """The vllm.LLM for these arguments, built once per process."""
    key = json.dumps(kwargs, sort_keys=True)
    if key not in _ENGINES:
        api = api or import_vllm()
        if _ENGINES:
            log.warning(
                "vLLM engine settings changed (set generation.vllm.max_lora_rank so the base and adapter "
                "evaluations share one engine); releasing the loaded engine before building a new one"
            )
            release_engines()
        log.info("building vLLM engine: %s", kwargs)
        _ENGINES[key] = api.LLM(**kwargs)
    return _ENGINES[key]


def eos_ids_of(model_dir: str | os.PathLike, tokenizer) -> list[int]:
    """End-of-turn ids from the model directory's generation config (else config.json) and the tokenizer."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation_eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except OSError:  # no generation_config.json: HF derives it from config.json
        generation_eos = AutoConfig.from_pretrained(str(model_dir)).eos_token_id
    return merge_eos_ids(generation_eos, tokenizer.eos_token_id)


class VLLMGenerator(Generator):
    """Generation and scoring through a vllm.LLM, with an optional LoRA adapter served per request."""

    def __init__(
        self,
        llm,
        tokenizer,
        eos_ids: Sequence[int],
        adapter: str | os.PathLike | None = None,
        desc: str = "generate",
        api: SimpleNamespace | None = None,
        reply_format: str = "plain",
    ):
        self.vllm = api or import_vllm()
        self.llm = llm
        self.tokenizer = tokenizer
        self.reply_format = reply_format
        self.eos_ids = list(eos_ids)
        self.desc = desc
        self.lora_request = (
            self.vllm.LoRARequest(**lora_request_kwargs(adapter)) if adapter is not None else None
        )
        self._warned_kl = False

    def render(self, messages: Messages) -> list[int]:
        return render_chat_ids(self.tokenizer, messages)

    def _decode(self, tokens: list[int]) -> str | None:
        return decode_reply(self.tokenizer, tokens, self.reply_format)

    def generate(
        self, prompts: list[Messages], n: int, params: SamplingParams, seed: int
    ) -> list[list[Completion]]:
        encoded = [self.render(p) for p in prompts]
        if not encoded:
            return []
        start = time.perf_counter()
        if params.num_beams > 1:
            results = self._beam_search(encoded, n, params)
        else:
            requests = [
                self.vllm.SamplingParams(
                    **to_vllm_sampling_kwargs(params, n, request_seed(seed, i), self.eos_ids)
                )
                for i in range(len(encoded))
            ]
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for ids in encoded],
                requests,
                use_tqdm=False,
                lora_request=self.lora_request,
            )
            if len(outputs) != len(encoded):
                raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(encoded)} prompts")
            results = [
                [
                    completion_from_tokens(
                        o.token_ids,
                        self.eos_ids,
                        self._decode,
                        o.finish_reason == "stop",
                        getattr(o, "stop_reason", None),
                    )
                    for o in sorted(out.outputs, key=lambda o: o.index)
                ]
                for out in outputs
            ]
        self._log_throughput(results, time.perf_counter() - start)
        return results

    def _beam_search(
        self, encoded: list[list[int]], n: int, params: SamplingParams
    ) -> list[list[Completion]]:
        beam_params = self.vllm.BeamSearchParams(**beam_search_kwargs(params, n))
        outputs = self.llm.beam_search(
            [{"prompt_token_ids": ids} for ids in encoded], beam_params, lora_request=self.lora_request
        )
        return [
            beam_completions(out.sequences, len(ids), n, self.eos_ids, self._decode)
            for out, ids in zip(outputs, encoded, strict=True)
        ]

    def _log_throughput(self, results: list[list[Completion]], seconds: float) -> None:
        tokens = sum(c.num_tokens for cands in results for c in cands)
        log.info(
            "%s: %d sequences, %d tokens in %.1f s (%.0f tokens/s)",
            self.desc,
            sum(len(c) for c in results),
            tokens,
            seconds,
            tokens / max(seconds, 1e-9),
        )

    def score(
        self, prompts: list[Messages], completions: list[str], end_of_turn: bool = True
    ) -> list[SequenceScore]:
        """log P(completion, end-of-turn | prompt) (end_of_turn False: without the end-of-turn token).
        kl_uniform_mean is NaN: it needs the full next-token distribution at every position, which vLLM
        returns only as per-token Python dicts (far too slow); use the hf backend for self_certainty's
        `score: kl_uniform`."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        prefix = reply_prefix_ids(self.tokenizer, self.reply_format)
        pairs = [(self.render(m) + prefix, self.tokenizer(text, add_special_tokens=False)["input_ids"])
                 for m, text in zip(prompts, completions, strict=True)]  # fmt: skip
        return self._score_pairs(pairs, end_of_turn)

    def score_ids(
        self, prompts: list[Messages], token_ids: list[Sequence[int]], end_of_turn: bool = False
    ) -> list[SequenceScore]:
        """log P(token_ids | prompt) right after the generation prompt (see `Generator.score_ids`)."""
        if len(prompts) != len(token_ids):
            raise ValueError(f"{len(prompts)} prompts but {len(token_ids)} token id lists")
        return self._score_pairs([(self.render(m), list(t)) for m, t in zip(prompts, token_ids, strict=True)],
                                 end_of_turn)  # fmt: skip

    def _score_pairs(
        self, pairs: list[tuple[list[int], list[int]]], end_of_turn: bool
    ) -> list[SequenceScore]:
        """Prompt log-probs of prompt + target (+ end-of-turn), summed over the target; an empty target scores
        0 without a request."""
        if not self._warned_kl and pairs:
            log.info("vllm backend: scores carry no kl_uniform_mean (NaN); mean_logprob is exact")
            self._warned_kl = True
        sequences = [(p, [*t, self.eos_ids[0]] if end_of_turn else list(t)) for p, t in pairs]
        asked = [i for i, (_, t) in enumerate(sequences) if t]
        scores = [SequenceScore(0.0, 0, math.nan) for _ in sequences]
        if not asked:
            return scores
        request = self.vllm.SamplingParams(**scoring_sampling_kwargs())
        outputs = self.llm.generate(
            [{"prompt_token_ids": sequences[i][0] + sequences[i][1]} for i in asked],
            request,
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        for i, out in zip(asked, outputs, strict=True):
            prompt, target = sequences[i]
            total = completion_logprob_sum(out.prompt_logprobs, prompt + target, len(prompt))
            scores[i] = SequenceScore(total, len(target), math.nan)
        return scores


def load_vllm_generator(
    model_dir: str | os.PathLike,
    adapter: str | os.PathLike | None,
    model_settings: dict,
    desc: str,
    shares_gpu: bool = False,
) -> VLLMGenerator:
    """The base model in a (cached) vLLM engine, serving `adapter` as a LoRA request.

    Tensor parallelism spans model_settings["gpus"] GPUs; without that key, every visible GPU (what Slurm
    allocated to the job).
    """
    # Before vllm imports huggingface_hub, which reads the variable once (the job's shell should export it).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    api = import_vllm()
    from cmt.models.loading import load_tokenizer

    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    gpus = model_settings.get("gpus")
    if gpus is None:
        import torch

        gpus = max(1, torch.cuda.device_count())
        log.info("model settings name no gpus: tensor parallel over the %d visible GPU(s)", gpus)
    tokenizer = load_tokenizer(model_dir)
    rank = read_adapter_rank(adapter) if adapter is not None else None
    llm = get_engine(engine_kwargs(model_dir, model_settings, gpus, rank, shares_gpu), api)
    return VLLMGenerator(llm, tokenizer, eos_ids_of(model_dir, tokenizer), adapter, desc, api,
                         reply_format=model_settings.get("reply_format", "plain"))  # fmt: skip
