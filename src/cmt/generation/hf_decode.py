"""The HF backend's own decoding loop (greedy and nucleus sampling; beams stay with `generate`).

Two costs of transformers' `generate` dominate sampling on a CPU: its top-p warper sorts the whole vocabulary
and `torch.multinomial` is slow, and every sequence of a batch is computed until the longest one ends. Here the
nucleus is read off a top-k (a full sort only when it does not hold top_p of the mass), a token is drawn by
inverse CDF from a uniform, and finished rows leave the batch and its KV cache once they are a quarter of it.
Each row's uniforms come from its own seed, so a sample depends on its prompt, its index and the run seed, not
on the batch it fell in.
A prompt's samples share one prefill, and on models whose layers all attend to the full context the KV cache
is written into preallocated buffers rather than concatenated at every step; neither changes a token.
Greedy decoding picks the same tokens as `generate` (tests/test_hf_decode.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from cmt.generation.base import derive_seed

# Architectures whose greedy output this loop was checked to reproduce (tests/test_hf_decode.py); any other
# model decodes with transformers' `generate`.
DECODE_LOOP_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma2", "gpt_oss"})

# The nucleus is looked for in the NUCLEUS_TOP_K most likely tokens first; sorting all of a 50k-token
# vocabulary at every step is what made sampling slow.
NUCLEUS_TOP_K = 64
# Ended rows leave the batch (and its KV cache) when the rows still going are this share of it or fewer.
COMPACT_AT = 0.75


def row_uniforms(seed: int, rows: Sequence[tuple[int, int]], steps: int) -> torch.Tensor:
    """Uniforms in [0, 1) for each (prompt index, sample index) row and decoding step, one seeded stream a row."""
    out = torch.empty((len(rows), steps))
    for r, (prompt, sample) in enumerate(rows):
        gen = torch.Generator().manual_seed(derive_seed(seed, "generate", prompt, sample))
        out[r] = torch.rand(steps, generator=gen)
    return out


def nucleus_tokens(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax(logits / temperature) cut to its top-p nucleus (the fewest most likely
    tokens holding top_p of the mass, as transformers' TopPLogitsWarper keeps), drawn by inverse CDF at u."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    index = None
    if top_p < 1.0:
        k = min(NUCLEUS_TOP_K, probs.shape[-1])
        probs_desc, index = probs.topk(k, dim=-1)
        if k < probs.shape[-1] and bool((probs_desc.sum(-1) < top_p).any()):
            probs_desc, index = probs.sort(dim=-1, descending=True)
        mass_before = probs_desc.cumsum(-1) - probs_desc
        probs = torch.where(mass_before < top_p, probs_desc, 0.0)
    cdf = probs.cumsum(-1)
    at = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1), right=True)
    at = at.clamp(max=probs.shape[-1] - 1)
    return (at if index is None else index.gather(-1, at)).squeeze(-1)


@torch.inference_mode()
def decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    uniforms: torch.Tensor | None = None,
    repeats: int = 1,
) -> list[list[int]]:
    """Generated tokens per row of a left-padded batch, each up to and including its first end-of-turn token.
    Each prompt row yields `repeats` rows in a row (its samples). temperature 0 is greedy; otherwise `uniforms`
    (rows x max_new_tokens, rows = prompts x repeats) drive the draws."""
    rows = len(input_ids) * repeats
    if temperature > 0 and (uniforms is None or tuple(uniforms.shape) != (rows, max_new_tokens)):
        raise ValueError("sampling needs one uniform per row and step")
    device = input_ids.device
    mask = attention_mask
    # Left padding: positions count real tokens only, as `generate` numbers them.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = _new_cache(model, input_ids.shape[1] + max_new_tokens)
    # A prompt's samples share its prefill: a row's keys and values do not depend on the other rows of the
    # batch (tests/test_hf_decode.py), so computing them once and repeating them changes no sample.
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)  # fmt: skip
    next_position = positions[:, -1] + 1
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
        out.logits = out.logits.repeat_interleave(repeats, 0)
        mask, next_position = mask.repeat_interleave(repeats, 0), next_position.repeat_interleave(repeats, 0)
    live = torch.arange(rows, device=device)  # the output row of each batch row
    going = torch.ones(rows, dtype=torch.bool, device=device)  # batch rows that have not ended yet
    eos = torch.tensor(list(eos_ids), device=device)
    tokens = torch.full((rows, max_new_tokens), -1, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :]
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            token = nucleus_tokens(logits, temperature, top_p, uniforms[live.cpu(), step])
        tokens[live[going], step] = token[going]
        if step == max_new_tokens - 1:
            break
        going &= ~torch.isin(token, eos)
        n_going = int(going.sum())
        if n_going == 0:
            break
        # Ended rows stay in the batch, their tokens never kept, until they are a quarter of it: each removal
        # copies the KV cache, which cost more than the products of the extra rows.
        if n_going <= COMPACT_AT * len(going):
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            mask, live, token, next_position = mask[keep], live[keep], token[keep], next_position[keep]
            going = going[keep]
        mask = torch.cat([mask, mask.new_ones((len(mask), 1))], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None], cache=cache,
                    use_cache=True)  # fmt: skip
        next_position = next_position + 1
    return [[t for t in row if t != -1] for row in tokens.tolist()]


def _new_cache(model, capacity: int):
    """A DynamicCache; for models whose layers all attend to the full context, a cache whose layers write into
    buffers of `capacity` positions instead of concatenating at every step (which copies the whole cache)."""
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, get_layer_types_and_kwargs

    layer_types, _ = get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))
    if any(t != "full_attention" for t in layer_types):
        return DynamicCache(config=model.config)
    layer = _buffered_layer_class()
    return Cache(layers=[layer(capacity) for _ in layer_types])


@functools.cache
def _buffered_layer_class():
    """BufferedLayer, built on first use so that importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        """keys/values are views of the first `n` positions of preallocated buffers: the same shapes and values
        a concatenating layer holds, without the copy."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity

        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self.n = 0
            shape = (*key_states.shape[:2], self.capacity, key_states.shape[-1])
            self.key_buffer = key_states.new_zeros(shape)
            self.value_buffer = value_states.new_zeros((*shape[:3], value_states.shape[-1]))

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.n + key_states.shape[-2]
            if end > self.capacity:
                raise ValueError(f"KV cache of {self.capacity} positions cannot hold {end}")
            self.key_buffer[:, :, self.n : end] = key_states
            self.value_buffer[:, :, self.n : end] = value_states
            self.n = end
            self._views()
            return self.keys, self.values

        def _views(self):
            self.keys, self.values = self.key_buffer[:, :, : self.n], self.value_buffer[:, :, : self.n]

        def get_seq_length(self) -> int:
            return self.n if self.is_initialized else 0

        def batch_select_indices(self, indices):
            # Only the filled positions are copied: the rest of a buffer is never read before it is written.
            keys = self.key_buffer.new_empty((len(indices), *self.key_buffer.shape[1:]))
            values = self.value_buffer.new_empty((len(indices), *self.value_buffer.shape[1:]))
            keys[:, :, : self.n] = self.keys[indices]
            values[:, :, : self.n] = self.values[indices]
            self.key_buffer, self.value_buffer = keys, values
            self._views()

        def batch_repeat_interleave(self, repeats: int):
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._views()

    return BufferedLayer
