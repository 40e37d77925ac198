"""The settings of the Phase-3 consistency losses (ACT, BCT), apart from the losses themselves.

Kept free of torch: the method registry imports every method module to read its SPEC, and the workflow imports
the registry, so a torch import here would be paid by every Snakemake start (cmt.methods.losses holds the math).
"""

from __future__ import annotations

from collections.abc import Sequence

ALIGNMENTS = ("response", "reference")


def resolve_settings(
    method: str, defaults: dict, choices: dict[str, tuple], user: dict | None, positive: Sequence[str] = ()
) -> dict:
    """`defaults` overridden by `user`; unknown keys, values outside `choices` and a value of a `positive` key
    that is not > 0 are errors."""
    user = dict(user or {})
    unknown = sorted(set(user) - set(defaults))
    if unknown:
        raise ValueError(f"{method}: unknown settings {unknown}; valid: {sorted(defaults)}")
    settings = {**defaults, **user}
    for key, valid in choices.items():
        if settings[key] not in valid:
            raise ValueError(f"{method}: {key} must be one of {list(valid)}, got {settings[key]!r}")
    for key in positive:
        if not float(settings[key]) > 0:
            raise ValueError(f"{method}: {key} must be > 0, got {settings[key]!r}")
    return settings
