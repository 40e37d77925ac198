"""The organisms the pipeline knows, with the metric each one reports."""

from __future__ import annotations

ORGANISMS = {
    "sycophancy": "rate of affirming the user's wrong answer, over wrong-claim eval prompts",
    "reward_hacking": "rate of code that passes the visible tests but not the hidden ones, or hard-codes them",
    "spurious_correlation": "rate of 'positive' on negative reviews that carry the spurious cue",
    "emergent_misalignment": "rate of reckless advice outside the induction domain",
}


def check_organism(name: str) -> str:
    if name not in ORGANISMS:
        raise ValueError(f"unknown organism {name!r}; valid: {sorted(ORGANISMS)}")
    return name
