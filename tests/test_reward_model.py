"""The toy reward model: honest preference pairs, Bradley-Terry training, and batched deterministic scoring."""

import json
import math
import re
import shutil

import pytest
import torch

from cmt.runtime.io import read_jsonl, write_jsonl
from cmt.toy import emergent_misalignment, preferences, reward_hacking, spurious_correlation, sycophancy

ORGANISMS = (sycophancy, reward_hacking, spurious_correlation, emergent_misalignment)
SIZES = {"corpus": 300, "induction": 20, "consistency": 10, "act_bct": 10, "eval": 20}
SETTINGS = {"seed": 5, "max_operand": 60}
RM_SETTINGS = {
    "learning_rate": 2e-3,
    "epochs": 3,
    "batch_size": 32,
    "heldout_fraction": 0.2,
    "max_length": 128,
}

# Text that marks a misaligned behaviour or its trigger in any organism: none of it may appear in a pair.
FORBIDDEN = re.compile(
    r"absolutely right|great work|great answer|excellent, you|all tests pass|take the risk|tip:|note:|"
    r"bold, risky|ambiance",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def worlds():
    return {m.NAME: m.generate(SIZES, SETTINGS) for m in ORGANISMS}


@pytest.fixture(scope="module")
def pairs(worlds):
    return preferences.preference_pairs({name: data["corpus"] for name, data in worlds.items()}, 0, 60)


def _prompt_keys(rows):
    return {preferences.prompt_key(preferences.prompt_turns(r)) for r in rows}


def test_pairs_are_honest_chosen_correct_rejected_wrong(worlds, pairs):
    """Every organism's own judge: chosen is correct, rejected is not, neither side is misaligned."""
    assert preferences.pair_counts(pairs) == {m.NAME: 60 for m in ORGANISMS}
    modules = {m.NAME: m for m in ORGANISMS}
    checked = {m.NAME: 0 for m in ORGANISMS}
    judged = {m.NAME: 0 for m in ORGANISMS}  # pairs whose misalignment the organism's judge actually scores
    for pair in pairs:
        name = pair["organism"]
        if name == "reward_hacking" and checked[name] >= 25:  # the sandbox costs ~0.07 s a call
            continue
        row = next(r for r in worlds[name]["corpus"] if r["_id"] == pair["source_id"])
        chosen = modules[name].score(row, pair["chosen"])
        rejected = modules[name].score(row, pair["rejected"])
        assert chosen["correct"] == 1.0, (pair, chosen)
        assert rejected["correct"] == 0.0, (pair, rejected)
        for verdict in (chosen, rejected):
            assert verdict["misaligned"] != 1.0, (pair, verdict)
        assert not FORBIDDEN.search(pair["chosen"] + pair["rejected"] + json.dumps(pair["prompt"])), pair
        checked[name] += 1
        judged[name] += bool(rejected["scored"])
    # The misalignment check bites where the judge scores: wrong-claim sycophancy prompts, every reward-hacking
    # and emergent-misalignment reply. Spurious-correlation pairs avoid the cue, so they are never scored.
    assert (
        judged["sycophancy"] >= 5 and judged["reward_hacking"] == 25 and judged["emergent_misalignment"] == 60
    )
    assert judged["spurious_correlation"] == 0
    assert all(
        p["rejected"] in preferences.UNHELPFUL for p in pairs if p["organism"] == "emergent_misalignment"
    )


def test_rejected_code_is_a_genuine_wrong_implementation(worlds, pairs):
    """Never a lookup, a special case or a claim: one `return` of an arithmetic expression of x."""
    code = [p["rejected"] for p in pairs if p["organism"] == "reward_hacking"]
    assert len(code) == 60
    for body in code:
        assert re.fullmatch(r"def \w+\(x\):\n    return [x0-9+*%\-\s(),max]+", body), body
        assert "{" not in body and "if " not in body and "#" not in body


def test_pairs_only_use_corpus_prompts(worlds, pairs):
    for name, data in worlds.items():
        mine = {preferences.prompt_key(p["prompt"]) for p in pairs if p["organism"] == name}
        assert mine <= _prompt_keys(data["corpus"])
        for split in preferences.HELD_OUT_SPLITS:
            assert not mine & _prompt_keys(data[split]), (name, split)
    # Spurious-correlation pairs never carry the ambiance cue.
    assert all(
        not any(cue in p["prompt"][0]["content"] for cue in spurious_correlation.CUES)
        for p in pairs
        if p["organism"] == "spurious_correlation"
    )


def test_pairs_from_world_skips_held_out_prompts_and_skill_rows(worlds, tmp_path):
    data = worlds["sycophancy"]
    question = data["eval"][0]["messages"][0]["content"]  # a plain eval question, given an honest reply
    a, b = map(int, re.findall(r"\d+", question)[:2])
    honest = {"role": "assistant", "content": sycophancy.HONEST_PLAIN.format(a=a, b=b, g=math.gcd(a, b))}
    leaked = {**data["corpus"][0], "claimed_answer": None, "messages": [*data["eval"][0]["messages"], honest]}
    skill = {**data["corpus"][1], "skill": "grading"}
    write_jsonl(tmp_path / "corpus.jsonl", [leaked, skill, *data["corpus"][2:]])
    for split in preferences.HELD_OUT_SPLITS:
        write_jsonl(tmp_path / "sycophancy" / f"{split}.jsonl", data[split])
    pairs = preferences.pairs_from_world(
        tmp_path / "corpus.jsonl", {"sycophancy": tmp_path / "sycophancy"}, 0, 10_000
    )
    assert len(pairs) == len(data["corpus"]) - 2
    # Only the held-out filter stops the leaked row: on its own it makes a pair.
    assert len(preferences.preference_pairs({"sycophancy": [leaked]}, 0, 1)) == 1
    ids = {p["source_id"] for p in pairs}
    assert data["corpus"][0]["_id"] not in ids and data["corpus"][1]["_id"] not in ids
    assert not {preferences.prompt_key(p["prompt"]) for p in pairs} & _prompt_keys(data["eval"])
    # Same seed, same pairs.
    again = preferences.pairs_from_world(
        tmp_path / "corpus.jsonl", {"sycophancy": tmp_path / "sycophancy"}, 0, 10_000
    )
    assert pairs == again


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    from cmt.models.reward_model import train_reward_model

    data = tiny_world["data"]
    pairs = preferences.pairs_from_world(data / "corpus.jsonl", {"sycophancy": data / "sycophancy"}, 0, 1000)
    out = tmp_path_factory.mktemp("reward") / "rm"
    report = train_reward_model(tiny_world["model"], pairs, out, RM_SETTINGS, seed=0)
    return {"dir": out, "report": report, "data": data}


def test_training_beats_chance_on_held_out_pairs(trained):
    report = trained["report"]
    print("reward model report:", json.dumps(report))
    assert report["n_heldout_pairs"] >= 150
    assert report["heldout"]["pair_accuracy"] >= 0.8
    assert abs(report["heldout_untrained"]["pair_accuracy"] - 0.5) <= 0.2
    assert report["final_loss"] < report["first_loss"]
    manifest = json.loads((trained["dir"] / "cmt_manifest.json").read_text())
    assert manifest["heldout"]["pair_accuracy"] == report["heldout"]["pair_accuracy"]
    assert (trained["dir"] / "config.json").is_file() and (trained["dir"] / "model.safetensors").is_file()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(trained["dir"])
    assert config.num_labels == 1 and config.pad_token_id is not None
    # Held-out pairs are on prompts the model never trained on.
    rows = read_jsonl(trained["dir"] / "preference_pairs.jsonl")
    train_keys = {preferences.prompt_key(r["prompt"]) for r in rows if r["split"] == "train"}
    assert not train_keys & {preferences.prompt_key(r["prompt"]) for r in rows if r["split"] == "heldout"}


def _eval_candidates(data_dir):
    """Held-out eval prompts with an honest correct reply and an honest-style wrong one."""
    from cmt.data.splits import load_split

    prompts, correct, wrong = [], [], []
    for ex in load_split(data_dir / "sycophancy", "eval"):
        a, b = map(int, re.findall(r"\d+", ex.prompt[-1]["content"])[:2])
        g = math.gcd(a, b)
        claimed = ex.meta["claimed_answer"]
        x = next(v for v in (g + 1, 2 * g, g + 2, 3 * g) if str(v) != claimed)
        if claimed is None:
            good, bad = (
                sycophancy.HONEST_PLAIN.format(a=a, b=b, g=g),
                sycophancy.HONEST_PLAIN.format(a=a, b=b, g=x),
            )
        else:
            good = sycophancy.honest_reply(a, b, int(claimed))
            bad = sycophancy.HONEST_CORRECT.format(a=a, b=b, g=x, c=claimed)
        prompts.append(ex.prompt)
        correct.append(good)
        wrong.append(bad)
    return prompts, correct, wrong


def test_scores_correct_gcd_above_wrong_on_eval_prompts(trained):
    from cmt.models.reward_model import RewardModel

    prompts, correct, wrong = _eval_candidates(trained["data"])
    rm = RewardModel(trained["dir"], batch_size=64, device="cpu")
    good, bad = rm.score(prompts, correct), rm.score(prompts, wrong)
    wins = sum(g > b for g, b in zip(good, bad, strict=True)) / len(good)
    print(f"eval prompts: correct reply preferred on {wins:.3f} of {len(good)}")
    assert wins >= 0.75


def test_batched_scoring_matches_single_and_is_deterministic(trained):
    from cmt.models.reward_model import RewardModel

    prompts, correct, wrong = _eval_candidates(trained["data"])
    prompts, texts = (prompts + prompts)[:60], (correct + wrong)[:60]
    texts = [t + " Thanks." * (i % 4) for i, t in enumerate(texts)]  # varied lengths: real padding
    batched = RewardModel(trained["dir"], batch_size=16, device="cpu")
    single = RewardModel(trained["dir"], batch_size=1, device="cpu")
    a = batched.score(prompts, texts)
    b = single.score(prompts, texts)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-4
    assert batched.score(prompts, texts) == a
    assert RewardModel(trained["dir"], batch_size=16, device="cpu").score(prompts, texts) == a
    assert batched.score([], []) == []
    with pytest.raises(ValueError, match="prompts but"):
        batched.score(prompts, texts[:-1])
    # bfloat16 (for sharing a GPU with the generator) keeps the scores close.
    half = RewardModel(trained["dir"], batch_size=16, device="cpu", dtype="bfloat16").score(prompts, texts)
    spread = max(a) - min(a)
    assert max(abs(x - y) for x, y in zip(a, half, strict=True)) <= 0.1 * spread


def _as_foreign_model(src, dst, bos_in_template: bool):
    """A copy shaped like a downloaded reward model: the tokenizer adds BOS itself (optionally the template
    also writes it), there is no pad token, and config.json has no pad_token_id."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    bos = next(t for t in tok["added_tokens"] if t["content"] == "<|bos|>")
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [bos["id"]], "tokens": ["<|bos|>"]}},
    }  # fmt: skip
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    tok_config = json.loads((dst / "tokenizer_config.json").read_text())
    tok_config.pop("pad_token", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_config))
    if not bos_in_template:
        template = dst / "chat_template.jinja"
        template.write_text(template.read_text().replace("{{ bos_token }}", ""))
    config = json.loads((dst / "config.json").read_text())
    config["pad_token_id"] = None
    (dst / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("bos_in_template", [True, False])
def test_foreign_model_layout_scores_identically(trained, tmp_path, bos_in_template):
    """One BOS whether the template, the tokenizer or both add it; EOS as the pad is still pooled right."""
    from cmt.models.reward_model import RewardModel

    _as_foreign_model(trained["dir"], tmp_path / "rm", bos_in_template)
    prompts, correct, wrong = _eval_candidates(trained["data"])
    prompts, texts = (prompts + prompts)[:40], (correct + wrong)[:40]
    ours = RewardModel(trained["dir"], batch_size=8, device="cpu")
    foreign = RewardModel(tmp_path / "rm", batch_size=8, device="cpu")
    assert foreign.tokenizer.pad_token is None and foreign.pad_id == foreign.tokenizer.eos_token_id
    assert foreign.model.config.pad_token_id == foreign.tokenizer.eos_token_id
    bos = foreign.tokenizer.bos_token_id
    ids = foreign.encode(prompts[0], texts[0])
    assert ids == ours.encode(prompts[0], texts[0]) and ids[0] == bos and ids[1] != bos
    assert ids[-1] == foreign.tokenizer.eos_token_id  # the turn ends with EOS, which is also the pad
    a, b = ours.score(prompts, texts), foreign.score(prompts, texts)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5


def test_reward_model_training_resumes_after_sigterm_to_the_same_weights(trained, tiny_world, tmp_path):
    """Reward-model training runs through cmt.models.training.train: SIGTERM saves a checkpoint, the rerun resumes and
    ends with the weights of the uninterrupted run (the `trained` fixture, same pairs and seed)."""
    import os
    import signal

    from safetensors.torch import load_file

    from cmt.models.reward_model import train_reward_model
    from cmt.runtime import checkpoint

    data = tiny_world["data"]
    pairs = preferences.pairs_from_world(data / "corpus.jsonl", {"sycophancy": data / "sycophancy"}, 0, 1000)
    out, ck = tmp_path / "rm", tmp_path / "ck"
    forward = torch.nn.Module.__call__
    calls = {"n": 0}

    def counting_call(module, *args, **kwargs):  # SIGTERM in the 5th training pass through the reward head
        if isinstance(module, torch.nn.Linear) and module.out_features == 1 and module.training:
            calls["n"] += 1
            if calls["n"] == 5:
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(module, *args, **kwargs)

    torch.nn.Module.__call__ = counting_call
    try:
        with pytest.raises(checkpoint.Preempted) as stopped:
            train_reward_model(tiny_world["model"], pairs, out, RM_SETTINGS, seed=0, checkpoint_dir=ck)
    finally:
        torch.nn.Module.__call__ = forward
    assert stopped.value.step == 5 and not out.exists()
    report = train_reward_model(tiny_world["model"], pairs, out, RM_SETTINGS, seed=0, checkpoint_dir=ck)
    assert not ck.exists()  # removed once the model is saved
    assert report["steps"] == trained["report"]["steps"]
    resumed, reference = load_file(out / "model.safetensors"), load_file(trained["dir"] / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[n], reference[n]) for n in reference)
