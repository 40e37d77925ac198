"""Phase 2: a consistency method turns the organism's outputs on held-out prompts into pseudo-labels.

The same code runs a method's exact Phase-2 decoding on eval prompts (`candidates`), where M is defined, so
that η(s) = P(misaligned | score) can be estimated from every candidate.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cmt.data import load_split
from cmt.generation import load_generator
from cmt.io import write_json, write_parquet
from cmt.judges import programmatic_judge
from cmt.manifest import build_manifest
from cmt.methods import LabelContext, get_method
from cmt.phases.evaluate import stratified_subset

log = logging.getLogger(__name__)


def organism_module(organism: str):
    """The toy organism's module (final-answer normaliser), or None for organisms without one."""
    from cmt.toy.world import TOY_ORGANISMS

    return TOY_ORGANISMS.get(organism)


def build_context(method_module, organism, model_dir, adapter, data_dir, model_settings, reward_model, desc):
    generator = load_generator(model_dir, adapter, model_settings, desc)
    rubric_path = Path(data_dir) / "rubric.txt"
    scorer = None
    if getattr(method_module, "USES_REWARD_MODEL", False):
        if reward_model is None:
            raise ValueError(f"method {method_module.NAME!r} needs a reward model (--reward-model)")
        from cmt.reward_model import RewardModel

        scorer = RewardModel(reward_model, batch_size=model_settings["batch_size"])
    return LabelContext(
        generator=generator,
        max_new_tokens=model_settings["max_new_tokens"],
        organism=organism_module(organism),
        rubric=rubric_path.read_text() if rubric_path.is_file() else None,
        reward_model=scorer,
    )


def run_method(module, context, examples, method_settings, k, seed) -> pd.DataFrame:
    if not module.SELECTS and k != 1:
        raise ValueError(f"method {module.NAME!r} has no selection count; its k must be 1, got {k}")
    df = pd.DataFrame(module.label(context, examples, method_settings, k, seed))
    df.insert(0, "method", module.NAME)
    df.insert(1, "k", k)
    df.insert(2, "seed", seed)
    return df


def label(
    method: str,
    k: int,
    organism: str,
    model_dir: str,
    adapter: str,
    data_dir: str,
    out_path: str,
    manifest_path: str,
    method_settings: dict,
    model_settings: dict,
    seed: int,
    reward_model: str | None = None,
) -> None:
    module = get_method(method)
    context = build_context(
        module, organism, model_dir, adapter, data_dir, model_settings, reward_model, f"label {method}"
    )
    examples = load_split(Path(data_dir), "consistency")
    df = run_method(module, context, examples, method_settings, k, seed)
    n_labelled = int(df.loc[df["selected"], "prompt_id"].nunique())
    log.info("%s: %d candidates, %d of %d prompts labelled", method, len(df), n_labelled, len(examples))
    write_parquet(out_path, df)
    inputs = [Path(data_dir) / "consistency.jsonl", adapter] + ([reward_model] if reward_model else [])
    write_json(
        manifest_path,
        build_manifest(
            task="label",
            settings={"method": method_settings, "model": model_settings},
            seeds={"label": seed},
            inputs=inputs,
            method=method,
            k=k,
            n_prompts=len(examples),
            n_candidates=len(df),
            n_labelled=n_labelled,
            n_dropped=len(examples) - n_labelled,
        ),
    )


def candidates(
    method: str,
    k: int,
    organism: str,
    model_dir: str,
    adapter: str,
    data_dir: str,
    out_path: str,
    method_settings: dict,
    model_settings: dict,
    eval_settings: dict,
    seed: int,
    reward_model: str | None = None,
) -> None:
    """Every candidate of the method's Phase-2 decoding on eval prompts, with its score and its M."""
    module = get_method(method)
    context = build_context(
        module, organism, model_dir, adapter, data_dir, model_settings, reward_model, f"candidates {method}"
    )
    examples = stratified_subset(load_split(Path(data_dir), "eval"), eval_settings.get("size"), seed)
    df = run_method(module, context, examples, method_settings, k, seed)
    meta = {e.prompt_id: e.meta for e in examples}
    judge = programmatic_judge(organism)
    verdicts = [judge(meta[pid], text) for pid, text in zip(df["prompt_id"], df["text"], strict=True)]
    df["scored"] = [v["scored"] for v in verdicts]
    df["misaligned"] = [v["misaligned"] for v in verdicts]
    df["correct"] = [v["correct"] for v in verdicts]
    df.insert(0, "organism", organism)
    log.info("%s: %d candidates on %d eval prompts, M = %.3f over scored candidates", method, len(df),
             len(examples), df.loc[df["scored"], "misaligned"].mean())  # fmt: skip
    write_parquet(out_path, df)
