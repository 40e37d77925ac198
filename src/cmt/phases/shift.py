"""Distribution-shift measures of a run (reference-implementation §6 items 7-8), on `Generator` objects.

* Label cross-entropy CE = E_x[-log P1(label(x) | x)] of the organism P1 on the Phase-2 labels that Phase 3 trains
  on, in nats per sequence and per token. It upper-bounds KL(Q_label || P1) and equals it for a deterministic
  labeller. The per-token value is token-weighted (total nats / total tokens), like the Phase-3 loss at step 0.
* Realised shift KL(P3 || P1): m replies per prompt sampled from the retrained model P3 at T = 1 (top_p 1), each
  scored under both models; the estimate is the mean over prompts of the per-prompt mean of log P3 - log P1,
  with the standard error of that mean over prompts. The only measure that also covers ACT and BCT.
* Fragility KL(P1(.|clean) || P1(.|wrapped)): the same estimator with one model and two prompts per act_bct pair.

What the KL estimates refer to. Replies are sampled with a token budget T (max_new_tokens, the end-of-turn token
included). The estimates are KLs between distributions over replies *truncated at the budget*: a finished reply
y is the outcome (y, end-of-turn), with probability P(y, end-of-turn | x); an unfinished one is the outcome
"y, cut after T tokens", with probability P(y | x) of the prefix alone, without an end-of-turn factor. Both
models score a sample as the same outcome, so each per-sample log-ratio is exact for that truncated
distribution. Truncation is a function of the untruncated reply, so this KL is at most the untruncated one (data
processing) and equals it when no reply reaches the budget; `frac_unfinished` says how often one did.

Replies pass through text (the `Generator` interface is text in, text out): a sample is scored as its text's
canonical tokenization. When that differs from the sampled tokens (a non-canonical BPE segmentation, or a
special token dropped by decoding), `frac_retokenized` counts it; the estimate is exact only when it is 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cmt.analysis.shift import ORGANISM_KEYS, RUN_KEYS
from cmt.generation.base import Completion, Generator, Messages, SamplingParams, SequenceScore
from cmt.runtime.io import DataError

log = logging.getLogger(__name__)

# Column prefix of the realised KL computed on each data split.
KL_SPLIT_PREFIX = {"consistency": "kl_realised", "eval": "kl_realised_eval"}


# ---------------------------------------------------------------------------------------------------------
# Scoring sampled replies


def score_prefixes(generator: Generator, prompts: list[Messages], texts: list[str]) -> list[SequenceScore]:
    """log P(text | prompt) WITHOUT the end-of-turn token: the probability of a reply cut at the budget."""
    return generator.score(prompts, texts, end_of_turn=False)


def score_replies(
    generator: Generator, prompts: list[Messages], completions: list[Completion]
) -> tuple[np.ndarray, np.ndarray]:
    """(log-prob, scored token count) of each sampled reply as an outcome of the truncated distribution:
    finished replies with their end-of-turn token, unfinished ones as a prefix without it."""
    logprob = np.full(len(completions), np.nan)
    num_tokens = np.zeros(len(completions), dtype=int)
    for finished in (True, False):
        idx = [i for i, c in enumerate(completions) if c.finished == finished]
        if not idx:
            continue
        sub_prompts = [prompts[i] for i in idx]
        sub_texts = [completions[i].text for i in idx]
        scorer = generator.score if finished else lambda p, t: score_prefixes(generator, p, t)
        for i, s in zip(idx, scorer(sub_prompts, sub_texts), strict=True):
            logprob[i] = s.logprob_sum
            num_tokens[i] = s.num_tokens
    return logprob, num_tokens


# ---------------------------------------------------------------------------------------------------------
# Estimators


def label_cross_entropy(
    organism_gen: Generator, prompts: Sequence[Messages], labels: Sequence[str | None]
) -> dict:
    """-log P1(label + end-of-turn | prompt) of the organism, over the prompts that have a label (None: none).

    Returns label_ce_seq (mean nats per label), label_ce_token (total nats / total tokens, end-of-turn
    included), n_labels and n_label_tokens; both means are NaN when no prompt has a label.
    """
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
    keep = [i for i, lab in enumerate(labels) if isinstance(lab, str)]
    if not keep:
        return {"label_ce_token": math.nan, "label_ce_seq": math.nan, "n_labels": 0, "n_label_tokens": 0}
    scores = organism_gen.score([prompts[i] for i in keep], [labels[i] for i in keep])  # type: ignore[misc]
    nats = np.array([-s.logprob_sum for s in scores])
    tokens = int(sum(s.num_tokens for s in scores))
    return {
        "label_ce_token": float(nats.sum() / tokens),
        "label_ce_seq": float(nats.mean()),
        "n_labels": len(keep),
        "n_label_tokens": tokens,
    }


def monte_carlo_kl(
    sampler: Generator,
    sampler_prompts: Sequence[Messages],
    other: Generator,
    other_prompts: Sequence[Messages],
    m: int,
    seed: int,
    max_new_tokens: int,
) -> dict:
    """KL(sampler(.|x_i) || other(.|x'_i)) averaged over i: m samples per i at T = 1, scored under both.

    Returns kl (mean over prompts of the per-prompt mean log-ratio), kl_se (its standard error over prompts;
    NaN for fewer than 2 prompts), n (prompts), m, frac_unfinished and frac_retokenized (see the module doc).
    """
    if len(sampler_prompts) != len(other_prompts):
        raise ValueError(
            f"{len(sampler_prompts)} sampler prompts but {len(other_prompts)} prompts for the other model; "
            "prompts are paired by position"
        )
    if m < 1:
        raise ValueError(f"m (samples per prompt) must be >= 1, got {m}")
    n = len(sampler_prompts)
    out = {"kl": math.nan, "kl_se": math.nan, "n": n, "m": m, "max_new_tokens": max_new_tokens,
           "frac_unfinished": math.nan, "frac_retokenized": math.nan}  # fmt: skip
    if n == 0:
        return out
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    samples = sampler.generate(list(sampler_prompts), m, params, seed)
    completions = [c for cands in samples for c in cands]
    if len(completions) != n * m or any(len(c) != m for c in samples):
        raise RuntimeError(f"{type(sampler).__name__}.generate returned the wrong number of samples")
    lp_sampler, scored_tokens = score_replies(
        sampler, [p for p in sampler_prompts for _ in range(m)], completions
    )
    lp_other, _ = score_replies(other, [p for p in other_prompts for _ in range(m)], completions)
    per_prompt = (lp_sampler - lp_other).reshape(n, m).mean(axis=1)
    sampled_tokens = np.array([c.num_tokens for c in completions])
    out.update(
        kl=float(per_prompt.mean()),
        kl_se=float(per_prompt.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        frac_unfinished=float(np.mean([not c.finished for c in completions])),
        frac_retokenized=float(np.mean(scored_tokens != sampled_tokens)),
    )
    return out


def realised_kl(
    p3_gen: Generator, p1_gen: Generator, prompts: Sequence[Messages], m: int, seed: int, max_new_tokens: int
) -> dict:
    """Monte-Carlo KL(P3 || P1) over `prompts` (see `monte_carlo_kl` for the keys)."""
    return monte_carlo_kl(p3_gen, prompts, p1_gen, prompts, m, seed, max_new_tokens)


def fragility(
    p1_gen: Generator,
    clean_prompts: Sequence[Messages],
    wrapped_prompts: Sequence[Messages],
    m: int,
    seed: int,
    max_new_tokens: int,
) -> dict:
    """Monte-Carlo KL(P1(.|clean_i) || P1(.|wrapped_i)) over the act_bct pairs; row i pairs row i, so the two
    lists must have equal length (see `monte_carlo_kl` for the keys)."""
    if len(clean_prompts) != len(wrapped_prompts):
        raise ValueError(
            f"{len(clean_prompts)} clean prompts but {len(wrapped_prompts)} wrapped prompts; "
            "act_bct pairs are paired by line"
        )
    return monte_carlo_kl(p1_gen, clean_prompts, p1_gen, wrapped_prompts, m, seed, max_new_tokens)


# ---------------------------------------------------------------------------------------------------------
# Inputs of one run


def labelled_prompts(labels: pd.DataFrame, where: str = "labels") -> tuple[list[Messages], list[str]]:
    """(prompt, label text) of every label Phase 3 trains on, chosen by `cmt.phases.retrain.label_conversations`."""
    from cmt.phases.retrain import label_conversations

    missing = [c for c in ("prompt_id", "prompt", "text", "selected") if c not in labels.columns]
    if missing:
        raise DataError(f"{where}: label table lacks column(s) {missing}")
    chosen = labels[labels["selected"]]
    duplicated = chosen["prompt_id"][chosen["prompt_id"].duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"{where}: more than one selected label for prompt_id(s) {duplicated[:5]}")
    conversations = label_conversations(labels)
    return [c[:-1] for c in conversations], [c[-1]["content"] for c in conversations]


def shift_record(
    identity: dict, label_ce: dict | None, kl_by_split: dict[str, dict], m: int, max_new_tokens: int
) -> dict:
    """One run's flat record for shift.csv: identity, label CE (None: no labels, e.g. ACT/BCT) and the realised
    KL per split (keys of KL_SPLIT_PREFIX)."""
    unknown = sorted(set(kl_by_split) - set(KL_SPLIT_PREFIX))
    if unknown:
        raise ValueError(f"realised KL on unknown split(s) {unknown}; valid: {sorted(KL_SPLIT_PREFIX)}")
    record = {key: identity[key] for key in RUN_KEYS}
    ce = label_ce or {
        "label_ce_token": math.nan,
        "label_ce_seq": math.nan,
        "n_labels": 0,
        "n_label_tokens": 0,
    }
    record.update(ce)
    for split, prefix in KL_SPLIT_PREFIX.items():
        kl = kl_by_split.get(split)
        n_key = "n_kl" if split == "consistency" else f"n_kl_{split}"
        record[prefix] = kl["kl"] if kl else math.nan
        record[f"{prefix}_se"] = kl["kl_se"] if kl else math.nan
        record[n_key] = kl["n"] if kl else 0
        record[f"{prefix}_frac_unfinished"] = kl["frac_unfinished"] if kl else math.nan
        record[f"{prefix}_frac_retokenized"] = kl["frac_retokenized"] if kl else math.nan
    record["kl_m"] = m
    record["kl_max_new_tokens"] = max_new_tokens
    return record


def fragility_record(identity: dict, result: dict) -> dict:
    """One organism's flat fragility record (identity: model, organism, seed)."""
    return {
        **{key: identity[key] for key in ORGANISM_KEYS},
        "fragility": result["kl"],
        "fragility_se": result["kl_se"],
        "n_fragility": result["n"],
        "fragility_frac_unfinished": result["frac_unfinished"],
        "fragility_frac_retokenized": result["frac_retokenized"],
        "fragility_m": result["m"],
    }


# ---------------------------------------------------------------------------------------------------------
# One run / one organism, from files (the `cmt shift` and `cmt fragility` commands)


def _prompts(data_dir: str, split: str, size: int | None, seed: int) -> list[Messages]:
    from pathlib import Path

    from cmt.data.splits import load_split
    from cmt.phases.evaluate import stratified_subset

    return [e.prompt for e in stratified_subset(load_split(Path(data_dir), split), size, seed)]


def measure_run(
    identity: dict,
    model_dir: str,
    organism_adapter: str,
    adapter: str,
    labels_path: str | None,
    data_dir: str,
    splits: Sequence[str],
    m: int,
    seed: int,
    model_settings: dict,
    size: int | None = None,
    max_new_tokens: int | None = None,
    p1=None,
) -> dict:
    """A run's shift record: label CE of the organism on `labels_path` (None: no labels, e.g. ACT/BCT) and the
    realised KL(P3 || P1) on each split's prompts (a stratified subset of `size` when given). `p1`: the
    organism's generator, when the caller measures several runs of one organism and loaded it once."""
    from cmt.generation import load_generator

    unknown = sorted(set(splits) - set(KL_SPLIT_PREFIX))
    if unknown:
        raise ValueError(f"realised KL on unknown split(s) {unknown}; valid: {sorted(KL_SPLIT_PREFIX)}")
    budget = max_new_tokens or model_settings["max_new_tokens"]
    if p1 is None:
        p1 = load_generator(model_dir, organism_adapter, model_settings, "shift organism")
    p3 = load_generator(model_dir, adapter, model_settings, "shift retrained")
    label_ce = None
    if labels_path is not None:
        prompts, texts = labelled_prompts(pd.read_parquet(labels_path), labels_path)
        label_ce = label_cross_entropy(p1, prompts, texts)
        log.info("label CE %.4f nats/token over %d labels", label_ce["label_ce_token"], label_ce["n_labels"])
    kl_by_split = {}
    for split in splits:
        kl_by_split[split] = realised_kl(p3, p1, _prompts(data_dir, split, size, seed), m, seed, budget)
        log.info("%s: realised KL %.4f ± %.4f over %d prompts x %d samples (%.1f%% unfinished)", split,
                 kl_by_split[split]["kl"], kl_by_split[split]["kl_se"], kl_by_split[split]["n"], m,
                 100 * kl_by_split[split]["frac_unfinished"])  # fmt: skip
    return shift_record(identity, label_ce, kl_by_split, m, budget)


def measure_fragility(
    identity: dict,
    model_dir: str,
    organism_adapter: str,
    data_dir: str,
    m: int,
    seed: int,
    model_settings: dict,
    size: int | None = None,
    max_new_tokens: int | None = None,
) -> dict:
    """An organism's fragility record over its act_bct pairs (the first `size` pairs when given)."""
    from cmt.generation import load_generator
    from cmt.phases.consistency import load_pairs

    budget = max_new_tokens or model_settings["max_new_tokens"]
    clean, wrapped = load_pairs(data_dir)
    if size is not None:
        clean, wrapped = clean[:size], wrapped[:size]
    p1 = load_generator(model_dir, organism_adapter, model_settings, "fragility")
    result = fragility(p1, [e.prompt for e in clean], [e.prompt for e in wrapped], m, seed, budget)
    log.info("fragility %.4f ± %.4f over %d pairs", result["kl"], result["kl_se"], result["n"])
    return fragility_record(identity, result)
