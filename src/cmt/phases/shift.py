"""Distribution-shift measures of a run (reference-implementation §6 items 7-8), on `Generator` objects.

* Label cross-entropy CE = E_x[-log P1(label(x) | x)] of the organism P1 on the Phase-2 labels that Phase 3 trains
  on, in nats per sequence and per token. It upper-bounds KL(Q_label || P1) and equals it for a deterministic
  labeller. The per-token value is token-weighted (total nats / total tokens), like the Phase-3 loss at step 0.
* Realised shift KL(P3 || P1): m replies per prompt sampled from the retrained model P3 at T = 1 (top_p 1), each
  scored under both models; the estimate is the mean over prompts of the per-prompt mean of log P3 - log P1,
  with the standard error of that mean over prompts. The only measure that also covers ACT and BCT.
* Fragility, one definition for every organism: KL(P1(.|x) || P1(.|t(x))) averaged over the fixed perturbation
  family t of `cmt.data.perturbations` and over the organism's eval prompts x, by the same estimator (the m
  samples from P1(.|x) are shared by every t), with a t-interval over prompts. `fragility_pair` keeps the older,
  organism-specific KL(P1(.|clean) || P1(.|wrapped)) over the act_bct pairs.

What the KL estimates refer to. Replies are sampled with a token budget T (max_new_tokens, the end-of-turn token
included). The estimates are KLs between distributions over token sequences *truncated at the budget*: a
sequence that ended with an end-of-turn token is that outcome, end-of-turn included; an unfinished one is the
outcome "these tokens, cut after T", with the probability of the prefix alone. Both models score a sample as the
same outcome, so each per-sample log-ratio is exact for that truncated distribution. Truncation is a function of
the untruncated reply, so this KL is at most the untruncated one (data processing) and equals it when no reply
reaches the budget; `frac_unfinished` says how often one did.

Samples are scored on the token ids the sampler generated (`Completion.token_ids`, `Generator.score_ids`):
no decode and re-tokenize. Where a backend gives no ids or cannot score them, the estimator falls back to
scoring the decoded text; a sample whose text re-tokenizes to a different length is then counted in
`frac_retokenized` (same-length re-segmentations go unseen), and `scored_on_ids` is False. Whether a number is
trustworthy is `cmt.analysis.shift.kl_reliable`: scored exactly, and at most MAX_UNFINISHED_SHARE unfinished.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmt.analysis.shift import ORGANISM_KEYS, RUN_KEYS, kl_reliable
from cmt.data.perturbations import PERTURBATIONS, perturbed_sets
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
    """(log-prob, scored token count) of each sampled reply's *text* as an outcome of the truncated distribution:
    finished replies with their end-of-turn token, unfinished ones as a prefix without it (the fallback when
    token ids cannot be scored)."""
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


def score_sampled_ids(
    generator: Generator, prompts: list[Messages], completions: list[Completion]
) -> np.ndarray | None:
    """log P(sampled token ids | prompt) of each completion (its end-of-turn token is among the ids when it was
    sampled), or None when a completion carries no ids or the backend cannot score ids."""
    ids = [list(c.token_ids) for c in completions if c.token_ids is not None]
    if len(ids) < len(completions):
        return None
    try:
        scores = generator.score_ids(prompts, ids, end_of_turn=False)
    except NotImplementedError as err:
        log.warning("%s; scoring decoded text instead (flagged: scored_on_ids False)", err)
        return None
    return np.array([s.logprob_sum for s in scores], dtype=float)


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


@dataclass(frozen=True)
class KLSamples:
    """Samples from the sampler and their log-ratios against one or more (model, prompts) comparisons."""

    completions: list[Completion]  # n * m, prompt-major
    log_ratio: np.ndarray  # (comparisons, n, m): log P_sampler - log P_other of each sample
    unfinished: np.ndarray  # (n, m): cut at the budget (or, harmony, no final answer)
    retokenized: np.ndarray  # (n, m): text fallback only; the scored text's length differs from the sample's
    scored_on_ids: bool


def sample_log_ratios(
    sampler: Generator,
    sampler_prompts: Sequence[Messages],
    others: Sequence[tuple[Generator, Sequence[Messages]]],
    m: int,
    seed: int,
    max_new_tokens: int,
    ids: bool = True,
) -> KLSamples:
    """m samples per sampler prompt at T = 1, scored under the sampler and under each (model, prompts) of
    `others`, whose prompts pair with the sampler's by position. Ids are scored when every model can (and `ids`
    is true: false for models with different vocabularies, whose ids mean different tokens); otherwise every
    model scores the decoded text, so both sides of a log-ratio always score the same outcome."""
    if m < 1:
        raise ValueError(f"m (samples per prompt) must be >= 1, got {m}")
    if not others:
        raise ValueError("no model to compare the samples against")
    for _, prompts in others:
        if len(prompts) != len(sampler_prompts):
            raise ValueError(
                f"{len(sampler_prompts)} sampler prompts but {len(prompts)} prompts for the other model; "
                "prompts are paired by position"
            )
    n = len(sampler_prompts)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    samples = sampler.generate(list(sampler_prompts), m, params, seed)
    completions = [c for cands in samples for c in cands]
    if len(completions) != n * m or any(len(c) != m for c in samples):
        raise RuntimeError(f"{type(sampler).__name__}.generate returned the wrong number of samples")
    repeat = lambda prompts: [p for p in prompts for _ in range(m)]  # noqa: E731
    scored = [score_sampled_ids(sampler, repeat(sampler_prompts), completions) if ids else None]
    for gen, prompts in others:
        if scored[-1] is None:
            break
        scored.append(score_sampled_ids(gen, repeat(prompts), completions))
    on_ids = all(s is not None for s in scored)
    retokenized = np.zeros(n * m, dtype=bool)
    if on_ids:
        own, other_lps = scored[0], scored[1:]
    else:
        own, tokens = score_replies(sampler, repeat(sampler_prompts), completions)
        other_lps = [score_replies(gen, repeat(prompts), completions)[0] for gen, prompts in others]
        retokenized = tokens != np.array([c.num_tokens for c in completions])
    log_ratio = np.stack([own - lp for lp in other_lps])
    return KLSamples(
        completions=completions,
        log_ratio=log_ratio.reshape(len(others), n, m),
        unfinished=np.array([not c.finished for c in completions], dtype=bool).reshape(n, m),
        retokenized=retokenized.reshape(n, m),
        scored_on_ids=on_ids,
    )


def summarise(samples: KLSamples, m: int, max_new_tokens: int) -> dict:
    """The estimate from per-sample log-ratios: per prompt, the mean over samples and comparisons; then the mean
    over prompts (kl), its standard error (kl_se), a 95% t-interval (kl_ci_low/high; NaN for < 2 prompts),
    n (prompts), m, max_new_tokens, frac_unfinished, frac_retokenized, scored_on_ids and reliable."""
    from scipy.stats import t as student_t

    per_prompt = samples.log_ratio.mean(axis=(0, 2))
    n = len(per_prompt)
    out = {"kl": math.nan, "kl_se": math.nan, "kl_ci_low": math.nan, "kl_ci_high": math.nan, "n": n, "m": m,
           "max_new_tokens": max_new_tokens, "frac_unfinished": math.nan, "frac_retokenized": math.nan,
           "scored_on_ids": samples.scored_on_ids}  # fmt: skip
    if n:
        out.update(kl=float(per_prompt.mean()), frac_unfinished=float(samples.unfinished.mean()),
                   frac_retokenized=float(samples.retokenized.mean()))  # fmt: skip
    if n > 1:
        se = float(per_prompt.std(ddof=1) / math.sqrt(n))
        half = float(student_t.ppf(0.975, n - 1)) * se
        out.update(kl_se=se, kl_ci_low=out["kl"] - half, kl_ci_high=out["kl"] + half)
    out["reliable"] = kl_reliable(out["frac_unfinished"], out["frac_retokenized"], out["scored_on_ids"], n)
    return out


def monte_carlo_kl(
    sampler: Generator,
    sampler_prompts: Sequence[Messages],
    other: Generator,
    other_prompts: Sequence[Messages],
    m: int,
    seed: int,
    max_new_tokens: int,
) -> dict:
    """KL(sampler(.|x_i) || other(.|x'_i)) averaged over i: m samples per i at T = 1, scored under both (the
    keys of `summarise`)."""
    samples = sample_log_ratios(sampler, sampler_prompts, [(other, other_prompts)], m, seed, max_new_tokens)
    return summarise(samples, m, max_new_tokens)


def realised_kl(
    p3_gen: Generator, p1_gen: Generator, prompts: Sequence[Messages], m: int, seed: int, max_new_tokens: int
) -> dict:
    """Monte-Carlo KL(P3 || P1) over `prompts` (see `summarise` for the keys)."""
    return monte_carlo_kl(p3_gen, prompts, p1_gen, prompts, m, seed, max_new_tokens)


def fragility(
    p1_gen: Generator,
    prompts: Sequence[Messages],
    m: int,
    seed: int,
    max_new_tokens: int,
    perturbations: Sequence[str] = PERTURBATIONS,
) -> dict:
    """Monte-Carlo KL(P1(.|x) || P1(.|t(x))), averaged over the perturbations t and the prompts x: m samples
    from P1(.|x), shared by every t (the keys of `summarise`, plus n_perturbations)."""
    if not perturbations:
        raise ValueError("fragility needs at least one perturbation")
    sets = perturbed_sets(list(prompts), tuple(perturbations))
    others = [(p1_gen, sets[name]) for name in perturbations]
    samples = sample_log_ratios(p1_gen, prompts, others, m, seed, max_new_tokens)
    return {**summarise(samples, m, max_new_tokens), "n_perturbations": len(perturbations)}


def pair_fragility(
    p1_gen: Generator,
    clean_prompts: Sequence[Messages],
    wrapped_prompts: Sequence[Messages],
    m: int,
    seed: int,
    max_new_tokens: int,
) -> dict:
    """Monte-Carlo KL(P1(.|clean_i) || P1(.|wrapped_i)) over an organism's own act_bct pairs (framing and reply
    differ per organism, so not comparable across organisms); row i pairs row i."""
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
        record[n_key] = kl["n"] if kl else 0
        record.update(kl_columns(prefix, kl))
    record["kl_m"] = m
    record["kl_max_new_tokens"] = max_new_tokens
    return record


def kl_columns(prefix: str, kl: dict | None) -> dict:
    """An estimate's value, reliability, standard error and scoring diagnostics under `prefix` (no estimate:
    NaN, unreliable)."""
    kl = kl or {}
    return {
        prefix: kl.get("kl", math.nan),
        f"{prefix}_reliable": bool(kl.get("reliable", False)),
        f"{prefix}_se": kl.get("kl_se", math.nan),
        f"{prefix}_frac_unfinished": kl.get("frac_unfinished", math.nan),
        f"{prefix}_frac_retokenized": kl.get("frac_retokenized", math.nan),
        f"{prefix}_scored_on_ids": bool(kl.get("scored_on_ids", False)),
    }


def fragility_record(identity: dict, result: dict, pair: dict | None = None) -> dict:
    """One organism's flat fragility record (identity: model, organism, seed): the perturbation-family value
    (`fragility`) and, when measured, the act_bct pair value (`fragility_pair`)."""
    return {
        **{key: identity[key] for key in ORGANISM_KEYS},
        **kl_columns("fragility", result),
        "fragility_ci_low": result["kl_ci_low"],
        "fragility_ci_high": result["kl_ci_high"],
        "fragility_n_prompts": result["n"],
        "fragility_n_perturbations": result["n_perturbations"],
        "fragility_m": result["m"],
        **kl_columns("fragility_pair", pair),
        "fragility_pair_n_prompts": pair["n"] if pair else 0,
    }


# ---------------------------------------------------------------------------------------------------------
# One run / one organism, from files (the `cmt shift` and `cmt fragility` commands)


def split_prompts(data_dir: str, split: str, size: int | None, seed: int) -> list[Messages]:
    """A split's prompts: a seeded subset of `size` stratified by category and framing (None: all)."""
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
        kl_by_split[split] = realised_kl(p3, p1, split_prompts(data_dir, split, size, seed), m, seed, budget)
        kl = kl_by_split[split]
        log.info("%s: realised KL %.4f ± %.4f over %d prompts x %d samples (%.1f%% unfinished, reliable: %s)",
                 split, kl["kl"], kl["kl_se"], kl["n"], m, 100 * kl["frac_unfinished"], kl["reliable"])  # fmt: skip
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
    """An organism's fragility record: the perturbation family on its eval prompts (a stratified subset of
    `size` when given, as for the realised KL) and the pair value on its act_bct pairs (the first `size`)."""
    from cmt.generation import load_generator
    from cmt.phases.consistency import load_pairs

    budget = max_new_tokens or model_settings["max_new_tokens"]
    prompts = split_prompts(data_dir, "eval", size, seed)
    clean, wrapped = load_pairs(data_dir)
    if size is not None:
        clean, wrapped = clean[:size], wrapped[:size]
    p1 = load_generator(model_dir, organism_adapter, model_settings, "fragility")
    result = fragility(p1, prompts, m, seed, budget)
    log.info("fragility %.4f [%.4f, %.4f] over %d prompts x %d perturbations (%.1f%% unfinished)", result["kl"],
             result["kl_ci_low"], result["kl_ci_high"], result["n"], result["n_perturbations"],
             100 * result["frac_unfinished"])  # fmt: skip
    pair = pair_fragility(p1, [e.prompt for e in clean], [e.prompt for e in wrapped], m, seed, budget)
    log.info("pair fragility %.4f ± %.4f over %d act_bct pairs", pair["kl"], pair["kl_se"], pair["n"])
    return fragility_record(identity, result, pair)
