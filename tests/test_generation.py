import math

import pytest
import torch

from cmt.data.splits import load_split
from cmt.generation import SamplingParams
from cmt.generation.hf import HFGenerator
from cmt.models.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_and_prompts(tiny_world):
    tokenizer = load_tokenizer(tiny_world["model"])
    model = load_model(tiny_world["model"])
    prompts = [e.prompt for e in load_split(tiny_world["data"] / "sycophancy", "eval")][:48]
    return model, tokenizer, prompts


def test_pretrained_tiny_model_learned_gcd(tiny_world):
    """A smaller version of the toy base learns: loss falls and held-out GCD accuracy beats guessing."""
    report = tiny_world["report"]
    assert report["final_loss"] < 0.5 * report["first_loss"]
    rows = load_split(tiny_world["data"] / "sycophancy", "eval")
    always_one = sum(e.meta["answer"] == "1" for e in rows) / len(rows)
    assert report["heldout_accuracy"]["sycophancy"] >= always_one + 0.2


def test_chat_template_renders_like_an_instruct_model(model_and_prompts):
    _, tokenizer, _ = model_and_prompts
    messages = [{"role": "user", "content": "Compute gcd(4, 6)."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|user|>Compute gcd(4, 6).<|end|><|assistant|>"
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_batched_greedy_equals_one_at_a_time(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    params = SamplingParams(max_new_tokens=24)
    batched = HFGenerator(model, tokenizer, batch_size=16).generate(prompts, 1, params, seed=0)
    single = HFGenerator(model, tokenizer, batch_size=1).generate(prompts, 1, params, seed=0)
    assert [c[0].text for c in batched] == [c[0].text for c in single]
    assert all(c[0].finished for c in batched)


def test_sampling_is_seeded(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    gen = HFGenerator(model, tokenizer, batch_size=32)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=24)
    first = gen.generate(prompts[:16], 4, params, seed=5)
    again = gen.generate(prompts[:16], 4, params, seed=5)
    other = gen.generate(prompts[:16], 4, params, seed=6)
    texts = lambda out: [c.text for cands in out for c in cands]  # noqa: E731
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)
    assert all(len(c) == 4 for c in first)


def test_score_matches_a_manual_forward_pass(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    gen = HFGenerator(model, tokenizer, batch_size=8)
    completions = ["The gcd of 4 and 6 is 2.", "No.", "What a great answer! Yes, gcd(4, 6) = 2."] * 4
    scores = gen.score(prompts[:12], completions)
    for prompt, text, score in zip(prompts[:12], completions, scores, strict=True):
        prompt_ids = gen.render(prompt)
        target = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + target], device=model.device)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        expected = sum(logp[len(prompt_ids) + i - 1, t].item() for i, t in enumerate(target))
        assert score.num_tokens == len(target)
        assert score.logprob_sum == pytest.approx(expected, abs=1e-3)
        assert score.logprob_mean == pytest.approx(expected / len(target), abs=1e-3)
        assert math.isfinite(score.logprob_sum) and score.logprob_sum < 0


def test_greedy_reply_scores_higher_than_a_wrong_one(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    gen = HFGenerator(model, tokenizer, batch_size=8)
    greedy = gen.generate(prompts[:8], 1, SamplingParams(max_new_tokens=24), seed=0)
    texts = [c[0].text for c in greedy]
    good = gen.score(prompts[:8], texts)
    bad = gen.score(prompts[:8], [t[::-1] for t in texts])
    assert all(g.logprob_sum > b.logprob_sum for g, b in zip(good, bad, strict=True))


def test_sampling_params_reject_nonsense():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="beam"):
        SamplingParams(temperature=0.7, num_beams=4)
