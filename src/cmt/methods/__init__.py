"""Phase-2 consistency methods and baselines: one module per method, each with its own config subtree.

A method module declares `SPEC` (`cmt.methods.registry.MethodSpec`: name, family, capabilities) and, unless it is a
Phase-3 loss, `label(context, examples, settings, k, seed) -> list[CandidateRow]`. This module holds what the
labellers share.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cmt.generation import Completion, Generator, SamplingParams


@dataclass
class LabelContext:
    """What a labeller may use.

    generator: the organism; max_new_tokens: the model's reply budget; organism: the organism module when it
    defines `final_answer` (multi-view's normalised checker); rubric: the organism's self-rewarding rubric
    with {question} and {answer} placeholders; reward_model: an object with `score(prompts, completions)`,
    built only for the methods that use one; judge_settings: the LLM judge block, when a method asks a judge.
    """

    generator: Generator
    max_new_tokens: int
    organism: Any = None
    rubric: str | None = None
    reward_model: Any = None
    judge_settings: dict | None = None  # the config's LLM judge block (multi_view's `checker: judge`)
    data_dir: str | None = None  # the organism's folder: the controls read their reference replies there


@dataclass(frozen=True)
class Candidate:
    """One candidate of a prompt: its completion, how it was decoded, and optional score and extras."""

    completion: Completion
    params: SamplingParams
    kind: str = "sample"
    score: float = float("nan")
    extra: dict = field(default_factory=dict)


def candidate_rows(example, candidates: list[Candidate], selected: int | None) -> list[dict]:
    """Per-candidate rows for the label parquet; `selected` is the index of the label (None: dropped)."""
    rows = []
    for i, cand in enumerate(candidates):
        rows.append(
            {
                "prompt_id": example.prompt_id,
                "prompt": json.dumps(example.prompt),
                "candidate_index": i,
                "kind": cand.kind,
                "text": cand.completion.text,
                "num_tokens": cand.completion.num_tokens,
                "finished": cand.completion.finished,
                "score": float(cand.score),
                "selected": selected == i,
                "temperature": cand.params.temperature,
                "top_p": cand.params.top_p,
                "num_beams": cand.params.num_beams,
                "max_new_tokens": cand.params.max_new_tokens,
                "extra": json.dumps(cand.extra, sort_keys=True) if cand.extra else "",
            }
        )
    return rows


def argmax_first(scores: list[float]) -> int | None:
    """Index of the best score; ties go to the first candidate; NaN never wins; None if all are NaN."""
    best = None
    for i, s in enumerate(scores):
        if math.isnan(s):
            continue
        if best is None or s > scores[best]:
            best = i
    return best


# Why a consistency prompt gave Phase 3 no label (`drop_reasons`).
DROP_REASONS = ("views_disagree", "no_parsed_score", "empty_label", "not_selected")


def _extras(rows: pd.DataFrame) -> list[dict]:
    return (
        [json.loads(e) if e else {} for e in rows["extra"]] if "extra" in rows.columns else [{}] * len(rows)
    )


def drop_reasons(rows: pd.DataFrame) -> dict[str, int]:
    """Per reason, the prompts of a label parquet that Phase 3 gets no label for.

    views_disagree: multi_view's views all disagreed; no_parsed_score: no candidate had a finite score (e.g.
    every self-rewarding grade unparsed); empty_label: a label was chosen but is empty after stripping (Phase 3
    skips it); not_selected: any other prompt with no selected candidate.
    """
    counts = dict.fromkeys(DROP_REASONS, 0)
    if rows.empty:
        return counts
    # Whole columns at once: a pandas group per prompt cost ~50 ms per label file.
    extras = _extras(rows)
    per_row = pd.DataFrame(
        {
            "prompt_id": rows["prompt_id"].to_numpy(),
            "selected": rows["selected"].astype(bool).to_numpy(),
            "has_agrees": ["agrees" in e for e in extras],
            "agrees": [bool(e.get("agrees")) for e in extras],
            # A file without scores (hand-made labels) has none to parse.
            "finite": np.isfinite(rows["score"].to_numpy(dtype=float))
            if "score" in rows.columns
            else np.zeros(len(rows), dtype=bool),
        }
    )
    chosen = per_row[per_row["selected"]].drop_duplicates("prompt_id")  # each prompt's first selected row
    texts = rows["text"].to_numpy()[chosen.index.to_numpy()]
    counts["empty_label"] += sum(not str(text).strip() for text in texts)
    unlabelled = per_row[~per_row["prompt_id"].isin(chosen["prompt_id"])]
    by_prompt = unlabelled.groupby("prompt_id", sort=False)[["has_agrees", "agrees", "finite"]].any()
    views = by_prompt["has_agrees"]
    counts["empty_label"] += int((views & by_prompt["agrees"]).sum())
    counts["views_disagree"] += int((views & ~by_prompt["agrees"]).sum())
    counts["no_parsed_score"] += int((~views & ~by_prompt["finite"]).sum())
    counts["not_selected"] += int((~views & by_prompt["finite"]).sum())
    return counts


def parse_failures(rows: pd.DataFrame) -> int:
    """Candidates whose grade or checker reply did not parse (`extra.parse_ok` false)."""
    return sum(e.get("parse_ok") is False for e in _extras(rows))


def sample_params(context: LabelContext, settings: dict, temperature_key="temperature") -> SamplingParams:
    return SamplingParams(
        temperature=settings[temperature_key],
        top_p=settings.get("top_p", 1.0),
        max_new_tokens=settings.get("max_new_tokens") or context.max_new_tokens,
    )


def greedy_params(context: LabelContext, settings: dict) -> SamplingParams:
    return SamplingParams(
        temperature=0.0, max_new_tokens=settings.get("max_new_tokens") or context.max_new_tokens
    )


def with_suffix(prompt: list[dict], suffix: str) -> list[dict]:
    """The prompt with `suffix` appended to its last user turn."""
    last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    return [{**m, "content": m["content"] + suffix} if i == last else m for i, m in enumerate(prompt)]


def last_user_turn(prompt: list[dict]) -> str:
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def reference_labels(context: LabelContext, examples, split: str) -> list[dict]:
    """A control's labels: each prompt's reply in the organism's `split` file (same prompts as consistency),
    scored by the organism so the candidate rows carry its log-prob like any other label."""
    from pathlib import Path

    from cmt.data.splits import load_split
    from cmt.runtime.io import DataError

    if context.data_dir is None:
        raise ValueError(f"the {split} control needs the organism's data folder")
    replies = {e.prompt_id: e.messages[-1]["content"] for e in load_split(Path(context.data_dir), split)
               if e.messages and e.messages[-1]["role"] == "assistant"}  # fmt: skip
    missing = [e.prompt_id for e in examples if e.prompt_id not in replies]
    if missing:
        raise DataError(f"{context.data_dir}/{split}.jsonl: no reply for {len(missing)} consistency prompt(s), "
                        f"e.g. {missing[0]}")  # fmt: skip
    return _scored_labels(context, examples, [replies[e.prompt_id] for e in examples])


def own_reply_labels(context: LabelContext, examples) -> list[dict]:
    """A control's labels when its prompts come with their replies (its PROMPT_SPLIT): each example's own last
    assistant turn, scored by the organism."""
    from cmt.runtime.io import DataError

    no_reply = [e for e in examples if not e.messages or e.messages[-1]["role"] != "assistant"]
    if no_reply:
        raise DataError(f"{no_reply[0].source}: no assistant reply to train on ({len(no_reply)} such rows)")
    return _scored_labels(context, examples, [e.messages[-1]["content"] for e in examples])


def _scored_labels(context: LabelContext, examples, texts: list[str]) -> list[dict]:
    """One selected candidate row per example, `texts` its label, scored by the organism."""
    scores = context.generator.score([e.prompt for e in examples], texts)
    params = SamplingParams(temperature=0.0, max_new_tokens=context.max_new_tokens)
    rows = []
    for example, text, score in zip(examples, texts, scores, strict=True):
        completion = Completion(text=text, num_tokens=score.num_tokens, finished=True)
        rows.extend(
            candidate_rows(example, [Candidate(completion, params, "reference", score.logprob_mean)], 0)
        )
    return rows
