"""Phase-2 consistency methods and baselines: one module per method, each with its own config subtree.

A method module defines NAME, FAMILY ("label_generation", "regularization" or "baseline"), SELECTS (whether
k is a selection count) and `label(context, examples, settings, k, seed) -> list[CandidateRow]`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from cmt.generation import Generator

METHODS = ("gst",)


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {list(METHODS)}")
    return importlib.import_module(f"cmt.methods.{name}")


@dataclass
class LabelContext:
    """What a labeller may use: the organism as a generator, and the model's token budget."""

    generator: Generator
    max_new_tokens: int


def candidate_rows(example, completions, params, scores=None, selected: int | None = 0) -> list[dict]:
    """Per-candidate rows for the label parquet; `selected` is the index of the label (None: dropped)."""
    import json

    rows = []
    for i, c in enumerate(completions):
        rows.append(
            {
                "prompt_id": example.prompt_id,
                "prompt": json.dumps(example.prompt),
                "candidate_index": i,
                "text": c.text,
                "num_tokens": c.num_tokens,
                "finished": c.finished,
                "score": float("nan") if scores is None else float(scores[i]),
                "selected": selected == i,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "num_beams": params.num_beams,
                "max_new_tokens": params.max_new_tokens,
            }
        )
    return rows


def argmax_first(scores: list[float]) -> int:
    """Index of the best score; ties go to the first candidate."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best
