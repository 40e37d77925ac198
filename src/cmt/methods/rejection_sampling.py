"""Rejection sampling (baseline): sample k replies, keep the one an external reward model scores highest.

The "external selection" control: the same best-of-k as self-certainty, with a judge the organism does not
control.
"""

from __future__ import annotations

from cmt.methods import Candidate, LabelContext, argmax_first, candidate_rows, sample_params
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("rejection_sampling", "baseline", selects=True, uses_reward_model=True)


def select_by_reward(
    context: LabelContext, examples, candidates_per_prompt: list[list[Candidate]]
) -> list[dict]:
    """Score every candidate with the reward model and keep the argmax (ties to the first)."""
    flat_prompts = [e.prompt for e, cands in zip(examples, candidates_per_prompt, strict=True) for _ in cands]
    flat_texts = [c.completion.text for cands in candidates_per_prompt for c in cands]
    rewards = context.reward_model.score(flat_prompts, flat_texts)
    rows, pos = [], 0
    for example, cands in zip(examples, candidates_per_prompt, strict=True):
        scores = [float(r) for r in rewards[pos : pos + len(cands)]]
        pos += len(cands)
        scored = [
            Candidate(c.completion, c.params, c.kind, s, c.extra) for c, s in zip(cands, scores, strict=True)
        ]
        rows.extend(candidate_rows(example, scored, argmax_first(scores)))
    return rows


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    params = sample_params(context, settings)
    samples = context.generator.generate([e.prompt for e in examples], k, params, seed)
    return select_by_reward(
        context, examples, [[Candidate(c, params, "sample") for c in cands] for cands in samples]
    )
