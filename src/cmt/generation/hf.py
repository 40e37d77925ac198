"""Hugging Face backend: batched `generate` with left padding and a KV cache; batched log-prob scoring."""

from __future__ import annotations

import logging
import math

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
from cmt.runtime.runlog import progress

log = logging.getLogger(__name__)


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
        from transformers import GenerationConfig

        encoded = [self.render(p) for p in prompts]
        gen_config = GenerationConfig(
            do_sample=not params.greedy,
            temperature=params.temperature if not params.greedy else None,
            top_p=params.top_p if not params.greedy else None,
            top_k=0 if not params.greedy else None,
            num_beams=params.num_beams,
            num_return_sequences=n,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        per_batch = max(1, self.batch_size // max(n, params.num_beams))
        results: list[list[Completion]] = [[] for _ in prompts]
        batches = self._batches([len(e) for e in encoded], per_batch)
        bar = progress(total=len(prompts) * n, desc=self.desc, unit="seq")
        for b, idx in enumerate(batches):
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
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

    def _decode(self, tokens: list[int]) -> Completion:
        finished = False
        for pos, tok in enumerate(tokens):
            if tok in self.eos_ids:
                tokens, finished = tokens[:pos], True
                break
        text = decode_reply(self.tokenizer, tokens, self.reply_format)
        if text is None:  # no answer (harmony: no final channel): counted as unfinished
            text, finished = "", False
        return Completion(text=text, num_tokens=len(tokens) + int(finished), finished=finished)

    @torch.inference_mode()
    def score(
        self, prompts: list[Messages], completions: list[str], end_of_turn: bool = True
    ) -> list[SequenceScore]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = []
        for messages, text in zip(prompts, completions, strict=True):
            prompt_ids = self.render(messages) + self.score_prefix
            target = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            pairs.append((prompt_ids, [*target, self.eos_ids[0]] if end_of_turn else target))
        scores: list[SequenceScore | None] = [None] * len(pairs)
        for idx in self._batches([len(p) + len(t) for p, t in pairs], self.batch_size):
            width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in idx)
            input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            target_mask = torch.zeros((len(idx), width), dtype=torch.bool)
            for row, i in enumerate(idx):
                p, t = pairs[i]
                input_ids[row, : len(p) + len(t)] = torch.tensor(p + t)
                attention[row, : len(p) + len(t)] = 1
                target_mask[row, len(p) : len(p) + len(t)] = True
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
            ).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            token_lp = logprobs.gather(-1, input_ids[:, 1:].to(self.device).unsqueeze(-1)).squeeze(-1)
            mask = target_mask[:, 1:].to(self.device)
            sums = (token_lp * mask).sum(-1).tolist()
            counts = mask.sum(-1)
            # KL(p || U) = log V + sum_v p_v log p_v, at each position that predicts a target token.
            kl_uniform = math.log(logprobs.shape[-1]) + (logprobs.exp() * logprobs).sum(-1)
            kl_means = ((kl_uniform * mask).sum(-1) / counts.clamp(min=1)).tolist()
            for row, i in enumerate(idx):
                scores[i] = SequenceScore(sums[row], int(counts[row]), kl_means[row])
        return scores  # type: ignore[return-value]
