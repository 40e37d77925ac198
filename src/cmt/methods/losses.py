"""ACT and BCT consistency losses over paired clean/wrapped batches (Phase 3 for the regularization methods).

Each training pair is one row of `act_bct_clean.jsonl` and the same line of `act_bct_wrapped.jsonl`. Both sides
are rendered with their assistant turn (teacher-forced), tokenized separately and right-padded to their own batch
maximum. Per batch the model runs twice:

* the clean pass in eval mode under no_grad: the target (the current model, stop-gradient);
* the wrapped pass in train mode: it carries the gradient.

An `Alignment` says which clean position is compared with which wrapped position, row by row:

* `response` (default): the response span of each row, aligned per row. The span of a side is the positions whose
  output predicts a response token (position t with token t+1 in the assistant turn; the positions an SFT loss
  uses): it starts at the last token of the generation cue. Position i of the clean span is paired with
  position i of the wrapped span, up to the shorter span. Exact under right padding at any batch size.
* `reference`: the published reference's window. With C and W the padded lengths of the clean and wrapped
  batches and L = min(C, W), the last L positions of both padded batches are compared, masking positions that
  are padding on either side. Under right padding with batch size > 1 this pairs the wrong tokens in every row
  that is not the longest on both sides (the pairing offset is C - W, not c_i - w_i), and it also compares prompt
  tokens. Kept only for comparison with the reference.

Losses (m is the alignment mask, pooled over rows and aligned positions):

* ACT = mean over decoder layers l of  scale * sum_{b,j,d} m (h^w - h^c)^2 / (D * sum m), where h_l is the output
  of decoder layer l (captured by forward hooks: the raw residual stream, the last layer before the final norm;
  the embedding output is excluded). Layers with an empty mask are skipped.
* BCT = T^2 * sum_{b,j} m * [ -sum_v softmax(z^c/T)_v log_softmax(z^w/T)_v ] / sum m: soft-label cross-entropy
  from the clean logits (teacher) to the wrapped logits.

Both are computed in float32 whatever the autocast dtype. A batch with no aligned position gives a zero loss
that is still connected to the graph.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cmt.methods.loss_settings import ALIGNMENTS
from cmt.models.training import IGNORE, encode_chat

# ---------------------------------------------------------------- encoding and batching


@dataclass
class SideBatch:
    """One side (clean or wrapped) of a batch of pairs, right-padded."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    span_mask: torch.Tensor  # [B, T] bool: position t predicts a response token (token t+1)

    def to(self, device) -> SideBatch:
        return SideBatch(self.input_ids.to(device), self.attention_mask.to(device), self.span_mask.to(device))


def encode_side(tokenizer, messages: list[dict], max_length: int) -> dict:
    """Token ids and response-span mask for one conversation ending in an assistant turn."""
    enc = encode_chat(tokenizer, messages, max_length)
    labels = enc["labels"]
    span = [labels[t + 1] != IGNORE for t in range(len(labels) - 1)] + [False]
    return {"input_ids": enc["input_ids"], "span": span}


def collate_side(encoded: list[dict], pad_id: int) -> SideBatch:
    width = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    span = torch.zeros((len(encoded), width), dtype=torch.bool)
    for i, e in enumerate(encoded):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        attention[i, :n] = 1
        span[i, :n] = torch.tensor(e["span"], dtype=torch.bool)
    return SideBatch(input_ids, attention, span)


def collate_pairs(pairs: list[dict], pad_id: int) -> tuple[SideBatch, SideBatch]:
    """Pairs {"clean": encoded, "wrapped": encoded} -> (clean batch, wrapped batch), each right-padded."""
    return collate_side([p["clean"] for p in pairs], pad_id), collate_side(
        [p["wrapped"] for p in pairs], pad_id
    )


# ---------------------------------------------------------------- alignment


@dataclass
class Alignment:
    """Row-wise pairing of clean and wrapped positions: compare clean[b, clean_index[b, j]] with
    wrapped[b, wrapped_index[b, j]] wherever mask[b, j]."""

    clean_index: torch.Tensor  # [B, L] long
    wrapped_index: torch.Tensor  # [B, L] long
    mask: torch.Tensor  # [B, L] bool

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def response_alignment(clean_span: torch.Tensor, wrapped_span: torch.Tensor) -> Alignment:
    """Position i of each row's clean response span with position i of its wrapped one, up to the shorter."""
    rows = clean_span.shape[0]
    pairs = []
    for b in range(rows):
        c = torch.nonzero(clean_span[b], as_tuple=False).flatten()
        w = torch.nonzero(wrapped_span[b], as_tuple=False).flatten()
        n = min(len(c), len(w))
        pairs.append((c[:n], w[:n]))
    width = max([len(c) for c, _ in pairs] + [1])
    clean_index = torch.zeros((rows, width), dtype=torch.long, device=clean_span.device)
    wrapped_index = torch.zeros((rows, width), dtype=torch.long, device=clean_span.device)
    mask = torch.zeros((rows, width), dtype=torch.bool, device=clean_span.device)
    for b, (c, w) in enumerate(pairs):
        clean_index[b, : len(c)] = c
        wrapped_index[b, : len(w)] = w
        mask[b, : len(c)] = True
    return Alignment(clean_index, wrapped_index, mask)


def reference_alignment(clean_attention: torch.Tensor, wrapped_attention: torch.Tensor) -> Alignment:
    """The reference's end-aligned window over the padded batches (misaligned under right padding)."""
    rows, c_len = clean_attention.shape
    w_len = wrapped_attention.shape[1]
    length = min(c_len, w_len)
    device = clean_attention.device
    clean_index = torch.arange(c_len - length, c_len, device=device).expand(rows, length).clone()
    wrapped_index = torch.arange(w_len - length, w_len, device=device).expand(rows, length).clone()
    mask = clean_attention[:, c_len - length :].bool() & wrapped_attention[:, w_len - length :].bool()
    return Alignment(clean_index, wrapped_index, mask)


def align(alignment: str, clean: SideBatch, wrapped: SideBatch) -> Alignment:
    if alignment == "response":
        return response_alignment(clean.span_mask, wrapped.span_mask)
    if alignment == "reference":
        return reference_alignment(clean.attention_mask, wrapped.attention_mask)
    raise ValueError(f"unknown alignment {alignment!r}; valid: {list(ALIGNMENTS)}")


def gather_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, j], ...] for x of shape [B, T, ...] and index [B, L] -> [B, L, ...]."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expanded)


# ---------------------------------------------------------------- losses


def _zero_like_graph(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A zero loss that stays connected to the graph, so backward() works on an empty batch."""
    return sum(t.float().sum() * 0.0 for t in tensors)  # type: ignore[return-value]


def act_loss(
    clean_hidden: Sequence[torch.Tensor],
    wrapped_hidden: Sequence[torch.Tensor],
    alignment: Alignment,
    scale: float = 1e-4,
) -> torch.Tensor:
    """Layer-averaged masked mean squared difference of decoder-layer outputs, times `scale`."""
    if len(clean_hidden) != len(wrapped_hidden) or not clean_hidden:
        raise ValueError(
            f"need one hidden state per layer on both sides, got {len(clean_hidden)} and {len(wrapped_hidden)}"
        )
    mask = alignment.mask
    count = mask.sum()
    per_layer = []
    for hc, hw in zip(clean_hidden, wrapped_hidden, strict=True):
        if count == 0:
            continue
        c = gather_positions(hc, alignment.clean_index).float()
        w = gather_positions(hw, alignment.wrapped_index).float()
        squared = (w - c).pow(2).sum(-1)  # [B, L]
        squared = torch.where(mask, squared, torch.zeros_like(squared))
        per_layer.append(scale * squared.sum() / (hw.shape[-1] * count))
    if not per_layer:
        return _zero_like_graph(wrapped_hidden)
    return torch.stack(per_layer).mean()


def bct_loss(
    clean_logits: torch.Tensor, wrapped_logits: torch.Tensor, alignment: Alignment, temperature: float = 1.0
) -> torch.Tensor:
    """T^2 times the masked mean soft-label cross-entropy from clean (teacher) to wrapped logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = alignment.mask
    count = mask.sum()
    if count == 0:
        return _zero_like_graph([wrapped_logits])
    c = gather_positions(clean_logits, alignment.clean_index).float() / temperature
    w = gather_positions(wrapped_logits, alignment.wrapped_index).float() / temperature
    ce = -(torch.softmax(c, dim=-1) * torch.log_softmax(w, dim=-1)).sum(-1)  # [B, L]
    ce = torch.where(mask, ce, torch.zeros_like(ce))
    return temperature**2 * ce.sum() / count


# ---------------------------------------------------------------- forward passes


@dataclass
class Forward:
    """What a loss needs from one pass: decoder-layer outputs and/or logits, each [B, T, ...]."""

    hidden: list[torch.Tensor] | None = None
    logits: torch.Tensor | None = None


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (the ModuleList with num_hidden_layers entries)."""
    config = getattr(model, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    candidates = [
        m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList)
        and name.endswith("layers")
        and (n_layers is None or len(m) == n_layers)
    ]
    if not candidates:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return candidates[0]


def _accepts(model, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def forward_side(model, batch: SideBatch, need_hidden: bool, need_logits: bool) -> Forward:
    """One pass over a side; decoder-layer outputs are captured by forward hooks on every layer."""
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(hook) for layer in decoder_layers(model)] if need_hidden else []
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if not need_logits and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    try:
        out = model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return Forward(hidden=captured if need_hidden else None, logits=out.logits if need_logits else None)


def paired_forward(
    model, clean: SideBatch, wrapped: SideBatch, need_hidden: bool, need_logits: bool, train: bool = True
):
    """Clean pass (eval mode, no_grad: the stop-gradient target), then wrapped pass (train mode if `train`)."""
    model.eval()
    with torch.no_grad():
        c = forward_side(model, clean, need_hidden, need_logits)
    model.train(train)
    w = forward_side(model, wrapped, need_hidden, need_logits)
    return c, w
