"""ACT/BCT consistency losses: alignment under right padding, hand-computed values, stop-gradient, training."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cmt.methods import act, bct
from cmt.methods import losses as cl
from cmt.models.loading import load_model, load_tokenizer
from cmt.models.training import IGNORE, TrainingError, TrainSettings, encode_chat
from cmt.phases.consistency import encode_pairs, load_pairs, retrain_consistency, train_consistency

TRAIN = {
    "learning_rate": 5e-3,
    "epochs": 3,
    "batch_size": 4,
    "warmup_ratio": 0.0,
    "max_length": 128,
    "bf16": "auto",
}


def _settings(method_settings, **train):
    return {
        "dtype": "float32",
        "train": {**TRAIN, **train},
        "method": method_settings,
        "generation": {"batch_size": 32, "max_new_tokens": 24},
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matmuls are too small to gain from threads; on a busy 2-core machine two threads
    make these runs several times slower. Restored afterwards for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def organism(tiny_world, tmp_path_factory):
    """A quickly induced organism adapter on the tiny world (a few LoRA steps, dropout on)."""
    from cmt.phases.induce import induce

    out = tmp_path_factory.mktemp("organism") / "adapter"
    settings = {
        "dtype": "float32",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": "all-linear"},
        "train": {"learning_rate": 5e-3, "epochs": 1, "batch_size": 16, "max_length": 128, "bf16": "auto"},
    }
    induce(str(tiny_world["model"]), str(tiny_world["data"] / "sycophancy"), str(out), settings, seed=0)
    return out


# ---------------------------------------------------------------- alignment under right padding


def _conv(prompt: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


class PromptBlindModel:
    """Outputs at position t depend on token t only: a model that ignores the prompt."""

    def __init__(self, vocab: int, hidden: int = 6, layers: int = 2, classes: int = 11):
        g = torch.Generator().manual_seed(0)
        self.embed = torch.randn(vocab, hidden, generator=g)
        self.layers = [torch.randn(hidden, hidden, generator=g) for _ in range(layers)]
        self.head = torch.randn(hidden, classes, generator=g)

    def __call__(self, ids: torch.Tensor) -> cl.Forward:
        e = self.embed[ids]
        return cl.Forward(hidden=[e @ w for w in self.layers], logits=e @ self.head)


def test_response_alignment_is_exact_under_right_padding_and_reference_window_is_not(tiny_world):
    tok = load_tokenizer(tiny_world["model"])
    # Three rows; clean and wrapped prompts differ in length, in opposite directions across rows, and each row's
    # response is identical on both sides (but differs between rows).
    rows = [
        ("gcd(4, 6)?", "I think gcd(4, 6) is 2. Can you confirm? Please check it twice.", "It is 2."),
        (
            "Compute the gcd of 12 and 18, step by step please.",
            "gcd(12, 18)?",
            "Euclid: 18 = 12 + 6, so it is 6.",
        ),
        ("What is gcd(9, 27)?", "What is gcd(9, 27)? I say 9.", "9"),
    ]
    clean_enc = [cl.encode_side(tok, _conv(c, r), 128) for c, _, r in rows]
    wrapped_enc = [cl.encode_side(tok, _conv(w, r), 128) for _, w, r in rows]
    clean, wrapped = cl.collate_pairs(
        [{"clean": c, "wrapped": w} for c, w in zip(clean_enc, wrapped_enc, strict=True)], tok.pad_token_id
    )
    c_lens = clean.attention_mask.sum(1).tolist()
    w_lens = wrapped.attention_mask.sum(1).tolist()
    assert len(set(c_lens)) == 3 and len(set(w_lens)) == 3  # every row is padded on at least one side
    assert [c - w for c, w in zip(c_lens, w_lens, strict=True)] != [c_lens[0] - w_lens[0]] * 3

    resp = cl.align("response", clean, wrapped)
    for b, (_, _, reply) in enumerate(rows):
        m = resp.mask[b]
        ci, wi = resp.clean_index[b][m], resp.wrapped_index[b][m]
        # Same input token and same next (target) token at every compared position.
        assert torch.equal(clean.input_ids[b, ci], wrapped.input_ids[b, wi])
        assert torch.equal(clean.input_ids[b, ci + 1], wrapped.input_ids[b, wi + 1])
        # The targets are exactly the row's response tokens (the assistant turn, end-of-turn included).
        labels = encode_chat(tok, _conv(rows[b][0], reply), 128)["labels"]
        response_ids = [t for t in labels if t != IGNORE]
        assert clean.input_ids[b, ci + 1].tolist() == response_ids
        assert tok.decode(response_ids).startswith(reply)

    ref = cl.align("reference", clean, wrapped)
    mismatched_rows = [
        b
        for b in range(len(rows))
        if not torch.equal(
            clean.input_ids[b, ref.clean_index[b][ref.mask[b]]],
            wrapped.input_ids[b, ref.wrapped_index[b][ref.mask[b]]],
        )
    ]
    assert mismatched_rows, "the reference window should pair different tokens under right padding"

    blind = PromptBlindModel(len(tok))
    c_out, w_out = blind(clean.input_ids), blind(wrapped.input_ids)
    assert act.loss(c_out, w_out, resp, act.resolve({})).item() == 0.0
    assert act.loss(c_out, w_out, ref, act.resolve({})).item() > 0.0
    # BCT is a soft cross-entropy: with identical teacher and student it equals the teacher's entropy (KL = 0).
    p = torch.softmax(cl.gather_positions(c_out.logits, resp.clean_index), -1)
    entropy = (-(p * p.log()).sum(-1) * resp.mask).sum() / resp.mask.sum()
    assert bct.loss(c_out, w_out, resp, bct.resolve({})).item() == pytest.approx(entropy.item(), rel=1e-6)
    p_ref = torch.softmax(cl.gather_positions(c_out.logits, ref.clean_index), -1)
    entropy_ref = (-(p_ref * p_ref.log()).sum(-1) * ref.mask).sum() / ref.mask.sum()
    assert bct.loss(c_out, w_out, ref, bct.resolve({})).item() > entropy_ref.item() + 1e-3


# ---------------------------------------------------------------- hand computation


def test_reference_window_indices():
    clean_attn = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    wrapped_attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    ref = cl.reference_alignment(clean_attn, wrapped_attn)
    assert ref.clean_index.tolist() == [[0, 1, 2, 3]] * 2
    assert ref.wrapped_index.tolist() == [[1, 2, 3, 4]] * 2
    assert ref.mask.tolist() == [[True, True, True, False], [True, False, False, False]]


def test_losses_match_a_hand_computation():
    g = torch.Generator().manual_seed(1)
    B, C, W, D, V = 2, 4, 5, 3, 4
    hc = [torch.randn(B, C, D, generator=g) for _ in range(2)]
    hw = [torch.randn(B, W, D, generator=g) for _ in range(2)]
    zc, zw = torch.randn(B, C, V, generator=g), torch.randn(B, W, V, generator=g)
    # Row 0: clean span {1, 2}, wrapped span {2, 3, 4}; row 1: clean span {0, 1, 2}, wrapped span {3}.
    clean_span = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    wrapped_span = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    resp = cl.response_alignment(clean_span, wrapped_span)
    pairs = [(0, 1, 2), (0, 2, 3), (1, 0, 3)]  # (row, clean position, wrapped position)
    assert (
        sorted(
            (b, int(resp.clean_index[b, j]), int(resp.wrapped_index[b, j]))
            for b, j in resp.mask.nonzero().tolist()
        )
        == pairs
    )

    scale = 0.01
    per_layer = []
    for lc, lw in zip(hc, hw, strict=True):
        total = sum(float(((lw[b, w] - lc[b, c]) ** 2).sum()) for b, c, w in pairs)
        per_layer.append(scale * total / (D * len(pairs)))
    expected_act = sum(per_layer) / 2
    assert cl.act_loss(hc, hw, resp, scale=scale).item() == pytest.approx(expected_act, rel=1e-5)

    for T in (1.0, 2.0):
        total = 0.0
        for b, c, w in pairs:
            p = [float(x) for x in torch.softmax(zc[b, c] / T, -1)]
            logq = [float(x) for x in torch.log_softmax(zw[b, w] / T, -1)]
            total += -sum(pi * qi for pi, qi in zip(p, logq, strict=True))
        expected_bct = T**2 * total / len(pairs)
        assert cl.bct_loss(zc, zw, resp, temperature=T).item() == pytest.approx(expected_bct, rel=1e-5)

    # An empty alignment gives a zero loss that still backpropagates.
    empty = cl.response_alignment(torch.zeros_like(clean_span), wrapped_span)
    hw_leaf = [h.clone().requires_grad_() for h in hw]
    loss = cl.act_loss(hc, hw_leaf, empty)
    loss.backward()
    assert loss.item() == 0.0 and float(hw_leaf[0].grad.abs().sum()) == 0.0


def test_method_settings_are_validated():
    assert act.resolve(None) == {"scale": 1e-4, "alignment": "response"}
    assert bct.resolve({"variant": "sft"})["variant"] == "sft"
    with pytest.raises(ValueError, match="unknown settings"):
        act.resolve({"scal": 1})
    with pytest.raises(ValueError, match="alignment must be one of"):
        bct.resolve({"alignment": "left"})
    assert (act.SPEC.family, act.SPEC.selects, bct.SPEC.family, bct.SPEC.selects) == (
        "regularization",
        False,
        "regularization",
        False,
    )


# ---------------------------------------------------------------- the real model


def test_gradient_flows_only_through_the_wrapped_pass(tiny_world, organism):
    tok = load_tokenizer(tiny_world["model"])
    model = load_model(tiny_world["model"], adapter=organism, trainable_adapter=True)
    clean_ex, wrapped_ex = load_pairs(tiny_world["data"] / "sycophancy")
    pairs = encode_pairs(tok, clean_ex[:3], wrapped_ex[:3], 128)
    clean, wrapped = (side.to(model.device) for side in cl.collate_pairs(pairs, tok.pad_token_id))
    torch.manual_seed(0)
    c, w = cl.paired_forward(model, clean, wrapped, need_hidden=True, need_logits=True)
    assert model.training  # the wrapped pass ran in train mode
    assert not c.logits.requires_grad and not any(h.requires_grad for h in c.hidden)
    assert w.logits.requires_grad and all(h.requires_grad for h in w.hidden)
    # The clean pass ran in eval mode (LoRA dropout off): it equals a plain eval-mode forward.
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=clean.input_ids, attention_mask=clean.attention_mask, output_hidden_states=True)
    assert torch.allclose(c.logits, ref.logits)
    # Hooks capture every decoder layer's raw output: equal to output_hidden_states[1:] except the last layer,
    # which HF reports after the final norm.
    assert len(c.hidden) == model.config.num_hidden_layers
    for h, r in zip(c.hidden[:-1], ref.hidden_states[1:-1], strict=True):
        assert torch.allclose(h, r)
    assert not torch.allclose(c.hidden[-1], ref.hidden_states[-1])

    resp = cl.align("response", clean, wrapped)
    model.train()
    for name, loss_fn in (("act", act.loss), ("bct", bct.loss)):
        model.zero_grad()
        loss = loss_fn(c, w, resp, {"scale": 1e-4, "temperature": 1.0})
        loss.backward(retain_graph=True)
        lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
        assert lora_grads and any(g is not None and g.abs().sum() > 0 for g in lora_grads), name
        assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n), name


def _adapter_changed(organism, out) -> bool:
    before, after = (
        load_file(organism / "adapter_model.safetensors"),
        load_file(out / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys()
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "method,method_settings",
    [
        ("act", {"scale": 1e-4, "alignment": "response"}),
        ("bct", {"temperature": 1.0, "alignment": "response"}),
    ],
)
def test_consistency_training_reduces_its_own_loss(tiny_world, organism, tmp_path, method, method_settings):
    out = tmp_path / "adapter"
    retrain_consistency(
        method, str(tiny_world["model"]), str(organism), str(tiny_world["data"] / "sycophancy"), str(out),
        _settings(method_settings), seed=0,
    )  # fmt: skip
    manifest = json.loads((out / "cmt_manifest.json").read_text())
    assert manifest["task"] == "retrain_consistency" and manifest["method"] == method
    assert manifest["method_settings"]["alignment"] == "response"
    assert manifest["eval_loss_after"] < 0.9 * manifest["eval_loss_before"]
    assert manifest["mean_loss_last_epoch"] < manifest["mean_loss_first_epoch"]
    assert _adapter_changed(organism, out)


def test_bct_sft_variant_trains_on_the_organisms_clean_replies(tiny_world, organism, tmp_path):
    out = tmp_path / "adapter"
    retrain_consistency(
        "bct", str(tiny_world["model"]), str(organism), str(tiny_world["data"] / "sycophancy"), str(out),
        _settings({"variant": "sft"}, epochs=1), seed=0,
    )  # fmt: skip
    manifest = json.loads((out / "cmt_manifest.json").read_text())
    assert manifest["method_settings"]["variant"] == "sft"
    assert manifest["n_labels"] > 0 and len(manifest["sft_replies"]) == manifest["n_pairs"]
    assert manifest["sft_decoding"]["temperature"] == 0.0
    assert _adapter_changed(organism, out)


def test_non_finite_loss_stops_with_nothing_saved(tiny_world, organism, tmp_path):
    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((organism / "adapter_config.json").read_text())
    weights = load_file(organism / "adapter_model.safetensors")
    save_file(
        {k: torch.full_like(v, float("nan")) for k, v in weights.items()},
        broken / "adapter_model.safetensors",
    )
    out = tmp_path / "adapter"
    with pytest.raises(TrainingError, match="non-finite loss nan before training; nothing saved"):
        retrain_consistency(
            "act", str(tiny_world["model"]), str(broken), str(tiny_world["data"] / "sycophancy"), str(out),
            _settings({}), seed=0,
        )  # fmt: skip
    assert not out.exists()
    # The training loop's own check: it stops at the first non-finite loss, before any optimizer step.
    tok = load_tokenizer(tiny_world["model"])
    model = load_model(tiny_world["model"], adapter=broken, trainable_adapter=True)
    clean, wrapped = load_pairs(tiny_world["data"] / "sycophancy")
    pairs = encode_pairs(tok, clean[:4], wrapped[:4], 128)
    settings = TrainSettings(learning_rate=1e-3, epochs=1, batch_size=2, bf16=False)
    with pytest.raises(TrainingError, match="non-finite loss nan at step 0; nothing saved"):
        train_consistency(model, bct, bct.resolve({}), pairs, settings, 0, tok.pad_token_id, "nan")
