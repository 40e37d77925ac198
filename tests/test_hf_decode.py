"""The HF backend's own decoding loop against transformers' `generate` and TopPLogitsWarper."""

import pytest
import torch

from cmt.generation import SamplingParams, hf_decode
from cmt.generation.hf import HFGenerator
from cmt.generation.hf_decode import (
    DECODE_LOOP_MODEL_TYPES,
    NUCLEUS_TOP_K,
    decode,
    nucleus_tokens,
    row_uniforms,
)

TINY = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 128,
        "pad_token_id": 0, "initializer_range": 0.5}  # fmt: skip
EXTRA = {
    "gemma2": {"sliding_window": 4, "query_pre_attn_scalar": 8},
    "mistral": {"sliding_window": 4},
    "gpt_oss": {
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"],
    },
}


def tiny_model(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **TINY, **EXTRA.get(model_type, {}))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def left_padded(lengths, vocab, pad=0):
    torch.manual_seed(1)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(3, vocab, (n,))
        mask[row, width - n :] = 1
    return ids, mask


@pytest.mark.parametrize("model_type", sorted(DECODE_LOOP_MODEL_TYPES))
# Ended rows leave the batch at once (1.0), once a quarter of it has ended (the default), or never (0.0).
@pytest.mark.parametrize("compact_at", [1.0, hf_decode.COMPACT_AT, 0.0])
def test_greedy_decoding_equals_transformers_generate(model_type, compact_at, monkeypatch):
    """Same tokens as `generate`, with left padding (sliding windows shorter than the prompts where the
    architecture has one) and rows ending early, which leave the batch and the KV cache."""
    from transformers import GenerationConfig

    monkeypatch.setattr(hf_decode, "COMPACT_AT", compact_at)
    model = tiny_model(model_type)
    ids, mask = left_padded([3, 9, 6, 12, 1, 7], TINY["vocab_size"])
    free = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=12, eos_token_id=[], pad_token_id=0))[:, ids.shape[1]:]  # fmt: skip
    # End-of-turn tokens that end some rows early and leave others running to the budget.
    eos = sorted({int(free[0, 2]), int(free[3, 5])})
    expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=0))[:, ids.shape[1]:]  # fmt: skip
    expected_rows = []
    for row in expected.tolist():
        ends = [i for i, t in enumerate(row) if t in eos]
        expected_rows.append(row[: ends[0] + 1] if ends else row)
    got = decode(model, ids, mask, eos, max_new_tokens=12)
    assert got == expected_rows
    lengths = {len(r) for r in got}
    assert min(lengths) < 12 and max(lengths) == 12  # rows ended early and rows ran to the budget


def hf_top_p_probs(logits, temperature, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, -1)


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5])
# spread 0.5: flat logits, whose nucleus needs the full sort; 6.0: peaked ones, whose top-k holds it
@pytest.mark.parametrize("spread", [0.5, 6.0])
def test_nucleus_draws_follow_the_warped_distribution(top_p, spread):
    """Inverse-CDF draws over a fine grid of uniforms hit each token as often as transformers' temperature and
    top-p warpers give it probability, so draws from uniform u follow that distribution."""
    torch.manual_seed(2)
    vocab, grid = 300, 20000
    logits = torch.randn(4, vocab) * spread
    expected = hf_top_p_probs(logits, 0.7, top_p)
    u = (torch.arange(grid) + 0.5) / grid
    for row in range(len(logits)):
        tokens = nucleus_tokens(logits[row].expand(grid, vocab), 0.7, top_p, u)
        freq = torch.bincount(tokens, minlength=vocab).float() / grid
        assert torch.allclose(freq, expected[row], atol=2.0 / grid)
    if spread < 1:  # the flat case really needed more than the top-k
        assert (expected > 0).sum(-1).min() > NUCLEUS_TOP_K or top_p == 0.5


@pytest.mark.parametrize("model_type", sorted(DECODE_LOOP_MODEL_TYPES))
@pytest.mark.parametrize("compact_at", [1.0, hf_decode.COMPACT_AT, 0.0])
def test_samples_sharing_their_prompts_prefill_are_the_samples_of_repeated_prompts(
    model_type, compact_at, monkeypatch
):
    """repeats=n prefills each prompt once and repeats its cache: the same tokens as n copies of each prompt,
    whenever ended rows leave the batch."""
    model = tiny_model(model_type)
    ids, mask = left_padded([3, 9, 6, 12, 1], TINY["vocab_size"])
    u = torch.rand(len(ids) * 4, 10, generator=torch.Generator().manual_seed(3))
    eos = list(range(5, 15))
    copies = decode(model, ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0), eos, 10,
                    temperature=3.0, top_p=0.95, uniforms=u)  # fmt: skip
    monkeypatch.setattr(hf_decode, "COMPACT_AT", compact_at)
    shared = decode(model, ids, mask, eos, 10, temperature=3.0, top_p=0.95, uniforms=u, repeats=4)
    assert shared == copies
    assert any(len(row) < 10 for row in copies)  # some rows ended early and left the batch
    assert len({tuple(r) for r in copies[:4]}) > 1  # a prompt's samples differ


def test_sampling_needs_one_uniform_per_row_and_step():
    model = tiny_model("llama")
    ids, mask = left_padded([3, 4], TINY["vocab_size"])
    with pytest.raises(ValueError, match="one uniform per row and step"):
        decode(model, ids, mask, [1], max_new_tokens=5, temperature=1.0, uniforms=torch.rand(2, 4))
    with pytest.raises(ValueError, match="one uniform per row and step"):  # two prompts x two samples
        decode(model, ids, mask, [1], max_new_tokens=5, temperature=1.0, uniforms=torch.rand(2, 5), repeats=2)


def test_row_uniforms_are_per_row_streams():
    a = row_uniforms(7, [(0, 0), (0, 1), (5, 0)], 6)
    b = row_uniforms(7, [(5, 0), (0, 0)], 6)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], row_uniforms(8, [(0, 0)], 6)[0])
    assert ((a >= 0) & (a < 1)).all()


@pytest.fixture
def toy(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    return model, tokenizer, prompts[:24]


def test_a_sample_does_not_depend_on_its_batch(toy):
    """Each row draws from its own seeded stream: batch size and the other prompts of a call change nothing."""
    model, tokenizer, prompts = toy
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=24)
    wide = HFGenerator(model, tokenizer, batch_size=64).generate(prompts, 3, params, seed=4)
    narrow = HFGenerator(model, tokenizer, batch_size=3).generate(prompts, 3, params, seed=4)
    texts = lambda out: [c.text for cands in out for c in cands]  # noqa: E731
    assert texts(wide) == texts(narrow)
    assert len(set(texts(wide))) > len(prompts)  # the samples of a prompt differ


def test_toy_greedy_equals_transformers_generate(toy):
    """On the toy model (the pipeline's default) greedy replies are generate's, through the generator."""
    from transformers import GenerationConfig

    model, tokenizer, prompts = toy
    gen = HFGenerator(model, tokenizer, batch_size=16)
    ours = [c[0].token_ids for c in gen.generate(prompts, 1, SamplingParams(max_new_tokens=24), seed=0)]
    for prompt, got in zip(prompts, ours, strict=True):
        ids = torch.tensor([gen.render(prompt)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=24, eos_token_id=gen.eos_ids, pad_token_id=gen.pad_id))  # fmt: skip
        row = out[0, ids.shape[1] :].tolist()
        ends = [i for i, t in enumerate(row) if t in gen.eos_ids]
        assert tuple(row[: ends[0] + 1] if ends else row) == got
