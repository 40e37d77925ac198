import math
from types import SimpleNamespace

import pytest
import torch

from cmt.data.splits import load_split
from cmt.generation import SamplingParams
from cmt.generation.hf import HFGenerator


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


def test_greedy_decodes_a_repeated_prompt_once(model_and_prompts, monkeypatch):
    model, tokenizer, prompts = model_and_prompts
    params = SamplingParams(max_new_tokens=24)
    gen = HFGenerator(model, tokenizer, batch_size=16)
    repeated = [prompts[i] for i in (0, 1, 0, 2, 3, 1, 4, 0, 2, 4)]
    calls = []
    real = gen._batches
    monkeypatch.setattr(
        gen, "_batches", lambda lengths, size: calls.append(len(lengths)) or real(lengths, size)
    )
    out = gen.generate(repeated, 1, params, seed=0)
    assert calls == [5]  # five distinct prompts decoded
    single = HFGenerator(model, tokenizer, batch_size=1).generate(repeated, 1, params, seed=0)
    assert [c[0].text for c in out] == [c[0].text for c in single]
    assert out[0] is not out[2] and out[0] == out[2]  # equal lists, not one shared list
    # Sampling keeps every repeat: each row draws from its own seeded stream.
    gen.generate(repeated, 1, SamplingParams(temperature=1.0, max_new_tokens=24), seed=0)
    assert calls[1:] == [10]


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


def test_completions_carry_their_sampled_token_ids(model_and_prompts):
    """token_ids are what was generated: the reply's tokens, then the end-of-turn token when one ended it."""
    model, tokenizer, prompts = model_and_prompts
    gen = HFGenerator(model, tokenizer, batch_size=32)
    out = [
        c
        for budget in (3, 24)
        for cands in gen.generate(
            prompts[:8], 3, SamplingParams(temperature=1.0, max_new_tokens=budget), seed=1
        )
        for c in cands
    ]
    kinds = set()
    for c in out:
        ids = list(c.token_ids)
        assert c.finished == (ids[-1] in gen.eos_ids) and not set(ids[:-1]) & set(gen.eos_ids)
        reply = ids[:-1] if c.finished else ids
        assert c.text == tokenizer.decode(reply, skip_special_tokens=True) and c.num_tokens == len(ids)
        kinds.add(c.finished)
    assert kinds == {True, False}  # both a finished and a cut reply were checked


def test_score_ids_matches_a_manual_forward_pass(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    gen = HFGenerator(model, tokenizer, batch_size=3)
    token_ids = [tokenizer("The gcd is 2.", add_special_tokens=False)["input_ids"], [5, 9, 5], []] * 2
    eos = gen.eos_ids[0]
    for end_of_turn in (False, True):
        scores = gen.score_ids(prompts[:6], token_ids, end_of_turn=end_of_turn)
        for prompt, ids, score in zip(prompts[:6], token_ids, scores, strict=True):
            target = [*ids, eos] if end_of_turn else ids
            full = gen.render(prompt) + target
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
            start = len(full) - len(target)
            expected = sum(logp[start + i - 1, t].item() for i, t in enumerate(target))
            assert score.num_tokens == len(target)
            assert score.logprob_sum == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="2 prompts but 1 token id lists"):
        gen.score_ids(prompts[:2], token_ids[:1])


def test_scoring_on_target_positions_equals_the_full_logits(model_and_prompts, monkeypatch):
    """The LM head on the target positions only gives the numbers of the full logits (log-prob sums and
    self-certainty), with empty targets and replies of every length in one batch. Not always bit for bit: the
    head's matrix product on fewer rows may round in another order (it matched bit for bit on 2,400 sampled
    replies of 256-row batches, docs/benchmarks.md)."""
    import cmt.generation.hf as hf

    model, tokenizer, prompts = model_and_prompts
    gen = HFGenerator(model, tokenizer, batch_size=5)
    assert model.config.model_type in hf.TARGET_HEAD_MODEL_TYPES
    token_ids = [
        [],
        [5],
        [5, 9, 5, 7],
        tokenizer("The gcd of 4 and 6 is 2.", add_special_tokens=False)["input_ids"],
    ]
    token_ids = (token_ids * 3)[:12]
    fast = gen.score_ids(prompts[:12], token_ids, end_of_turn=True) + gen.score_ids(prompts[:12], token_ids)
    monkeypatch.setattr(hf, "TARGET_HEAD_MODEL_TYPES", frozenset())
    full = gen.score_ids(prompts[:12], token_ids, end_of_turn=True) + gen.score_ids(prompts[:12], token_ids)
    assert [s.num_tokens for s in fast] == [s.num_tokens for s in full]
    for a, b in zip(fast, full, strict=True):
        assert a.logprob_sum == pytest.approx(b.logprob_sum, rel=1e-5, abs=1e-5)
        assert a.kl_uniform_mean == pytest.approx(b.kl_uniform_mean, rel=1e-5, abs=1e-5)
    assert [s.num_tokens for s in fast[:4]] == [1, 2, 5, len(token_ids[3]) + 1]


def test_sampling_ignores_the_model_generation_config_processors(model_and_prompts):
    """Samples come from the model's own distribution: settings of its generation_config that reshape it (a
    repetition penalty, an n-gram ban) are not applied, so the seeded samples do not change."""
    import copy

    model, tokenizer, prompts = model_and_prompts
    params = SamplingParams(temperature=1.0, max_new_tokens=16)
    plain = HFGenerator(model, tokenizer, batch_size=32).generate(prompts[:8], 2, params, seed=3)
    shaped = copy.deepcopy(model)
    shaped.generation_config.repetition_penalty = 5.0
    shaped.generation_config.no_repeat_ngram_size = 1
    again = HFGenerator(shaped, tokenizer, batch_size=32).generate(prompts[:8], 2, params, seed=3)
    assert [c.token_ids for cands in plain for c in cands] == [c.token_ids for cands in again for c in cands]
    assert any(len(set(c.token_ids)) < len(c.token_ids) for cands in plain for c in cands)  # repeats occur


# ---------------------------------------------------------------- vLLM: sampled ids and id scoring (stand-ins)


def test_vllm_completions_keep_the_sampled_ids_and_their_stop_token():
    from cmt.generation.vllm_backend import completion_from_tokens

    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    assert completion_from_tokens([11, 12, 3, 13], [2, 3], decode).token_ids == (11, 12, 3)
    assert completion_from_tokens([11, 12, 13], [2], decode).token_ids == (11, 12, 13)
    # vLLM left the stop token out: its id comes back from stop_reason; unknown (EOS, no id) gives None.
    assert completion_from_tokens([11, 12], [2, 3], decode, stopped=True, stop_reason=3).token_ids == (
        11,
        12,
        3,
    )
    assert completion_from_tokens([11, 12], [2, 3], decode, stopped=True).token_ids is None


class PromptLogprobEngine:
    """Answers vLLM prompt_logprobs requests from a real (tiny) causal LM."""

    def __init__(self, model):
        self.model = model

    @torch.inference_mode()
    def generate(self, prompts, sampling_params, use_tqdm, lora_request):
        assert sampling_params.prompt_logprobs == 0
        outputs = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"]
            logp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), dim=-1)
            per_position = [None] + [{ids[i]: logp[i - 1, ids[i]].item()} for i in range(1, len(ids))]
            outputs.append(SimpleNamespace(prompt_logprobs=per_position, outputs=[]))
        return outputs


def test_vllm_score_ids_equals_the_hf_backend(model_and_prompts):
    from cmt.generation.vllm_backend import VLLMGenerator

    model, tokenizer, prompts = model_and_prompts
    hf = HFGenerator(model, tokenizer, batch_size=4)
    api = SimpleNamespace(SamplingParams=lambda **kw: SimpleNamespace(**kw), LoRARequest=None)
    vllm = VLLMGenerator(PromptLogprobEngine(model), tokenizer, hf.eos_ids, api=api)
    token_ids = [[5, 9, 5], [], [7, hf.eos_ids[0]]]
    for end_of_turn in (False, True):
        got = vllm.score_ids(prompts[:3], token_ids, end_of_turn=end_of_turn)
        want = hf.score_ids(prompts[:3], token_ids, end_of_turn=end_of_turn)
        for g, w in zip(got, want, strict=True):
            assert g.num_tokens == w.num_tokens
            assert g.logprob_sum == pytest.approx(w.logprob_sum, abs=1e-4)
    assert vllm.score_ids(prompts[:1], [[]])[0].num_tokens == 0  # nothing to score: no request
