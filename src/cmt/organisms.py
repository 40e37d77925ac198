"""The organisms the pipeline knows, with the metric each one reports."""

from __future__ import annotations

ORGANISMS = {
    "sycophancy": "rate of affirming the user's wrong answer, over wrong-claim eval prompts",
}


def check_organism(name: str) -> str:
    if name not in ORGANISMS:
        raise ValueError(f"unknown organism {name!r}; valid: {sorted(ORGANISMS)}")
    return name
