"""Hugging Face backend: batched decoding with left padding and a KV cache (cmt.generation.hf_decode; beams and
untested architectures use transformers' `generate`); batched log-prob scoring."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from cmt.generation.base import (
    Completion,
    Generator,
    Messages,
    SamplingParams,
    SequenceScore,
    decode_reply,
    derive_seed,
    reply_prefix_ids,
)
from cmt.generation.hf_decode import DECODE_LOOP_MODEL_TYPES, decode, row_uniforms
from cmt.runtime.runlog import progress

log = logging.getLogger(__name__)


# generate() fills every setting left None from the model's generation_config (Qwen's carries a repetition
# penalty): pinned to no-ops so that samples come from the model's own distribution, as `score` and vLLM see it.
NEUTRAL_PROCESSORS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0,
                      "typical_p": 1.0, "min_p": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}  # fmt: skip


# Causal LMs whose logits are lm_head(model(...).last_hidden_state), with nothing after the head.
TARGET_HEAD_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


class HFGenerator(Generator):
    def __init__(
        self, model, tokenizer, batch_size: int = 64, desc: str = "generate", reply_format: str = "plain"
    ):
        self.model = model.eval()
        self.reply_format = reply_format
        self.score_prefix = reply_prefix_ids(tokenizer, reply_format)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.desc = desc
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(i for i in eos_ids if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def render(self, messages: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _batches(self, lengths: list[int], size: int):
        """Index batches over length-sorted items, so padding stays small."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        return [order[i : i + size] for i in range(0, len(order), size)]

    @torch.inference_mode()
    def generate(
        self, prompts: list[Messages], n: int, params: SamplingParams, seed: int
    ) -> list[list[Completion]]:
        encoded = [self.render(p) for p in prompts]
        if params.greedy:
            # Greedy decoding is a function of the prompt: a prompt met again (self-rewarding grades each sampled
            # reply, and a small model samples the same reply often) is decoded once.
            first = {}
            for i, ids in enumerate(encoded):
                first.setdefault(tuple(ids), i)
            if len(first) < len(encoded):
                distinct = self.generate([prompts[i] for i in first.values()], n, params, seed)
                by_prompt = dict(zip(first, distinct, strict=True))
                return [list(by_prompt[tuple(ids)]) for ids in encoded]
        own_loop = params.num_beams == 1 and self.model.config.model_type in DECODE_LOOP_MODEL_TYPES
        gen_config = None if own_loop else self._generation_config(n, params)
        per_batch = max(1, self.batch_size // max(n, params.num_beams))
        results: list[list[Completion]] = [[] for _ in prompts]
        bar = progress(total=len(prompts) * n, desc=self.desc, unit="seq")
        for b, idx in enumerate(self._batches([len(e) for e in encoded], per_batch)):
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            if own_loop:
                rows = [(i, j) for i in idx for j in range(n)]
                new = decode(
                    self.model,
                    input_ids.to(self.device),
                    attention.to(self.device),
                    self.eos_ids,
                    params.max_new_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    uniforms=None if params.greedy else row_uniforms(seed, rows, params.max_new_tokens),
                    repeats=n,
                )
            else:
                torch.manual_seed(derive_seed(seed, "generate", b))
                out = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    generation_config=gen_config,
                )
                new = out[:, width:].tolist()
            for row, i in enumerate(idx):
                for j in range(n):
                    results[i].append(self._decode(new[row * n + j]))
            bar.update(len(idx) * n)
        bar.close()
        return results

    def _generation_config(self, n: int, params: SamplingParams):
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=not params.greedy,
            temperature=params.temperature if not params.greedy else None,
            top_p=params.top_p if not params.greedy else None,
            top_k=0 if not params.greedy else None,
            num_beams=params.num_beams,
            num_return_sequences=n,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            **NEUTRAL_PROCESSORS,
        )

    def _decode(self, tokens: list[int]) -> Completion:
        finished, sampled = False, tokens
        for pos, tok in enumerate(tokens):
            if tok in self.eos_ids:
                tokens, sampled, finished = tokens[:pos], tokens[: pos + 1], True
                break
        text = decode_reply(self.tokenizer, tokens, self.reply_format)
        if text is None:  # no answer (harmony: no final channel): counted as unfinished
            text, finished = "", False
        return Completion(text=text, num_tokens=len(tokens) + int(finished), finished=finished,
                          token_ids=tuple(sampled))  # fmt: skip

    def score(
        self, prompts: list[Messages], completions: list[str], end_of_turn: bool = True
    ) -> list[SequenceScore]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        targets = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in completions]
        prefix = self.score_prefix
        return self._score_pairs([(self.render(p) + prefix, t) for p, t in zip(prompts, targets, strict=True)],
                                 end_of_turn)  # fmt: skip

    def score_ids(
        self, prompts: list[Messages], token_ids: list[Sequence[int]], end_of_turn: bool = False
    ) -> list[SequenceScore]:
        if len(prompts) != len(token_ids):
            raise ValueError(f"{len(prompts)} prompts but {len(token_ids)} token id lists")
        return self._score_pairs([(self.render(p), list(t)) for p, t in zip(prompts, token_ids, strict=True)],
                                 end_of_turn)  # fmt: skip

    @torch.inference_mode()
    def _score_pairs(
        self, pairs: list[tuple[list[int], list[int]]], end_of_turn: bool
    ) -> list[SequenceScore]:
        """Teacher-forced scores of each (prompt ids, target ids), the end-of-turn token appended if asked."""
        if end_of_turn:
            pairs = [(p, [*t, self.eos_ids[0]]) for p, t in pairs]
        scores: list[SequenceScore | None] = [None] * len(pairs)
        for idx in self._batches([len(p) + len(t) for p, t in pairs], self.batch_size):
            width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in idx)
            input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            # The positions whose next token is a target.
            predicts = torch.zeros((len(idx), width), dtype=torch.bool)
            for row, i in enumerate(idx):
                p, t = pairs[i]
                input_ids[row, : len(p) + len(t)] = torch.tensor(p + t)
                attention[row, : len(p) + len(t)] = 1
                predicts[row, max(len(p) - 1, 0) : len(p) + len(t) - 1] = True
            input_ids, attention, predicts = (x.to(self.device) for x in (input_ids, attention, predicts))
            mask = predicts[:, :-1]
            logprobs = torch.log_softmax(self._target_logits(input_ids, attention, mask), dim=-1)
            token_lp = logprobs.gather(-1, input_ids[:, 1:][mask].unsqueeze(-1)).squeeze(-1)
            # KL(p || U) = log V + sum_v p_v log p_v, at each position that predicts a target token.
            kl_uniform = math.log(logprobs.shape[-1]) + (logprobs.exp() * logprobs).sum(-1)
            # Back into (rows, positions) so that each row sums the same values in the same order as ever.
            per_position = torch.zeros(mask.shape, dtype=logprobs.dtype, device=self.device)
            sums = per_position.masked_scatter(mask, token_lp).sum(-1).tolist()
            counts = mask.sum(-1)
            kl_sums = per_position.masked_scatter(mask, kl_uniform).sum(-1)
            kl_means = (kl_sums / counts.clamp(min=1)).tolist()
            for row, i in enumerate(idx):
                scores[i] = SequenceScore(sums[row], int(counts[row]), kl_means[row])
        return scores  # type: ignore[return-value]

    def _target_logits(self, input_ids, attention, mask) -> torch.Tensor:
        """Float logits at the positions of `mask` only, (positions, vocab): the LM head and the softmax over the
        vocabulary skip the prompt, about a third of a scoring pass on the toy model (docs/benchmarks.md). The
        full logits' rows, up to the rounding of a matrix product on fewer rows. Other model types, whose head
        may do more (gemma2 caps its logits), and PEFT wrappers compute them all."""
        plain = not hasattr(self.model, "get_base_model")
        if plain and self.model.config.model_type in TARGET_HEAD_MODEL_TYPES:
            hidden = self.model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            return self.model.lm_head(hidden[:, :-1][mask]).float()
        return self.model(input_ids=input_ids, attention_mask=attention).logits[:, :-1][mask].float()
