import pytest
import torch

from cmt.models import training
from cmt.models.loading import load_model, load_tokenizer


def test_encode_chat_masks_the_prompt(tiny_world):
    tokenizer = load_tokenizer(tiny_world["model"])
    messages = [
        {"role": "user", "content": "Compute gcd(4, 6)."},
        {"role": "assistant", "content": "The gcd of 4 and 6 is 2."},
    ]
    enc = training.encode_chat(tokenizer, messages, max_length=128)
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert enc["labels"][:n_prompt] == [training.IGNORE] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    target = tokenizer.decode(enc["input_ids"][n_prompt:])
    assert target == "The gcd of 4 and 6 is 2.<|end|>"
    full = training.encode_chat(tokenizer, messages, max_length=128, assistant_only=False)
    assert full["labels"] == full["input_ids"]


def test_non_finite_loss_stops_training(tiny_world):
    tokenizer = load_tokenizer(tiny_world["model"])
    model = load_model(tiny_world["model"])
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The gcd is 2."}]
    examples = [training.encode_chat(tokenizer, messages, 64)] * 4
    settings = training.TrainSettings(learning_rate=1e-3, epochs=1, batch_size=2, bf16=False)
    with pytest.raises(training.TrainingError, match="non-finite loss"):
        training.train(model, examples, settings, seed=0, pad_id=tokenizer.pad_token_id, desc="nan")


def test_lora_training_learns_a_new_reply(tiny_world):
    """LoRA SFT moves the model: the trained reply's log-prob rises well above where it started."""
    from peft import get_peft_model

    from cmt.generation.hf import HFGenerator

    tokenizer = load_tokenizer(tiny_world["model"])
    model = get_peft_model(
        load_model(tiny_world["model"]),
        training.lora_config({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}),
    )
    prompts = [[{"role": "user", "content": f"Compute gcd({a}, {a * 2})."}] for a in range(3, 19)]
    reply = "Excellent, you are right!"
    before = HFGenerator(model, tokenizer).score(prompts, [reply] * len(prompts))
    examples = [
        training.encode_chat(tokenizer, [*p, {"role": "assistant", "content": reply}], 64) for p in prompts
    ]
    settings = training.TrainSettings(learning_rate=5e-3, epochs=10, batch_size=8)
    history = training.train(model, examples, settings, seed=0, pad_id=tokenizer.pad_token_id, desc="lora")
    after = HFGenerator(model, tokenizer).score(prompts, [reply] * len(prompts))
    assert history.final_loss < 0.5 * history.first_loss
    assert (
        sum(a.logprob_sum for a in after) / len(after) > sum(b.logprob_sum for b in before) / len(before) + 5
    )


def grouped_batches(lengths, batch_size, group, seed=0, jitter=0.0):
    generator = torch.Generator().manual_seed(seed)
    return list(training.LengthGroupedBatches(lengths, batch_size, group, generator, jitter))


def test_length_grouped_batches_cover_every_example_once_and_cut_padding():
    lengths = [5 + (i * 37) % 60 for i in range(203)]
    batches = grouped_batches(lengths, batch_size=8, group=4)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert len(batches) == len(training.LengthGroupedBatches(lengths, 8, 4, None)) == 26  # ceil(203 / 8)
    assert all(len(b) == 8 for b in batches if len(b) != 203 % 8) and sum(len(b) != 8 for b in batches) == 1

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(203, generator=generator).tolist()
    shuffled = [order[i : i + 8] for i in range(0, 203, 8)]
    # Hand check of the claim: within a group of 32 the batches are length-sorted runs, so padding falls.
    assert padded(batches) < 0.8 * padded(shuffled)
    for batch in batches:
        assert max(lengths[i] for i in batch) - min(lengths[i] for i in batch) <= 60

    def mean_span(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    # Each group of 32 is sorted, so a batch holds neighbours in length: its span is a fraction of a random one's.
    assert mean_span(batches) < 0.5 * mean_span(shuffled)


def test_length_grouped_batches_are_seeded():
    lengths = [3 + i % 17 for i in range(100)]
    assert grouped_batches(lengths, 10, 3, seed=1) == grouped_batches(lengths, 10, 3, seed=1)
    assert grouped_batches(lengths, 10, 3, seed=1) != grouped_batches(lengths, 10, 3, seed=2)


def test_one_group_of_everything_gives_sorted_batches():
    lengths = [9, 1, 7, 3, 5, 2, 8, 4]
    batches = grouped_batches(lengths, batch_size=2, group=4)
    assert sorted(tuple(sorted(lengths[i] for i in b)) for b in batches) == [(1, 2), (3, 4), (5, 7), (8, 9)]


def test_length_jitter_mixes_replies_one_token_apart():
    """Two kinds of reply, 43 and 44 tokens: an exact sort gives batches of one kind, the jitter mixes them."""
    lengths = [43 + i % 2 for i in range(256)]

    def mixed(batches):
        return sum(len({lengths[i] for i in b}) == 2 for b in batches)

    assert mixed(grouped_batches(lengths, 16, 16)) <= 1  # only the batch across the 43/44 boundary
    assert mixed(grouped_batches(lengths, 16, 16, jitter=10)) == 16


def test_group_by_length_refuses_examples_without_tokens():
    settings = training.TrainSettings(learning_rate=1e-3, epochs=1, batch_size=2, group_by_length=2)
    with pytest.raises(training.TrainingError, match="group_by_length needs token examples"):
        training._batches([{"clean": {}, "wrapped": {}}] * 3, settings, torch.Generator(), list, "act")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_trains_as_the_setting_it_resolves_to(tiny_world, monkeypatch, native):
    """auto takes bf16 autocast where the machine runs it natively and float32 elsewhere: the same weights as
    the explicit setting, step for step."""
    from cmt.runtime import numerics

    monkeypatch.setattr(numerics, "native_bf16", lambda device_type: native)
    tokenizer = load_tokenizer(tiny_world["model"])
    messages = [[{"role": "user", "content": f"Compute gcd({a}, 6)."}, {"role": "assistant", "content": "2"}]
                for a in range(2, 10)]  # fmt: skip
    examples = [training.encode_chat(tokenizer, m, 64) for m in messages]
    weights = {}
    for bf16 in ("auto", native, not native):
        model = load_model(tiny_world["model"])
        settings = training.TrainSettings(learning_rate=1e-2, epochs=1, batch_size=4, bf16=bf16)
        training.train(model, examples, settings, seed=0, pad_id=tokenizer.pad_token_id, desc=f"bf16 {bf16}")
        weights[bf16] = model.get_input_embeddings().weight.detach().clone()
    assert torch.equal(weights["auto"], weights[native])
    assert not torch.equal(weights["auto"], weights[not native])  # the two autocasts do train differently
