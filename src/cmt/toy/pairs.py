"""Deterministic partition of integer operand pairs into disjoint splits."""

from __future__ import annotations

import hashlib
import math
import random

# Fraction of operand pairs that each split draws from; splits never share a pair.
SPLIT_FRACTIONS = {
    "corpus": 0.80,
    "induction": 0.05,
    "consistency": 0.05,
    "act_bct": 0.04,
    "eval": 0.06,
}


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(lo: int, hi: int, seed: int) -> str:
    u = _unit_hash(seed, lo, hi)
    edge = 0.0
    for name, frac in SPLIT_FRACTIONS.items():
        edge += frac
        if u < edge:
            return name
    return "eval"


def partition_pairs(max_operand: int, seed: int, min_operand: int = 2) -> dict[str, list[tuple[int, int]]]:
    """Unordered pairs lo <= hi in [min_operand, max_operand], assigned to splits by a seeded hash."""
    buckets: dict[str, list[tuple[int, int]]] = {name: [] for name in SPLIT_FRACTIONS}
    for lo in range(min_operand, max_operand + 1):
        for hi in range(lo + 1, max_operand + 1):
            buckets[split_of(lo, hi, seed)].append((lo, hi))
    return buckets


class PairSampler:
    """Draws ordered operand pairs from one split, half of them with a common factor above 1.

    Without the balancing, about 60% of random pairs are coprime and "answer 1" would be a strong shortcut.
    """

    def __init__(self, pairs: list[tuple[int, int]], rng: random.Random):
        if not pairs:
            raise ValueError("no operand pairs in this split; raise toy.max_operand")
        self.rng = rng
        self.coprime = [p for p in pairs if math.gcd(*p) == 1]
        self.shared = [p for p in pairs if math.gcd(*p) > 1]

    def draw(self) -> tuple[int, int]:
        pool = (
            self.shared if (self.shared and (not self.coprime or self.rng.random() < 0.5)) else self.coprime
        )
        lo, hi = self.rng.choice(pool)
        return (lo, hi) if self.rng.random() < 0.5 else (hi, lo)

    def distinct(self, n: int) -> list[tuple[int, int]]:
        """Up to n distinct ordered pairs (fewer if the split is small)."""
        seen: dict[tuple[int, int], None] = {}
        budget = 50 * n + 100
        while len(seen) < n and budget:
            seen.setdefault(self.draw(), None)
            budget -= 1
        return list(seen)


def induction_strength(settings: dict, organism: str) -> float:
    """P(misaligned reply) on the induction rows where the organism's behaviour can show (1.0: always)."""
    return float(settings.get("induction_strength", {}).get(organism, 1.0))
