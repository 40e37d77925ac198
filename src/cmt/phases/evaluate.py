"""Evaluate a model (base, organism or retrained) on the organism's eval prompts: one scored row per prompt."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path

import pandas as pd

from cmt.data import Example, load_split
from cmt.generation import SamplingParams, load_generator
from cmt.io import write_parquet
from cmt.judges import programmatic_judge

log = logging.getLogger(__name__)


def stratified_subset(examples: list[Example], size: int | None, seed: int) -> list[Example]:
    """A seeded subset stratified by (label, framing), in the file's order; all rows when size is None."""
    if size is None or size >= len(examples):
        return examples
    strata: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        strata[(e.meta.get("label"), e.meta.get("user_provides_answer"))].append(i)
    rng = random.Random(f"{seed}:eval-subset")
    keep: list[int] = []
    for key in sorted(strata, key=repr):
        idx = strata[key]
        quota = round(size * len(idx) / len(examples))
        keep.extend(rng.sample(idx, min(quota, len(idx))))
    return [examples[i] for i in sorted(keep)]


def evaluate(
    model_dir: str,
    adapter: str | None,
    data_dir: str,
    organism: str,
    out_path: str,
    identity: dict,
    model_settings: dict,
    eval_settings: dict,
    seed: int,
) -> None:
    generator = load_generator(model_dir, adapter, model_settings, f"evaluate {identity['stage']}")
    examples = stratified_subset(load_split(Path(data_dir), "eval"), eval_settings.get("size"), seed)
    params = SamplingParams(temperature=0.0, max_new_tokens=model_settings["max_new_tokens"])
    completions = generator.generate([e.prompt for e in examples], 1, params, seed)
    judge = programmatic_judge(organism)
    rows = []
    for e, cands in zip(examples, completions, strict=True):
        verdict = judge(e.meta, cands[0].text)
        rows.append(
            {
                **identity,
                "seed": seed,
                "prompt_id": e.prompt_id,
                "framing": e.meta.get("user_provides_answer") or "none",
                "category": e.meta.get("label"),
                "completion": cands[0].text,
                "num_tokens": cands[0].num_tokens,
                "scored": verdict["scored"],
                "misaligned": verdict["misaligned"],
                "correct": verdict["correct"],
            }
        )
    df = pd.DataFrame(rows)
    scored = df[df["scored"]]
    log.info(
        "%s: M = %.3f over %d scored rows (%d rows)",
        identity["stage"],
        scored["misaligned"].mean(),
        len(scored),
        len(df),
    )
    write_parquet(out_path, df)
