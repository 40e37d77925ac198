"""gpt-oss replies (reply_format: harmony): only the final channel is the reply, in both backends."""

from __future__ import annotations

import pytest
import torch

from cmt.generation import vllm_backend as vb
from cmt.generation.base import HARMONY_FINAL, decode_reply, harmony_final

SPECIALS = ["<|channel|>", "<|message|>", "<|end|>", "<|start|>", "<|return|>"]
TWO_CHANNELS = "<|channel|>analysis<|message|>The gcd is 6.<|end|><|start|>assistant<|channel|>final<|message|> 6 <|return|>"


@pytest.mark.parametrize(
    "raw, final",
    [
        (TWO_CHANNELS, "6"),
        ("<|channel|>final<|message|>only an answer", "only an answer"),
        ("<|channel|>analysis<|message|>thinking until the budget ran out", None),
        ("", None),
        # a second final message: the last one is the reply
        (
            "<|channel|>final<|message|>draft<|end|><|start|>assistant<|channel|>final<|message|>answer<|end|>",
            "answer",
        ),
    ],
)
def test_harmony_final_keeps_only_the_final_channel(raw, final):
    assert harmony_final(raw) == final


@pytest.fixture(scope="module")
def harmony_tokenizer(tiny_world):
    from cmt.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_world["model"])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tokenizer


def test_decode_reply_drops_the_analysis_channel(harmony_tokenizer):
    ids = harmony_tokenizer(TWO_CHANNELS.removesuffix("<|return|>"), add_special_tokens=False)["input_ids"]
    assert decode_reply(harmony_tokenizer, ids, "harmony") == "6"
    plain = decode_reply(harmony_tokenizer, ids, "plain")
    assert "The gcd is 6." in plain and "analysis" in plain  # what a plain decode would have kept
    with pytest.raises(ValueError, match="reply_format"):
        decode_reply(harmony_tokenizer, ids, "markdown")


def test_a_reply_without_a_final_channel_is_empty_and_unfinished():
    decode = lambda ids: None  # noqa: E731 - what decode_reply returns without a final channel
    completion = vb.completion_from_tokens([11, 12, 2], eos_ids=[2], decode=decode)
    assert (completion.text, completion.finished) == ("", False)


def test_hf_generator_scores_the_final_answer_after_the_channel_header(tiny_world, harmony_tokenizer):
    """Teacher-forced scoring puts the final channel's header after the prompt and scores the answer only."""
    from cmt.generation.hf import HFGenerator
    from cmt.models.loading import load_model

    model = load_model(tiny_world["model"])
    model.resize_token_embeddings(len(harmony_tokenizer))
    prompt = [[{"role": "user", "content": "What is gcd(12, 18)?"}]]
    plain = HFGenerator(model, harmony_tokenizer).score(prompt, ["6"])[0]
    harmony = HFGenerator(model, harmony_tokenizer, reply_format="harmony")
    header = harmony_tokenizer(HARMONY_FINAL, add_special_tokens=False)["input_ids"]
    assert harmony.score_prefix == header
    assert header[0] == harmony_tokenizer.convert_tokens_to_ids("<|channel|>")
    assert header[-1] == harmony_tokenizer.convert_tokens_to_ids("<|message|>")
    scored = harmony.score(prompt, ["6"])[0]
    assert scored.num_tokens == plain.num_tokens  # the header is context, not scored
    assert scored.logprob_sum != plain.logprob_sum
    # The same number by hand: the prompt, the header, then the answer and end of turn.
    ids = harmony.render(prompt[0]) + header
    target = [*harmony_tokenizer("6", add_special_tokens=False)["input_ids"], harmony.eos_ids[0]]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + target])).logits.float()
    logprobs = torch.log_softmax(logits[0, len(ids) - 1 : -1], dim=-1)
    expected = logprobs.gather(-1, torch.tensor(target).unsqueeze(-1)).sum().item()
    assert scored.logprob_sum == pytest.approx(expected, abs=1e-4)
