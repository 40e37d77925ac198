"""The cross-model KL between two models' organisms: against the exact sum when the models share a vocabulary,
and when they do not (the ids then mean other tokens, so the text is scored)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_shift import BUDGET, VOCAB, exact_kl, make_model, make_tokenizer, with_logit_bias

from cmt.generation.hf import HFGenerator
from cmt.phases.cross_model import cross_model_kl, cross_model_record, same_vocabulary
from cmt.phases.shift import sample_log_ratios


def swapped(model, first: str, second: str):
    """The same function of strings under a vocabulary where `first` and `second` trade ids."""
    out = copy.deepcopy(model)
    i, j = VOCAB[first], VOCAB[second]
    with torch.no_grad():
        for weights in (out.model.embed_tokens.weight, out.lm_head.weight, out.lm_head.bias):
            weights[[i, j]] = weights[[j, i]]
    return out


@pytest.fixture(scope="module")
def pair():
    tokenizer = make_tokenizer()
    a = make_model(1)
    b = with_logit_bias(a, "a", 1.0)
    prompts = [[{"role": "user", "content": text}] for text in ("a b", "b c", "c a", "a a", "b b", "c c a")]
    swapped_vocab = {**VOCAB, "a": VOCAB["c"], "c": VOCAB["a"]}
    return {
        "tokenizer": tokenizer,
        "a": HFGenerator(a, tokenizer, batch_size=4096),
        "b": HFGenerator(b, tokenizer, batch_size=4096),
        "b_swapped": HFGenerator(swapped(b, "a", "c"), make_tokenizer(swapped_vocab), batch_size=4096),
        "prompts": prompts,
        "exact": exact_kl(a, b, tokenizer, prompts, prompts),
    }


def test_same_vocabulary_scores_ids_and_matches_the_exact_sum(pair):
    assert same_vocabulary(pair["a"], pair["b"]) and not same_vocabulary(pair["a"], pair["b_swapped"])
    est = cross_model_kl(pair["a"], pair["b"], pair["prompts"], m=300, seed=0, max_new_tokens=BUDGET)
    assert est["scored_on_ids"] and est["n"] == len(pair["prompts"])
    assert est["kl_se"] < 0.25 * pair["exact"]
    assert abs(est["kl"] - pair["exact"]) < 4 * est["kl_se"], (est, pair["exact"])


def test_another_vocabulary_is_scored_on_text_and_still_matches(pair):
    """B with a and c trading ids is the same distribution over strings: scoring the text recovers the exact
    KL; scoring A's ids under B (the negative control) measures something else."""
    est = cross_model_kl(pair["a"], pair["b_swapped"], pair["prompts"], m=300, seed=0, max_new_tokens=BUDGET)
    assert not est["scored_on_ids"] and est["frac_retokenized"] == 0.0 and not est["reliable"]
    assert abs(est["kl"] - pair["exact"]) < 4 * est["kl_se"], (est, pair["exact"])
    wrong = sample_log_ratios(
        pair["a"], pair["prompts"], [(pair["b_swapped"], pair["prompts"])], 300, 0, BUDGET
    )
    wrong_kl = float(np.mean(wrong.log_ratio))
    assert abs(wrong_kl - pair["exact"]) > 10 * est["kl_se"], (wrong_kl, pair["exact"])
    record = cross_model_record({"model_a": "x", "model_b": "y", "organism": "o", "seed": 0}, est)
    assert record["kl_cross"] == est["kl"] and record["kl_cross_scored_on_ids"] is False
    assert record["kl_cross_reliable"] is False and record["kl_cross_n_prompts"] == len(pair["prompts"])


def test_a_model_against_itself_is_exactly_zero(pair):
    est = cross_model_kl(pair["a"], pair["a"], pair["prompts"], m=20, seed=1, max_new_tokens=BUDGET)
    assert est["kl"] == 0.0 and est["kl_se"] == 0.0


def test_a_config_with_two_models_plans_both_directions_of_every_pair(tmp_path):
    """Two models: cross_model_kl for (A, B) and (B, A) on every organism and seed, then cross_model_kl.csv; one
    model plans none."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "tests/configs/mini.yaml").read_text())
    config["models"]["toy_b"] = copy.deepcopy(config["models"]["toy"])
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def plan(configfile):
        cmd = [str(bin_dir / "snakemake"), "-s", str(repo / "Snakefile"), "--directory", str(tmp_path / "w"), "-n",
               "--configfile", str(configfile)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout[proc.stdout.index("Job stats:") :], re.M))
        return stats, proc.stdout

    stats, out = plan(tmp_path / "two.yaml")
    n_organisms, n_seeds = len(config["organisms"]), len(config["seeds"])
    assert stats["cross_model_kl"] == str(2 * n_organisms * n_seeds) and stats["cross_model_table"] == "1"
    assert "results/shift/cross/sycophancy/seed0/toy__toy_b.json" in out
    assert "results/shift/cross/sycophancy/seed0/toy_b__toy.json" in out
    assert "cross_model_kl" not in plan(repo / "tests/configs/mini.yaml")[0]
