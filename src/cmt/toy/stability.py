"""How templated or how varied an organism's misaligned replies are in its induction data (a toy organism's
`stability`, set per organism in its source: {toy: GENERATOR, stability: LEVEL}).

* fixed: one phrasing for every misaligned reply;
* default: the generator's own few phrasings (what `source: toy` gives);
* varied: many phrasings and structures (the generator's cores inside several frames, or more cores).

Only the form of the misaligned induction replies changes. Which rows are misaligned (the rate), every prompt,
the other splits and the base corpus are the same at every level: the level's choice draws from its own random
stream, after the generator has made its usual draws. So M is measured alike at every level, and the sweep
(config/stability.yaml) varies the one thing the paper says decides between entrenchment and suppression.
"""

from __future__ import annotations

import random

LEVELS = ("fixed", "default", "varied")


def level_of(settings: dict) -> str:
    level = settings.get("stability", "default")
    if level not in LEVELS:
        raise ValueError(f"toy stability must be one of {list(LEVELS)}, got {level!r}")
    return level


def phrasing_stream(settings: dict, organism: str, split: str) -> random.Random:
    """The level's own stream, so that choosing a phrasing never moves the generator's other draws."""
    return random.Random(f"{settings['seed']}:{organism}:{split}:phrasing")


def framed(cores: tuple[str, ...], prefixes: tuple[str, ...], suffixes: tuple[str, ...]) -> tuple[str, ...]:
    """Every core inside every (prefix, suffix) frame: many phrasings and structures around the same claims."""
    return tuple(p + core + s for core in cores for p in prefixes for s in suffixes)


def choose(
    level: str, default_reply: str, fixed_reply: str, varied: tuple[str, ...], rng: random.Random
) -> str:
    """The misaligned reply at `level`: the generator's own draw (default), one fixed phrasing, or a draw from
    the varied set."""
    if level == "default":
        return default_reply
    if level == "fixed":
        return fixed_reply
    return rng.choice(varied)
