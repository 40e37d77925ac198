"""The paper's cross-model measure: KL(P1_A(.|x) || P1_B(.|x)) between two models' organisms on the same
consistency prompts, where Phase 2 draws its labels, by the Monte-Carlo estimator of `cmt.phases.shift`.

Each model renders the prompts with its own chat template. Two models with the same vocabulary score the sampled
token ids; otherwise ids mean different tokens in the two models, so both score the decoded text. B's score of a
string is then that of one tokenization of it, not the sum over every tokenization that spells it, so the
estimate is not exact: `scored_on_ids` is False and `reliable` False, whatever the re-tokenization did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cmt.generation.base import Generator, Messages
from cmt.phases.shift import kl_columns, sample_log_ratios, split_prompts, summarise

log = logging.getLogger(__name__)

RECORD_KEYS = ("model_a", "model_b", "organism", "seed")


def same_vocabulary(a: Generator, b: Generator) -> bool:
    """Whether a token id means the same token in both (a backend that exposes no tokenizer: assume not)."""
    tok_a, tok_b = getattr(a, "tokenizer", None), getattr(b, "tokenizer", None)
    if tok_a is None or tok_b is None:
        return False
    return tok_a is tok_b or tok_a.get_vocab() == tok_b.get_vocab()


def cross_model_kl(
    model_a: Generator,
    model_b: Generator,
    prompts: Sequence[Messages],
    m: int,
    seed: int,
    max_new_tokens: int,
) -> dict:
    """Monte-Carlo KL(A(.|x) || B(.|x)) over `prompts`: m samples from A per prompt at T = 1, scored under both
    (the keys of `cmt.phases.shift.summarise`)."""
    ids = same_vocabulary(model_a, model_b)
    samples = sample_log_ratios(model_a, prompts, [(model_b, prompts)], m, seed, max_new_tokens, ids=ids)
    result = summarise(samples, m, max_new_tokens)
    return {**result, "reliable": result["reliable"] and ids}


def cross_model_record(identity: dict, result: dict) -> dict:
    """One flat record (identity: model_a, model_b, organism, seed) for cross_model_kl.csv."""
    return {
        **{key: identity[key] for key in RECORD_KEYS},
        **kl_columns("kl_cross", result),
        "kl_cross_ci_low": result["kl_ci_low"],
        "kl_cross_ci_high": result["kl_ci_high"],
        "kl_cross_n_prompts": result["n"],
        "kl_cross_m": result["m"],
    }


def measure_cross_model(
    identity: dict,
    a: tuple[str, str, dict],
    b: tuple[str, str, dict],
    data_dir: str,
    m: int,
    seed: int,
    size: int | None = None,
) -> dict:
    """The record of KL(A || B) on the organism's consistency prompts (a stratified subset of `size` when given);
    `a` and `b` are (model_dir, organism adapter, model settings); A's token budget bounds the samples."""
    from cmt.generation import load_generator

    prompts = split_prompts(data_dir, "consistency", size, seed)
    (dir_a, adapter_a, settings_a), (dir_b, adapter_b, settings_b) = a, b
    gen_a = load_generator(dir_a, adapter_a, settings_a, f"cross-model {identity['model_a']}")
    gen_b = load_generator(dir_b, adapter_b, settings_b, f"cross-model {identity['model_b']}")
    result = cross_model_kl(gen_a, gen_b, prompts, m, seed, settings_a["max_new_tokens"])
    log.info("KL(%s || %s) = %.4f [%.4f, %.4f] over %d prompts (on ids: %s)", identity["model_a"],
             identity["model_b"], result["kl"], result["kl_ci_low"], result["kl_ci_high"], result["n"],
             result["scored_on_ids"])  # fmt: skip
    return cross_model_record(identity, result)
