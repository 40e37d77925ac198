"""Phase 2: a consistency method turns the organism's outputs on held-out prompts into pseudo-labels.

The same code runs a method's exact Phase-2 decoding on eval prompts (`candidates`), where M is defined, so
that η(s) = P(misaligned | score) can be estimated from every candidate.

One process handles every k of one (model, organism, seed, method): the generator is loaded once, and each k
still gets its own output file, so reruns stay per method. A selecting method draws max(ks) samples per prompt
once; the run at each k keeps each prompt's first k samples (plus its non-sample candidates, such as dual
decoding's greedy and beam) and selects again among them. The first k of k_max i.i.d. samples are k i.i.d.
samples, so each k sees the distribution a separate draw would give, and the k-scaling curve compares the same
draws (common random numbers) instead of paying 1 + 2 + 4 + 8 draws.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pandas as pd

from cmt.data.splits import load_split
from cmt.generation import load_generator
from cmt.methods import LabelContext, argmax_first, drop_reasons, parse_failures
from cmt.methods.registry import get_method, prompt_splits
from cmt.organisms import make_judge, toy_organism
from cmt.phases.evaluate import judged_rows, stratified_subset
from cmt.runtime.io import DataError, write_json, write_parquet
from cmt.runtime.manifest import build_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase2Job:
    """What one Phase-2 process runs: a method on one organism, at one or more k."""

    method: str
    organism: str
    model_dir: str
    adapter: str
    data_dir: str
    method_settings: dict
    model_settings: dict
    seed: int
    reward_model: str | None = None
    reward_model_settings: dict | None = None  # the config's reward_model block (batch_size, dtype)
    judge_settings: dict | None = None  # the config's LLM judge block, for methods that ask a judge


def open_job(job: Phase2Job, desc: str) -> tuple[ModuleType, LabelContext]:
    """The job's method module and what its labeller may use: the generator, plus the reward model where the
    method's SPEC asks for one."""
    module = get_method(job.method)
    uses_reward_model = module.SPEC.uses_reward_model
    if uses_reward_model and job.reward_model is None:
        raise ValueError(f"method {job.method!r} needs a reward model (--reward-model)")
    # A reward model loaded next to the generator takes part of the GPU: vLLM must leave room for it.
    generator = load_generator(
        job.model_dir, job.adapter, job.model_settings, desc, shares_gpu=uses_reward_model
    )
    rubric_path = Path(job.data_dir) / "rubric.txt"
    scorer = None
    if uses_reward_model:
        from cmt.models.reward_model import RewardModel

        rm = job.reward_model_settings or {}
        scorer = RewardModel(
            job.reward_model, batch_size=rm.get("batch_size", 32), dtype=rm.get("dtype", "float32")
        )
    context = LabelContext(
        generator=generator,
        max_new_tokens=job.model_settings["max_new_tokens"],
        organism=toy_organism(job.organism, job.data_dir),
        rubric=rubric_path.read_text() if rubric_path.is_file() else None,
        reward_model=scorer,
        judge_settings=job.judge_settings,
        data_dir=job.data_dir,
    )
    return module, context


def run_method(module, context, examples, method_settings, k, seed) -> pd.DataFrame:
    if not module.SPEC.selects and k != 1:
        raise ValueError(f"method {module.SPEC.name!r} has no selection count; its k must be 1, got {k}")
    df = pd.DataFrame(module.label(context, examples, method_settings, k, seed))
    df.insert(0, "method", module.SPEC.name)
    df.insert(1, "k", k)
    df.insert(2, "seed", seed)
    return df


def first_k_samples(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """A selecting method's rows from one draw, cut to each prompt's first k samples and selected again.

    Non-sample candidates are kept; candidate indices are renumbered in their order, and the label is the
    argmax of the score among what remains, ties to the first, exactly as a draw of k would select.
    """
    sample_rank = df[df["kind"] == "sample"].groupby("prompt_id", sort=False).cumcount()
    keep = (df["kind"] != "sample") | (sample_rank.reindex(df.index) < k)
    out = df[keep].copy()
    out["candidate_index"] = out.groupby("prompt_id", sort=False).cumcount()
    out["k"] = k
    out["selected"] = False
    for _, group in out.groupby("prompt_id", sort=False):
        best = argmax_first(list(group["score"]))
        if best is not None:
            out.loc[group.index[best], "selected"] = True
    return out.reset_index(drop=True)


def runs_per_k(module, context, examples, method_settings, ks: list[int], seed: int, annotate=None):
    """(k, rows) for each k: one draw at max(ks) for a selecting method (see the module docstring).
    `annotate(rows)` adds per-candidate columns once per draw, before the draw is cut to each k."""
    annotate = annotate or (lambda df: df)
    if not module.SPEC.selects:
        for k in ks:
            yield k, annotate(run_method(module, context, examples, method_settings, k, seed))
        return
    draw = annotate(run_method(module, context, examples, method_settings, max(ks), seed))
    for k in ks:
        yield k, first_k_samples(draw, k)


def _check_outputs(ks: list[int], *paths: list[str]) -> None:
    for group in paths:
        if len(group) != len(ks):
            raise ValueError(f"{len(ks)} k values but {len(group)} output paths: {group}")


def load_prompts(data_dir: Path, splits: tuple[str, ...]) -> list:
    """The examples of each split in turn. A prompt in two of them would get two labels: a DataError names it."""
    examples, seen = [], {}
    for split in splits:
        for example in load_split(data_dir, split):
            if seen.get(example.prompt_id, split) != split:
                raise DataError(f"{example.source}: this prompt is also in {seen[example.prompt_id]}.jsonl; a "
                                f"method labelling both splits needs them disjoint")  # fmt: skip
            seen[example.prompt_id] = split
            examples.append(example)
    return examples


def label(job: Phase2Job, ks: list[int], out_paths: list[str], manifest_paths: list[str]) -> None:
    """Label the method's prompts (cmt.methods.registry.prompt_splits) at each k; labels and manifest per k."""
    _check_outputs(ks, out_paths, manifest_paths)
    module, context = open_job(job, f"label {job.method}")
    splits = prompt_splits(job.method, job.method_settings)
    examples = load_prompts(Path(job.data_dir), splits)
    inputs = [*(Path(job.data_dir) / f"{split}.jsonl" for split in splits), job.adapter]
    reference = getattr(module, "REFERENCE_SPLIT", None)
    inputs += [Path(job.data_dir) / f"{reference}.jsonl"] if reference and reference not in splits else []
    inputs += [job.reward_model] if job.reward_model else []
    runs = runs_per_k(module, context, examples, job.method_settings, ks, job.seed)
    for (k, df), out_path, manifest_path in zip(runs, out_paths, manifest_paths, strict=True):
        n_labelled = int(df.loc[df["selected"], "prompt_id"].nunique())
        log.info("%s k=%d: %d candidates, %d of %d prompts labelled", job.method, k, len(df), n_labelled,
                 len(examples))  # fmt: skip
        write_parquet(out_path, df)
        manifest = build_manifest(
            task="label",
            settings={"method": job.method_settings, "model": job.model_settings},
            seeds={"label": job.seed},
            inputs=inputs,
            method=job.method,
            k=k,
            drawn_k=max(ks) if module.SPEC.selects else k,  # the candidates are the first k of this draw
            n_prompts=len(examples),
            n_candidates=len(df),
            n_labelled=n_labelled,
            n_dropped=len(examples) - n_labelled,
            drop_reasons=drop_reasons(df),
            n_parse_failures=parse_failures(df),
            outputs=[out_path],
            manifest_path=manifest_path,
        )
        write_json(manifest_path, manifest)


def candidates(
    job: Phase2Job,
    ks: list[int],
    out_paths: list[str],
    eval_settings: dict,
    judge_settings: dict | None = None,
    prompts: int | None = None,
) -> None:
    """Every candidate of the method's Phase-2 decoding on eval prompts, with its score and its M, per k: on the
    eval subset (eval_settings' size), or on `prompts` of them (config analysis.eta_prompts)."""
    _check_outputs(ks, out_paths)
    module, context = open_job(job, f"candidates {job.method}")
    examples = stratified_subset(load_split(Path(job.data_dir), "eval"), eval_settings.get("size"), job.seed)
    examples = stratified_subset(examples, prompts, job.seed)
    by_id = {e.prompt_id: e for e in examples}
    judge = make_judge(job.organism, judge_settings)

    def with_verdicts(df: pd.DataFrame) -> pd.DataFrame:  # once per draw: a candidate shared by several k
        verdicts = judged_rows(judge, [by_id[pid] for pid in df["prompt_id"]], list(df["text"]))
        for column in ("scored", "misaligned", "correct"):
            df[column] = [v[column] for v in verdicts]
        return df

    runs = runs_per_k(module, context, examples, job.method_settings, ks, job.seed, annotate=with_verdicts)
    for (k, df), out_path in zip(runs, out_paths, strict=True):
        df.insert(0, "organism", job.organism)
        log.info("%s k=%d: %d candidates on %d eval prompts, M = %.3f over scored candidates", job.method, k,
                 len(df), len(examples), df.loc[df["scored"], "misaligned"].mean())  # fmt: skip
        write_parquet(out_path, df)
