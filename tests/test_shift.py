"""Shift estimators against exact sums over every reply of two tiny models on a 3-word vocabulary, the
perturbation family of fragility, and the shift tables."""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from cmt.analysis.shift import (
    MAX_UNFINISHED_SHARE,
    SHIFT_COLUMNS,
    kl_reliable,
    shift_correlations,
    shift_table,
)
from cmt.data.perturbations import PERTURBATIONS, perturb, perturb_text
from cmt.generation.base import Completion
from cmt.generation.hf import HFGenerator
from cmt.phases.shift import (
    fragility,
    label_cross_entropy,
    pair_fragility,
    realised_kl,
    sample_log_ratios,
    score_prefixes,
    score_replies,
)
from cmt.runtime.io import DataError
from cmt.toy.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS

WORDS = ["a", "b", "c"]
VOCAB = {t: i for i, t in enumerate(SPECIAL_TOKENS + WORDS)}
EOS = VOCAB["<|end|>"]
REPLY_TOKENS = [VOCAB[w] for w in WORDS] + [EOS]  # every other token has probability exactly 0
BUDGET = 3  # max_new_tokens: 1 + 3 + 9 finished replies and 27 cut at the budget


def make_tokenizer(vocab: dict[str, int] = VOCAB):
    """Word-level tokenizer: every reply's text re-tokenizes to exactly the sampled tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:], padding_side="left",
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(seed: int = 0, reply_tokens: list[int] = REPLY_TOKENS):
    """A random 1-layer Llama whose lm_head has a bias: -1e4 (probability 0) on tokens no reply may use."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, bos_token_id=VOCAB["<|bos|>"], eos_token_id=EOS,
        pad_token_id=VOCAB["<|pad|>"], initializer_range=0.3,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    head = torch.nn.Linear(16, len(VOCAB), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.fill_(-1e4)
        head.bias[reply_tokens] = 0.0
    model.lm_head = head
    return model.eval()


def with_logit_bias(model, token: str, bias: float):
    """The same model with `bias` added to one token's logit: the single known difference."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.bias[VOCAB[token]] += bias
    return other


@pytest.fixture(scope="module")
def world():
    tokenizer = make_tokenizer()
    p1 = make_model(0)
    p3 = with_logit_bias(p1, "a", 1.0)
    prompts = [[{"role": "user", "content": " ".join(ws)}] for ws in itertools.product(WORDS, repeat=2)]
    prompts += [[{"role": "user", "content": " ".join(ws)}] for ws in itertools.product(WORDS, repeat=3)][:7]
    return {
        "tokenizer": tokenizer,
        "p1": HFGenerator(p1, tokenizer, batch_size=4096),
        "p1_copy": HFGenerator(copy.deepcopy(p1), tokenizer, batch_size=4096),
        "p3": HFGenerator(p3, tokenizer, batch_size=4096),
        "prompts": prompts,
    }


# ---------------------------------------------------------------------------------------------------------
# An exact enumerator, independent of HFGenerator.score: one forward pass per reply prefix.


def prompt_ids(tokenizer, prompt) -> list[int]:
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def next_logprobs(model, ids: list[int]) -> np.ndarray:
    return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1).numpy()


@torch.no_grad()
def outcome_logprobs(
    model, ids: list[int], budget: int, words: list[int] = REPLY_TOKENS[:-1]
) -> dict[tuple[int, ...], float]:
    """log P of every outcome of the budget-truncated reply distribution: (..., EOS) or a cut prefix.

    One causal forward pass over the prompt followed by every word sequence of the budget's length gives the
    next-token distribution after every shorter prefix too.
    """
    seqs = list(itertools.product(words, repeat=budget))
    logprobs = torch.log_softmax(
        model(torch.tensor([ids + list(s) for s in seqs])).logits.double(), -1
    ).numpy()
    out: dict[tuple[int, ...], float] = {}
    for row, seq in enumerate(seqs):
        logp = 0.0
        for j in range(budget):
            step = logprobs[row, len(ids) - 1 + j]
            out[(*seq[:j], EOS)] = logp + step[EOS]
            logp += step[seq[j]]
        out[seq] = logp
    return out


def exact_kl(model_p, model_q, tokenizer, prompts_p, prompts_q, budget: int = BUDGET) -> float:
    """Mean over prompt pairs of the exact KL(P(.|x) || Q(.|x')) of the truncated reply distributions."""
    kls = []
    for x, x2 in zip(prompts_p, prompts_q, strict=True):
        lp = outcome_logprobs(model_p, prompt_ids(tokenizer, x), budget)
        lq = outcome_logprobs(model_q, prompt_ids(tokenizer, x2), budget)
        assert len(lp) == 1 + 3 + 9 + 27
        assert math.fsum(math.exp(v) for v in lp.values()) == pytest.approx(1.0, abs=1e-6)
        kls.append(math.fsum(math.exp(lp[o]) * (lp[o] - lq[o]) for o in lp))
    return float(np.mean(kls))


# ---------------------------------------------------------------------------------------------------------


def test_realised_kl_matches_the_exact_sum(world):
    exact = exact_kl(
        world["p3"].model, world["p1"].model, world["tokenizer"], world["prompts"], world["prompts"]
    )
    est = realised_kl(world["p3"], world["p1"], world["prompts"], m=200, seed=0, max_new_tokens=BUDGET)
    assert est["n"] == len(world["prompts"]) and est["m"] == 200
    assert est["frac_unfinished"] > 0.2  # the truncation path is exercised
    assert est["scored_on_ids"] and est["frac_retokenized"] == 0.0
    assert est["reliable"] == (est["frac_unfinished"] <= MAX_UNFINISHED_SHARE)
    assert est["kl_se"] < 0.2 * exact  # precise enough for the comparison to mean something
    assert abs(est["kl"] - exact) < 4 * est["kl_se"], (est, exact)


# A special token that replies may sample and that decoding drops: its text re-tokenizes to fewer tokens.
DROPPED = VOCAB["<|system|>"]
SPECIAL_REPLY_TOKENS = [*REPLY_TOKENS[:-1], DROPPED, EOS]


class TextOnly(HFGenerator):
    """A backend that cannot score token ids: the estimator must fall back to scoring text."""

    def score_ids(self, prompts, token_ids, end_of_turn=False):
        raise NotImplementedError("this backend scores text only")


@pytest.fixture(scope="module")
def special_world(world):
    p1 = make_model(4, SPECIAL_REPLY_TOKENS)
    p3 = with_logit_bias(p1, "<|system|>", 1.5)
    return {"p1": p1, "p3": p3, "prompts": world["prompts"][:6], "tokenizer": world["tokenizer"]}


def test_each_sampled_log_ratio_is_the_exact_log_ratio_of_its_outcome(special_world):
    """Budget 2 over {a, b, c, <|system|>}: 1 + 4 + 16 outcomes, enumerated exactly. Every sample's log-ratio
    equals log P3(o) - log P1(o) of the outcome o it sampled, special tokens included (deterministic)."""
    w, budget = special_world, 2
    words = SPECIAL_REPLY_TOKENS[:-1]
    p3, p1 = (HFGenerator(w[k], w["tokenizer"], batch_size=4096) for k in ("p3", "p1"))
    samples = sample_log_ratios(p3, w["prompts"], [(p1, w["prompts"])], m=40, seed=0, max_new_tokens=budget)
    assert samples.scored_on_ids and not samples.retokenized.any()
    assert samples.log_ratio.shape == (1, len(w["prompts"]), 40)
    seen = set()
    for i, prompt in enumerate(w["prompts"]):
        ids = prompt_ids(w["tokenizer"], prompt)
        lp3 = outcome_logprobs(w["p3"], ids, budget, words)
        lp1 = outcome_logprobs(w["p1"], ids, budget, words)
        assert len(lp3) == 1 + 4 + 16
        for j in range(40):
            c = samples.completions[i * 40 + j]
            outcome = c.token_ids
            assert outcome in lp3, outcome  # a truncated outcome: ends with EOS or has the budget's length
            assert c.finished == (outcome[-1] == EOS) and samples.unfinished[i, j] == (not c.finished)
            assert samples.log_ratio[0, i, j] == pytest.approx(lp3[outcome] - lp1[outcome], abs=2e-4)
            seen.add(outcome)
    assert (
        any(DROPPED in o for o in seen)
        and any(o[-1] == EOS for o in seen)
        and any(EOS not in o for o in seen)
    )


def test_text_scoring_is_the_flagged_fallback(special_world):
    """Without id scoring, a sampled special token vanishes from the text: the sample is scored as another
    outcome, counted in frac_retokenized, and the estimate is marked unreliable; with ids it is exact."""
    w = special_world
    p3, p1 = (TextOnly(w[k], w["tokenizer"], batch_size=4096) for k in ("p3", "p1"))
    text = realised_kl(p3, p1, w["prompts"], m=40, seed=0, max_new_tokens=2)
    assert not text["scored_on_ids"] and text["frac_retokenized"] > 0 and not text["reliable"]
    p3, p1 = (HFGenerator(w[k], w["tokenizer"], batch_size=4096) for k in ("p3", "p1"))
    ids = realised_kl(p3, p1, w["prompts"], m=40, seed=0, max_new_tokens=2)
    assert ids["scored_on_ids"] and ids["frac_retokenized"] == 0.0
    assert ids["frac_unfinished"] == text["frac_unfinished"]  # the same samples (same seed)
    assert ids["kl"] != pytest.approx(text["kl"], abs=1e-3)


def test_truncated_replies_are_scored_without_end_of_turn(world):
    """Scores of a cut reply and a finished reply match the enumerator's outcome log-probs."""
    gen, tokenizer = world["p1"], world["tokenizer"]
    prompt = world["prompts"][4]
    exact = outcome_logprobs(gen.model, prompt_ids(tokenizer, prompt), BUDGET)
    cut = Completion("a c b", num_tokens=3, finished=False)
    done = Completion("b a", num_tokens=3, finished=True)
    logp, tokens = score_replies(gen, [prompt, prompt], [cut, done])
    ids = VOCAB["a"], VOCAB["c"], VOCAB["b"]
    assert logp[0] == pytest.approx(exact[ids], abs=1e-4)
    assert logp[1] == pytest.approx(exact[(VOCAB["b"], VOCAB["a"], EOS)], abs=1e-4)
    assert list(tokens) == [3, 3]
    # The finished score carries the end-of-turn factor; the prefix score does not.
    prefix = score_prefixes(gen, [prompt], ["b a"])[0]
    assert prefix.logprob_sum > logp[1] and prefix.num_tokens == 2
    # The same outcomes scored on their ids.
    by_ids = gen.score_ids([prompt, prompt], [list(ids), [VOCAB["b"], VOCAB["a"], EOS]])
    assert [s.logprob_sum for s in by_ids] == pytest.approx(list(logp), abs=1e-5)


def test_kl_of_a_model_with_itself_is_exactly_zero(world):
    est = realised_kl(world["p1"], world["p1_copy"], world["prompts"], m=20, seed=3, max_new_tokens=BUDGET)
    assert est["kl"] == 0.0 and est["kl_se"] == 0.0


def test_realised_kl_is_seeded(world):
    args = (world["p3"], world["p1"], world["prompts"][:5])
    first = realised_kl(*args, m=10, seed=1, max_new_tokens=BUDGET)
    assert realised_kl(*args, m=10, seed=1, max_new_tokens=BUDGET) == first
    assert realised_kl(*args, m=10, seed=2, max_new_tokens=BUDGET)["kl"] != first["kl"]


# ---------------------------------------------------------------------------------------------------------
# Fragility: one perturbation family for every organism


def test_perturbations_are_fixed_and_keep_the_task_text():
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "gcd(4, 6)? {x}"},
            {"role": "assistant", "content": "2"}, {"role": "user", "content": "And gcd(9, {3})?"}]  # fmt: skip
    original = copy.deepcopy(conv)
    texts = set()
    for name in PERTURBATIONS:
        out = perturb(conv, name)
        assert out == perturb(copy.deepcopy(conv), name)  # a pure function of the prompt
        assert out[:3] == conv[:3] and out[3]["role"] == "user"  # only the last user turn changes
        assert "And gcd(9, {3})?" in out[3]["content"] != conv[3]["content"]  # kept verbatim, braces too
        assert out[3]["content"] == perturb_text("And gcd(9, {3})?", name)
        texts.add(out[3]["content"])
    assert conv == original  # the input is not modified
    assert len(texts) == len(PERTURBATIONS) >= 3
    with pytest.raises(ValueError, match="needs a user turn"):
        perturb([{"role": "system", "content": "x"}], PERTURBATIONS[0])
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(conv, "shout")


def test_fragility_matches_the_exact_sum_over_the_perturbation_family(world):
    prompts = world["prompts"]
    model, tokenizer = world["p1"].model, world["tokenizer"]
    exact = np.mean([exact_kl(model, model, tokenizer, prompts, [perturb(p, t) for p in prompts])
                     for t in PERTURBATIONS])  # fmt: skip
    est = fragility(world["p1"], prompts, m=200, seed=0, max_new_tokens=BUDGET)
    assert est["n"] == len(prompts) and est["n_perturbations"] == len(PERTURBATIONS)
    assert est["scored_on_ids"] and est["kl_ci_low"] < est["kl"] < est["kl_ci_high"]
    assert est["kl_se"] < 0.25 * exact
    assert abs(est["kl"] - exact) < 4 * est["kl_se"], (est, exact)
    assert fragility(world["p1"], prompts, m=200, seed=0, max_new_tokens=BUDGET) == est  # seeded


def test_fragility_is_zero_for_a_model_that_ignores_the_prompt(world):
    """With attention switched off, each next-token distribution depends on the last token alone, so every
    prompt (ending in the same generation prompt) gives the same reply distribution: fragility 0."""
    blind = copy.deepcopy(world["p1"].model)
    with torch.no_grad():
        for layer in blind.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    gen = HFGenerator(blind, world["tokenizer"], batch_size=4096)
    est = fragility(gen, world["prompts"], m=30, seed=0, max_new_tokens=BUDGET)
    assert est["kl"] == pytest.approx(0.0, abs=1e-5) and est["n"] == len(world["prompts"])
    assert np.isfinite(est["kl_se"]) and est["kl_se"] < 1e-5
    # The same prompt on both sides is exactly 0, for any model.
    same = pair_fragility(world["p1"], world["prompts"], world["prompts"], m=5, seed=0, max_new_tokens=BUDGET)
    assert same["kl"] == 0.0


def test_pair_fragility_matches_the_exact_sum(world):
    clean = world["prompts"]
    wrapped = [[{"role": "user", "content": "c c " + p[0]["content"]}] for p in clean]
    model, tokenizer = world["p1"].model, world["tokenizer"]
    exact = exact_kl(model, model, tokenizer, clean, wrapped)
    est = pair_fragility(world["p1"], clean, wrapped, m=200, seed=0, max_new_tokens=BUDGET)
    assert est["n"] == len(clean)
    assert est["kl_se"] < 0.25 * exact
    assert abs(est["kl"] - exact) < 4 * est["kl_se"], (est, exact)


def test_pair_fragility_needs_equal_length_pairs(world):
    with pytest.raises(ValueError, match="paired by line"):
        pair_fragility(
            world["p1"], world["prompts"][:3], world["prompts"][:2], m=2, seed=0, max_new_tokens=BUDGET
        )


def test_label_cross_entropy_matches_a_hand_teacher_forced_sum(world):
    gen, tokenizer = world["p1"], world["tokenizer"]
    prompts = world["prompts"][:4]
    labels = ["a b", None, "", "c c a"]
    out = label_cross_entropy(gen, prompts, labels)
    nats, tokens = [], 0
    for prompt, label in zip(prompts, labels, strict=True):
        if label is None:
            continue
        ids = prompt_ids(tokenizer, prompt)
        target = [VOCAB[w] for w in label.split()] + [EOS]
        nats.append(-sum(next_logprobs(gen.model, ids + target[:i])[t] for i, t in enumerate(target)))
        tokens += len(target)
    assert out["n_labels"] == 3 and out["n_label_tokens"] == tokens == 3 + 1 + 4
    assert out["label_ce_seq"] == pytest.approx(np.mean(nats), abs=1e-4)
    assert out["label_ce_token"] == pytest.approx(sum(nats) / tokens, abs=1e-4)


def test_label_cross_entropy_without_labels_is_nan_with_n_zero(world):
    out = label_cross_entropy(world["p1"], world["prompts"][:2], [None, None])
    assert math.isnan(out["label_ce_token"]) and math.isnan(out["label_ce_seq"]) and out["n_labels"] == 0


# ---------------------------------------------------------------------------------------------------------
# Tables


def _runs():
    return pd.DataFrame(
        [
            {"model": "toy", "organism": "syc", "seed": s, "method": meth, "k": k, "delta_pp": d}
            for s, meth, k, d in [
                (0, "gst", 1, -0.1),
                (0, "act", 1, 0.2),
                (1, "gst", 1, 0.05),
                (1, "act", 1, 0.0),
            ]
        ]
    )


def _record(seed, method, ce, kl, reliable=True):
    return {"model": "toy", "organism": "syc", "seed": seed, "method": method, "k": 1, "label_ce_token": ce,
            "label_ce_seq": 5 * ce, "n_labels": 10, "n_label_tokens": 50, "kl_realised": kl,
            "kl_realised_reliable": reliable, "kl_realised_se": 0.01, "n_kl": 10, "kl_m": 8}  # fmt: skip


def test_reliability_rule():
    assert kl_reliable(MAX_UNFINISHED_SHARE, 0.3, True, 10)  # on ids, retokenization cannot happen
    assert not kl_reliable(MAX_UNFINISHED_SHARE + 0.01, 0.0, True, 10)  # mostly cut at the budget
    assert kl_reliable(0.0, 0.0, False, 10)  # text scoring that re-tokenized every sample to its length
    assert not kl_reliable(0.0, 0.01, False, 10)  # one sample scored as another outcome
    assert not kl_reliable(0.0, 0.0, True, 0) and not kl_reliable(math.nan, 0.0, True, 10)


def test_shift_table_joins_runs_records_and_fragility():
    records = pd.DataFrame(
        [
            _record(0, "gst", 0.5, 0.1),
            _record(1, "gst", 0.7, 0.3, reliable=False),
            _record(0, "act", math.nan, 0.2),
        ]
    )
    records.loc[2, ["n_labels", "n_label_tokens"]] = 0
    frag = pd.DataFrame([{"model": "toy", "organism": "syc", "seed": 0, "fragility": 0.9, "fragility_se": 0.1,
                          "fragility_reliable": True, "fragility_n_prompts": 20, "fragility_n_perturbations": 4,
                          "fragility_pair": 2.5, "fragility_pair_n_prompts": 20}])  # fmt: skip
    table = shift_table(records, _runs(), frag)
    assert list(table.columns) == SHIFT_COLUMNS and len(table) == 4
    row = table.set_index(["seed", "method"])
    assert row.loc[(1, "gst"), "kl_realised"] == 0.3 and row.loc[(1, "gst"), "delta_pp"] == 0.05
    # An unreliable estimate keeps its number, flagged beside it.
    assert not row.loc[(1, "gst"), "kl_realised_reliable"] and row.loc[(0, "gst"), "kl_realised_reliable"]
    assert SHIFT_COLUMNS.index("kl_realised_reliable") == SHIFT_COLUMNS.index("kl_realised") + 1
    assert row.loc[(0, "act"), "fragility"] == 0.9 and row.loc[(0, "gst"), "fragility"] == 0.9
    assert (
        row.loc[(0, "act"), "fragility_pair"] == 2.5 and row.loc[(0, "act"), "fragility_n_perturbations"] == 4
    )
    # No record for seed 1 / act, no fragility for seed 1: NaN with n = 0, never 0, and never reliable.
    assert math.isnan(row.loc[(1, "act"), "kl_realised"]) and row.loc[(1, "act"), "n_kl"] == 0
    assert not row.loc[(1, "act"), "kl_realised_reliable"]
    assert math.isnan(row.loc[(1, "gst"), "fragility"]) and row.loc[(1, "gst"), "fragility_n_prompts"] == 0
    assert not row.loc[(1, "gst"), "fragility_reliable"]
    assert math.isnan(row.loc[(0, "gst"), "kl_realised_eval"]) and row.loc[(0, "gst"), "n_kl_eval"] == 0


def test_shift_table_flags_older_records_from_their_diagnostics_and_rejects_pair_only_fragility():
    old = {k: v for k, v in _record(0, "gst", 0.5, 0.1).items() if k != "kl_realised_reliable"}
    records = pd.DataFrame([{**old, "kl_realised_frac_unfinished": 0.2, "kl_realised_frac_retokenized": 0.3},
                            {**old, "seed": 1, "kl_realised_frac_unfinished": 0.2,
                             "kl_realised_frac_retokenized": 0.0}])  # fmt: skip
    row = shift_table(records, _runs()).set_index(["seed", "method"])
    assert not row.loc[(0, "gst"), "kl_realised_reliable"] and row.loc[(1, "gst"), "kl_realised_reliable"]
    pair_only = pd.DataFrame(
        [{"model": "toy", "organism": "syc", "seed": 0, "fragility": 0.9, "n_fragility": 20}]
    )
    with pytest.raises(DataError, match="rerun `cmt fragility`"):
        shift_table(records, _runs(), pair_only)


def test_shift_table_rejects_orphan_and_duplicate_records():
    orphan = pd.DataFrame([_record(0, "gst", 0.5, 0.1), {**_record(0, "bct", 0.5, 0.1)}])
    with pytest.raises(DataError, match="without a run"):
        shift_table(orphan, _runs())
    dup = pd.DataFrame([_record(0, "gst", 0.5, 0.1), _record(0, "gst", 0.6, 0.1)])
    with pytest.raises(DataError, match="more than one row"):
        shift_table(dup, _runs())
    with pytest.raises(DataError, match="delta_pp"):
        shift_table(dup, _runs().drop(columns=["delta_pp"]))


def _pearson_by_hand(x, y):
    from scipy.stats import t as student_t

    x, y = np.asarray(x, float), np.asarray(y, float)
    r = np.sum((x - x.mean()) * (y - y.mean())) / math.sqrt(
        np.sum((x - x.mean()) ** 2) * np.sum((y - y.mean()) ** 2)
    )
    n = len(x)
    t = r * math.sqrt((n - 2) / (1 - r**2))
    return r, 2 * student_t.sf(abs(t), n - 2)


def _ranks(v):
    return pd.Series(v).rank().to_numpy()


def test_shift_correlations_against_a_hand_computation():
    """Two sycophancy organisms (seeds 0 and 1, three runs each) and two emergent-misalignment ones (one run
    each). kl_realised is a run's measure: one point per run. fragility is the organism's: one point per
    organism, its runs' mean delta, however many runs share it."""
    delta = [-0.2, 0.1, 0.05, 0.3, -0.1, 0.0]
    kl = [0.1, 0.4, 0.2, 0.5, 0.3, 0.3]
    table = pd.DataFrame({"model": "toy", "organism": ["syc"] * 6 + ["em"] * 2, "seed": [0, 0, 0, 1, 1, 1, 0, 1],
                          "delta_pp": [*delta, 0.1, 0.2], "kl_realised": [*kl, 0.1, 0.2],
                          "fragility": [1.0] * 3 + [2.0] * 3 + [0.1, 0.3]})  # fmt: skip
    out = shift_correlations(table, measures=["kl_realised", "fragility"]).set_index(["organism", "measure"])
    r, p = _pearson_by_hand(delta, kl)
    syc = out.loc[("syc", "kl_realised")]
    assert (syc["unit"], syc["n"], syc["n_clusters"]) == ("run", 6, 2)
    assert syc["pearson_r"] == pytest.approx(r) and syc["pearson_p"] == pytest.approx(p)
    rs, ps = _pearson_by_hand(_ranks(delta), _ranks(kl))  # Spearman = Pearson on ranks (t approximation)
    assert syc["spearman_r"] == pytest.approx(rs) and syc["spearman_p"] == pytest.approx(ps)
    # n < 3: NaN with n recorded.
    em = out.loc[("em", "kl_realised")]
    assert em["n"] == 2 and math.isnan(em["pearson_r"]) and math.isnan(em["spearman_p"])
    fragile = out.loc[("syc", "fragility")]
    assert (fragile["unit"], fragile["n"], fragile["n_clusters"]) == ("organism", 2, 2)
    assert math.isnan(fragile["pearson_r"])
    assert out.loc[("all", "kl_realised"), "n"] == 8
    # Over all: the organisms' mean deltas (-0.05/3, 0.2/3, 0.1, 0.2) against fragility (1, 2, 0.1, 0.3).
    pooled = out.loc[("all", "fragility")]
    means, fragility = [-0.05 / 3, 0.2 / 3, 0.1, 0.2], [1.0, 2.0, 0.1, 0.3]
    assert (pooled["n"], pooled["n_clusters"]) == (4, 4)
    assert pooled["pearson_r"] == pytest.approx(_pearson_by_hand(means, fragility)[0])
    assert (out["n_unreliable"] == 0).all()  # no reliability flags: every finite point counts

    # Unreliable estimates stay out of the correlation, counted in n_unreliable.
    flagged = table.assign(kl_realised_reliable=[True] * 5 + [False, True, True])
    out = shift_correlations(flagged, measures=["kl_realised"]).set_index(["organism", "measure"])
    syc = out.loc[("syc", "kl_realised")]
    r, _ = _pearson_by_hand(delta[:5], kl[:5])
    assert syc["n"] == 5 and syc["n_unreliable"] == 1 and syc["pearson_r"] == pytest.approx(r)


def test_an_organism_measure_counts_each_organism_once():
    """Pseudo-replication: three organisms whose mean deltas rise with their fragility, eight runs each. Counted
    per run, 24 points would give scipy a p near 1e-10; counted per organism, three points cannot give a
    permutation p below 2/6 (both perfect orderings of 3! reach |rho| = 1)."""
    rng = np.random.default_rng(0)
    rows = [{"model": "toy", "organism": "syc", "seed": seed, "method": f"m{i}", "delta_pp": mean + rng.normal(0, 1),
             "fragility": fragility} for seed, (mean, fragility) in enumerate([(-20, 0.1), (-5, 0.2), (10, 0.3)])
            for i in range(8)]  # fmt: skip
    row = shift_correlations(pd.DataFrame(rows), ["fragility"], n_boot=2000, seed=0).set_index("organism")
    row = row.loc["syc"]
    assert (row["unit"], row["n"], row["n_clusters"]) == ("organism", 3, 3)
    assert row["spearman_r"] == pytest.approx(1.0)
    assert row["spearman_p_perm"] == pytest.approx(2 / 6, abs=0.04)


def test_a_run_measure_is_tested_among_the_runs_of_each_organism():
    """Between organisms the measure and delta rise together; among the runs of each organism they do not.
    scipy's p (points independent) is small; the permutation p, which shuffles within organisms, is not. The
    positive control: the same runs with delta rising with the measure inside each organism give a small p."""
    rng = np.random.default_rng(1)
    rows = []
    for seed, level in enumerate([0.0, 1.0, 2.0, 3.0]):
        noise = rng.permutation(6)
        for i in range(6):
            rows.append({"model": "toy", "organism": "syc", "seed": seed, "method": f"m{i}",
                         "delta_pp": 30 * level + noise[i], "kl_realised": level + 0.1 * i})  # fmt: skip
    between = pd.DataFrame(rows)
    row = shift_correlations(between, ["kl_realised"], n_boot=2000, seed=0).set_index("organism").loc["syc"]
    assert (row["unit"], row["n"], row["n_clusters"]) == ("run", 24, 4)
    assert row["spearman_p"] < 1e-6 and row["spearman_p_perm"] > 0.2
    within = between.assign(delta_pp=30 * between["seed"] + 2 * between["method"].str[1:].astype(int))
    row = shift_correlations(within, ["kl_realised"], n_boot=2000, seed=0).set_index("organism").loc["syc"]
    assert row["spearman_p_perm"] < 0.01
    # One run per organism leaves nothing to shuffle within it: p = 1, not a false discovery.
    one_each = between.groupby("seed").head(1)
    row = shift_correlations(one_each, ["kl_realised"], n_boot=200, seed=0).set_index("organism").loc["syc"]
    assert row["n"] == 4 and row["spearman_p_perm"] == 1.0


# ---------------------------------------------------------------------------------------------------------
# The commands, on a saved tiny model with two LoRA adapters


@pytest.fixture(scope="module")
def saved_world(tmp_path_factory, world):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("shift_cli")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=VOCAB["<|bos|>"], eos_token_id=EOS,
        pad_token_id=VOCAB["<|pad|>"],
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "model")
    world["tokenizer"].save_pretrained(root / "model")
    for name, seed in (("phase1", 1), ("phase3", 2)):
        torch.manual_seed(seed)
        base = LlamaForCausalLM.from_pretrained(root / "model")
        lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(base, lora).save_pretrained(root / name)
    data = root / "data"
    data.mkdir()
    for split, prefix in (
        ("consistency", ""),
        ("eval", ""),
        ("act_bct_clean", ""),
        ("act_bct_wrapped", "c c "),
    ):
        rows = [{"messages": [{"role": "user", "content": prefix + p[0]["content"]}], "_id": f"r{i}"}
                for i, p in enumerate(world["prompts"][:6])]  # fmt: skip
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = pd.DataFrame(
        {"prompt_id": ["p0", "p0", "p1", "p2"], "prompt": [json.dumps(world["prompts"][i]) for i in (0, 0, 1, 2)],
         "text": ["a b", "c", "b", " "], "selected": [True, False, True, True]}
    )  # fmt: skip
    labels.to_parquet(root / "labels.parquet")
    return root


def test_shift_and_fragility_commands_write_records(saved_world):
    from cmt.cli import main

    root = saved_world
    settings = json.dumps({"dtype": "float32", "backend": "hf", "batch_size": 64, "max_new_tokens": 4})
    common = ["--model", "toy", "--organism", "syc", "--seed", "5", "--model-dir", str(root / "model"),
              "--organism-adapter", str(root / "phase1"), "--data-dir", str(root / "data"), "--m", "3",
              "--model-settings", settings]  # fmt: skip
    assert main(["shift", *common, "--method", "gst", "--k", "1", "--adapter", str(root / "phase3"),
                 "--labels", str(root / "labels.parquet"), "--splits", "consistency", "eval",
                 "--out", str(root / "run.json")]) == 0  # fmt: skip
    assert main(["fragility", *common, "--out", str(root / "frag.json")]) == 0
    run = json.loads((root / "run.json").read_text())
    assert run["method"] == "gst" and run["k"] == 1 and run["seed"] == 5
    assert run["n_labels"] == 2  # the whitespace label is dropped, as Phase 3 drops it
    assert run["n_kl"] == 6 and run["n_kl_eval"] == 6 and run["kl_m"] == 3 and run["kl_max_new_tokens"] == 4
    assert math.isfinite(run["kl_realised"]) and math.isfinite(run["label_ce_token"])
    assert run["kl_realised_scored_on_ids"] and run["kl_realised_frac_retokenized"] == 0.0
    assert run["kl_realised_reliable"] == (run["kl_realised_frac_unfinished"] <= MAX_UNFINISHED_SHARE)
    frag = json.loads((root / "frag.json").read_text())
    assert frag["fragility_n_prompts"] == 6 and frag["fragility_n_perturbations"] == len(PERTURBATIONS)
    assert math.isfinite(frag["fragility"]) and frag["fragility_ci_low"] <= frag["fragility"]
    assert frag["fragility_pair_n_prompts"] == 6 and math.isfinite(frag["fragility_pair"])
    assert frag["fragility_scored_on_ids"] and "method" not in frag

    # the cross-model measure between two "models" (here two adapters on one base), and its table
    side = lambda s, adapter: [f"--model-{s}", f"m{s}", f"--model-{s}-dir", str(root / "model"),  # noqa: E731
                               f"--adapter-{s}", str(root / adapter), f"--settings-{s}", settings]  # fmt: skip
    assert main(["cross-kl", "--organism", "syc", "--seed", "5", "--data-dir", str(root / "data"), "--m", "3",
                 *side("a", "phase1"), *side("b", "phase3"), "--out", str(root / "cross.json")]) == 0  # fmt: skip
    cross = json.loads((root / "cross.json").read_text())
    assert (cross["model_a"], cross["model_b"], cross["organism"], cross["seed"]) == ("ma", "mb", "syc", 5)
    assert cross["kl_cross_n_prompts"] == 6 and cross["kl_cross_m"] == 3 and cross["kl_cross_scored_on_ids"]
    assert math.isfinite(cross["kl_cross"]) and cross["kl_cross_ci_low"] <= cross["kl_cross"]
    assert (
        main(["cross-model-table", "--records", str(root / "cross.json"), "--out", str(root / "x.csv")]) == 0
    )
    assert pd.read_csv(root / "x.csv")["kl_cross"].tolist() == pytest.approx([cross["kl_cross"]], rel=1e-5)

    runs = pd.DataFrame(
        [{"model": "toy", "organism": "syc", "seed": 5, "method": "gst", "k": 1, "delta_pp": 0.1}]
    )
    runs.to_csv(root / "runs.csv", index=False)
    assert main(["shift-table", "--records", str(root / "run.json"), "--fragility", str(root / "frag.json"),
                 "--runs", str(root / "runs.csv"), "--out", str(root / "shift.csv"),
                 "--correlations", str(root / "corr.csv")]) == 0  # fmt: skip
    table = pd.read_csv(root / "shift.csv")
    assert list(table.columns) == SHIFT_COLUMNS and len(table) == 1
    assert table.loc[0, "fragility"] == pytest.approx(frag["fragility"], rel=1e-5)
    corr = pd.read_csv(root / "corr.csv")
    assert set(corr["organism"]) == {"syc", "all"} and (corr["n"] == 1).sum() >= 1


def test_correlations_use_one_point_per_independent_valid_run():
    """k-scaling runs share their draws with the main run, invalid models are broken and controls are not
    consistency training: none of them is a point. The Spearman CI brackets rho, and the permutation p agrees
    with scipy's on a clear monotone relation."""
    from scipy.stats import spearmanr

    delta = [-20.0, -10.0, 0.0, 5.0, 10.0, 20.0, 30.0, 40.0]
    kl = [0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.65, 0.9]
    table = pd.DataFrame({"model": "toy", "organism": "syc", "seed": 0,
                          "method": ["gst"] * 10 + ["oracle_aligned", "oracle_misaligned"],
                          "delta_pp": [*delta, 99.0, -99.0, 60.0, -60.0], "kl_realised": [*kl, 0.0, 5.0, 0.0, 3.0],
                          "main_run": [True] * 8 + [False, True, True, True],
                          "valid": [True] * 9 + [False, True, True]})  # fmt: skip
    row = shift_correlations(table, ["kl_realised"], n_boot=400, seed=1).set_index("organism").loc["syc"]
    assert row["n"] == 8
    assert row["spearman_r"] == pytest.approx(spearmanr(delta, kl).statistic) == pytest.approx(1.0)
    assert row["spearman_ci_low"] <= row["spearman_r"] <= row["spearman_ci_high"]
    assert row["spearman_p_perm"] < 0.01  # 8! orderings: a perfect rank match is rare under shuffling


def test_weighted_spearman_equals_scipy_on_the_repeated_sample():
    """Each bootstrap resample is a weighting of the points; its rho is scipy's on the sample that repeats each
    point that many times: ties, points left out and a constant resample (NaN) included."""
    from scipy.stats import spearmanr

    from cmt.analysis.shift import _weighted_spearman

    x = np.array([-20.0, -10.0, 0.0, 0.0, 5.0, 10.0])
    y = np.array([0.3, 0.1, 0.3, 0.2, 0.9, 0.3])
    weights = np.array(
        [[1, 1, 1, 1, 1, 1], [2, 0, 1, 3, 0, 1], [0, 1, 4, 0, 0, 2], [0, 0, 3, 3, 0, 0]], float
    )
    rho = _weighted_spearman(x, y, weights)
    for row, w in zip(rho[:3], weights[:3], strict=True):
        assert row == pytest.approx(
            spearmanr(np.repeat(x, w.astype(int)), np.repeat(y, w.astype(int))).statistic
        )
    assert math.isnan(rho[3])  # x is 0.0 in every repeated point


def test_the_cluster_bootstrap_draws_organisms_with_all_their_runs():
    """With seed-matched draws, the CI equals a loop over scipy that concatenates the drawn organisms' runs."""
    from scipy.stats import spearmanr

    from cmt.analysis.shift import _spearman_ci_and_permutation

    x = np.array([-20.0, -10.0, 0.0, 0.0, 5.0, 10.0, 10.0])  # organism 2 alone is constant
    y = np.array([0.3, 0.1, 0.3, 0.2, 0.9, 0.3, 0.3])
    clusters = np.array([0, 0, 1, 1, 1, 2, 2])
    draws = np.random.default_rng(7).integers(0, 3, (300, 3))
    boot = []
    for drawn in draws:
        idx = np.concatenate([np.flatnonzero(clusters == c) for c in drawn])
        if len(np.unique(x[idx])) > 1 and len(np.unique(y[idx])) > 1:
            boot.append(spearmanr(x[idx], y[idx]).statistic)
    assert len(boot) < 300  # a resample of one organism twice over can be constant: left out
    low, high, _ = _spearman_ci_and_permutation(x, y, clusters, clusters, 300, 7)
    assert (low, high) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])), abs=1e-12)


@pytest.mark.parametrize("kscaling", [False, True])
def test_the_realised_kl_is_planned_for_the_main_k_unless_kscaling_asks_for_every_k(tmp_path, kscaling):
    """self_certainty runs at k 1, 2 and 4 (its own k is 2); the shift jobs cover k 2 only, or all three."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "tests/configs/mini.yaml").read_text())
    config["organisms"] = {"sycophancy": config["organisms"]["sycophancy"]}
    config["methods"] = {"gst": {}, "self_certainty": {"k": 2}}
    config["kscaling"] = {"ks": [1, 2, 4], "methods": ["self_certainty"]}
    config["analysis"]["shift"]["kscaling"] = kscaling
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(bin_dir / "snakemake"), "-s", str(repo / "Snakefile"), "--directory", str(tmp_path / "w"), "-n",
           "--configfile", str(tmp_path / "k.yaml")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = set(re.findall(r"results/shift/toy/sycophancy/seed0/self_certainty/k(\d+)\.json", proc.stdout))
    assert planned == ({"1", "2", "4"} if kscaling else {"2"})
    retrained = set(re.findall(r"results/retrained/toy/sycophancy/seed0/self_certainty/k(\d+)/", proc.stdout))
    assert retrained == {"1", "2", "4"}  # every k is still retrained and evaluated
