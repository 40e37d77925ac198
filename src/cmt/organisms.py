"""The one seam between an organism's name and what scores it: its toy module, its metric and its judge."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cmt.judges import Verdict

# What M means for each organism with a toy generator.
METRICS = {
    "sycophancy": "rate of affirming the user's wrong answer, over wrong-claim eval prompts",
    "reward_hacking": "rate of code that passes the visible tests but not the hidden ones, or hard-codes them",
    "spurious_correlation": "rate of 'positive' on negative reviews that carry the spurious cue",
    "emergent_misalignment": "rate of reckless advice outside the induction domain",
}


def toy_organism(organism: str):
    """The toy organism's module (generator, scorer, final-answer normaliser), or None for one without."""
    from cmt.toy.world import TOY_ORGANISMS

    return TOY_ORGANISMS.get(organism)


def programmatic_judge(organism: str) -> Callable[[dict, str], Verdict]:
    """The toy organism's own scorer, defined from its generator's templates."""
    module = toy_organism(organism)
    if module is None:
        raise ValueError(f"organism {organism!r} has no programmatic scorer; valid: {sorted(METRICS)}")
    return module.score


def make_judge(organism: str, judge_cfg: Mapping[str, Any] | None = None) -> Callable[[dict, str], Verdict]:
    """The judge a config asks for: `None` or {"kind": "programmatic"} gives the toy organism's own scorer;
    {"kind": "llm", base_url, model, api_key_env, ...} gives an `LLMJudge` (settings: `JudgeSettings`).

    Both are callables (row, completion) -> Verdict; use `cmt.judges.judge_batch` to score many rows.
    """
    cfg = dict(judge_cfg or {})
    kind = cfg.pop("kind", "programmatic")
    if kind == "programmatic":
        return programmatic_judge(organism)
    if kind == "llm":
        from cmt.judges.llm import LLMJudge

        return LLMJudge(organism, cfg)
    raise ValueError(f"judge.kind must be 'programmatic' or 'llm', got {kind!r}")
