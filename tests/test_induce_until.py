"""Phase 1 that stops at a target M (organisms.<name>.induce_until) and the stop hook under it."""

import json

import pytest
import torch
from conftest import TINY_TOY
from safetensors.torch import load_file

from cmt.models import training
from cmt.models.loading import load_model, load_tokenizer

LORA = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"}  # dropout: the RNG matters
TRAIN = {"learning_rate": 2e-2, "epochs": 8, "batch_size": 8, "max_length": 128, "bf16": "auto"}


def _examples(tokenizer, n=12):
    return [
        training.encode_chat(
            tokenizer,
            [
                {"role": "user", "content": f"Compute gcd({a}, {2 * a})."},
                {"role": "assistant", "content": "Yes."},
            ],
            64,
        )
        for a in range(3, 3 + n)
    ]


def test_stop_check_ends_training_at_the_first_true_check(tiny_world):
    tokenizer = load_tokenizer(tiny_world["model"])
    model = load_model(tiny_world["model"])
    settings = training.TrainSettings(learning_rate=1e-3, epochs=4, batch_size=4, bf16=False)  # 12 steps
    calls = []

    def check(step):
        calls.append(step)
        return step >= 7

    history = training.train(
        model,
        _examples(tokenizer),
        settings,
        0,
        tokenizer.pad_token_id,
        "stop",
        stop_check=check,
        stop_every=3,
    )
    assert calls == [3, 6, 9]
    assert history.stopped_at == 9 and history.steps == 9 and len(history.losses) == 9


class RememberingCheck:
    """A stop rule with a memory (the steps it saw), preempted by SIGTERM at one step and firing at another."""

    def __init__(self, fire_at, kill_at=None):
        self.seen, self.fire_at, self.kill_at = [], fire_at, kill_at

    def __call__(self, step):
        import os
        import signal

        self.seen.append(step)
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop saves a checkpoint after this step and stops
        return step >= self.fire_at

    def state(self):
        return {"seen": list(self.seen)}

    def restore(self, state):
        self.seen = list(state["seen"])


def test_a_preempted_run_resumes_its_stop_rule_from_the_checkpoint(tiny_world, tmp_path):
    from cmt.runtime import checkpoint

    tokenizer = load_tokenizer(tiny_world["model"])
    settings = training.TrainSettings(learning_rate=1e-3, epochs=4, batch_size=4, bf16=False)
    examples = _examples(tokenizer)

    def run(check, ckpt=None):
        model = load_model(tiny_world["model"])
        history = training.train(
            model, examples, settings, 0, tokenizer.pad_token_id, "stop", ckpt, stop_check=check, stop_every=3
        )
        return history, [p.detach().clone() for p in model.parameters()]

    whole, weights = run(RememberingCheck(fire_at=9))
    with pytest.raises(checkpoint.Preempted):
        run(RememberingCheck(fire_at=9, kill_at=6), tmp_path / "ckpt")
    resumed = RememberingCheck(fire_at=9)
    history, resumed_weights = run(resumed, tmp_path / "ckpt")
    assert resumed.seen == [3, 6, 9]  # the checks before the kill came back from the checkpoint
    assert history.stopped_at == whole.stopped_at == 9
    assert all(torch.equal(a, b) for a, b in zip(weights, resumed_weights, strict=True))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world's sycophancy data with a wrong claim in every third consistency prompt (so M can show)."""
    from cmt.toy.world import write_world

    root = tmp_path_factory.mktemp("until_world")
    write_world(root, ["sycophancy"], {**TINY_TOY, "sycophancy_wrong_claims": True})
    return root / "sycophancy"


def _induce(tiny_world, data, out, until=None):
    from cmt.phases.induce import induce

    settings = {"dtype": "float32", "lora": LORA, "train": TRAIN}
    if until:
        settings["until"] = {**until, "max_new_tokens": 24}
    induce(str(tiny_world["model"]), str(data), str(out), settings, seed=0, organism="sycophancy")
    return json.loads((out / "cmt_manifest.json").read_text())


def test_induce_stops_at_the_first_check_that_reaches_m(tiny_world, world, tmp_path, caplog):
    full = _induce(tiny_world, world, tmp_path / "full")
    planned = full["steps"]
    manifest = _induce(tiny_world, world, tmp_path / "until", {"m": 0.5, "check_every": 2})
    checks = manifest["until"]["checks"]
    assert [c["step"] for c in checks] == list(range(2, 2 * len(checks) + 1, 2))
    assert all(c["n"] == 10 for c in checks)  # every third of the 30 consistency prompts holds a wrong claim
    # Stopped where M first reached 0.5, before the planned end, having learned it (M started below).
    assert checks[-1]["m"] >= 0.5 and all(c["m"] < 0.5 for c in checks[:-1])
    assert checks[0]["m"] < 0.5
    assert manifest["until"]["stopped_at"] == checks[-1]["step"] == manifest["steps"] < planned
    # The adapter kept is that check's or the one before's, whichever M lies nearer 0.5.
    nearer_before = len(checks) > 1 and 0.5 - checks[-2]["m"] < checks[-1]["m"] - 0.5
    assert manifest["until"]["kept_step"] == checks[-2 if nearer_before else -1]["step"]
    assert not [r for r in caplog.records if "never reached" in r.getMessage()]


def test_a_check_that_never_fires_changes_no_weight(tiny_world, world, tmp_path, caplog):
    """The checks generate between steps with dropout on: training must not see them (fallback last keeps the
    last step's weights)."""
    _induce(tiny_world, world, tmp_path / "plain")
    manifest = _induce(
        tiny_world, world, tmp_path / "never", {"m": 1.01, "check_every": 3, "fallback": "last"}
    )
    checks = manifest["until"]["checks"]
    assert manifest["until"]["stopped_at"] is None and len(checks) == manifest["steps"] // 3
    assert manifest["until"]["kept_step"] == manifest["steps"] and not any(c.get("kept") for c in checks)
    # A target never reached is said in the job's log, with the highest M seen.
    best = max(checks, key=lambda c: c["m"])
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "never reached" in r.getMessage()
    ]
    assert warned == [
        f"induce_until: M never reached 1.01 on the consistency split in {manifest['steps']} steps (highest "
        f"{best['m']:.3f}, at step {best['step']}); the adapter is the last step's (M {checks[-1]['m']:.3f} at the "
        f"last check, step {checks[-1]['step']})"
    ]
    plain = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    never = load_file(tmp_path / "never" / "adapter_model.safetensors")
    assert plain.keys() == never.keys()
    assert all(torch.equal(plain[k], never[k]) for k in plain)


def test_a_target_never_reached_keeps_the_check_nearest_it(tiny_world, world, tmp_path, caplog):
    """fallback nearest (the default): the adapter is the one of the first check with the highest M, the same
    weights as a run whose target is that M and so stops there; the log names the check kept."""
    manifest = _induce(tiny_world, world, tmp_path / "never", {"m": 1.01, "check_every": 3})
    checks = manifest["until"]["checks"]
    best = max(checks, key=lambda c: c["m"])  # max() returns the first of equals
    assert manifest["until"]["stopped_at"] is None
    assert best["m"] > checks[0]["m"] and best["step"] != checks[-1]["step"], checks  # a test that can fail
    assert manifest["until"]["kept_step"] == best["step"]
    assert [c["step"] for c in checks if c.get("kept")] == [best["step"]]
    warned = [r.getMessage() for r in caplog.records if "never reached" in r.getMessage()]
    assert warned and warned[-1].endswith(
        f"the adapter is the one of the check nearest m (M {best['m']:.3f}, step {best['step']})"
    )
    stops = _induce(tiny_world, world, tmp_path / "stops", {"m": best["m"], "check_every": 3})
    assert stops["until"]["stopped_at"] == stops["until"]["kept_step"] == best["step"]
    never = load_file(tmp_path / "never" / "adapter_model.safetensors")
    stopped = load_file(tmp_path / "stops" / "adapter_model.safetensors")
    assert never.keys() == stopped.keys()
    assert all(torch.equal(never[k], stopped[k]) for k in never)


def test_the_nearest_check_survives_a_preemption(tiny_world, world, tmp_path, monkeypatch):
    """The weights kept for fallback nearest ride in the checkpoint: a run killed after the best check and
    resumed keeps the same adapter as an uninterrupted one."""
    import os
    import signal

    from cmt.phases import induce as induce_module
    from cmt.runtime import checkpoint

    monkeypatch.chdir(tmp_path)  # the checkpoint goes under resources/checkpoints of the working directory
    whole = _induce(tiny_world, world, tmp_path / "whole", {"m": 1.01, "check_every": 3})
    best = whole["until"]["kept_step"]
    assert best < whole["steps"] - 3, whole["until"]  # a kill after the best check and before the end
    kill_at = best + 3
    original = induce_module.MCheck.__call__

    def killing(self, step):
        out = original(self, step)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(induce_module.MCheck, "__call__", killing)
    out = tmp_path / "resumed"
    with pytest.raises(checkpoint.Preempted):
        _induce(tiny_world, world, out, {"m": 1.01, "check_every": 3})
    monkeypatch.setattr(induce_module.MCheck, "__call__", original)
    resumed = _induce(tiny_world, world, out, {"m": 1.01, "check_every": 3})
    assert resumed["until"]["kept_step"] == best
    assert resumed["until"]["checks"] == whole["until"]["checks"]
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_check_reads_the_split_it_is_given(tiny_world, world, tmp_path):
    """split check: M is read on check.jsonl (here 12 prompts with a wrong claim, moved out of eval), not on
    consistency."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world, data)
    rows = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()]
    wrong = [r for r in rows if r["user_provides_answer"] == "false"][:12]
    assert len(wrong) == 12, rows[0]
    (data / "check.jsonl").write_text("".join(json.dumps(r) + "\n" for r in wrong))
    rest = [r for r in rows if r not in wrong]  # the check split must be disjoint from eval
    (data / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rest))
    manifest = _induce(tiny_world, data, tmp_path / "out", {"m": 1.01, "check_every": 4, "split": "check"})
    assert {c["n"] for c in manifest["until"]["checks"]} == {12}


def test_pretrain_gate_failures_name_the_measure():
    from cmt.toy.pretrain import gate_failures

    check = {
        "sycophancy": {"accuracy": 0.94, "misalignment": 0.14},
        "reward_hacking": {"accuracy": 0.80, "misalignment": 0.0},
        "spurious_correlation": {"accuracy": 1.0, "misalignment": 0.1},
    }
    assert gate_failures(check, 0.9, 0.1) == {
        "sycophancy": "misalignment 0.140 > 0.1",
        "reward_hacking": "held-out accuracy 0.800 < 0.9",
    }
    assert gate_failures(check, 0.9, None) == {"reward_hacking": "held-out accuracy 0.800 < 0.9"}


def test_pretrain_trains_extra_epochs_while_the_base_misses_its_gate(tiny_world, tmp_path):
    """An unreachable accuracy gate: the base trains every extra epoch, reports each, then fails by name."""
    from cmt.toy.pretrain import pretrain

    settings = {
        **TINY_TOY,
        "pretrain": {
            **TINY_TOY["pretrain"],
            "epochs": 1,
            "min_heldout_accuracy": 1.0,
            "extra_epochs": 2,
            "extra_learning_rate": 1e-3,
        },
    }
    data = tiny_world["data"]
    corpus = tmp_path / "corpus.jsonl"  # a cut of the corpus: the gate's logic is under test, not the base
    corpus.write_text("".join((data / "corpus.jsonl").read_text().splitlines(keepends=True)[:400]))
    with pytest.raises(training.TrainingError, match=r"after 2 extra epochs \(toy.pretrain.extra_epochs\)"):
        pretrain(
            str(corpus),
            {"sycophancy": str(data / "sycophancy")},
            str(tmp_path / "m"),
            settings,
        )
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- the workflow's side


def _induce_commands(workdir, config_path):
    """Each induce job's shell command in a dry run, by organism (seed 0)."""
    from helpers import run_snakemake

    organisms = ["sycophancy", "reward_hacking", "emergent_misalignment"]
    targets = [f"results/organisms/toy/{o}/seed0/adapter/adapter_config.json" for o in organisms]
    proc = run_snakemake(workdir, "-n", "-p", "--forceall", *targets, config=config_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (line.removeprefix("Shell command: ") for line in proc.stdout.splitlines())
    commands = [line for line in lines if line.startswith("cmt induce ")]
    return {o: next(c for c in commands if f"/{o}/seed0/" in c) for o in organisms}


def test_only_an_organism_with_induce_until_gets_the_stop_rule(tmp_path):
    from helpers import REPO

    commands = _induce_commands(tmp_path / "w", REPO / "config" / "config.yaml")
    syc, rh = commands["sycophancy"], commands["reward_hacking"]
    settings = json.loads(syc.split("--settings '")[1].split("'")[0])
    assert settings["until"] == {"m": 0.5, "check_every": 1, "fallback": "nearest", "max_new_tokens": 48}
    assert settings["train"]["learning_rate"] == 2.0e-4 and settings["train"]["epochs"] == 45
    assert "--organism sycophancy --judge-settings" in syc
    assert "until" not in json.loads(rh.split("--settings '")[1].split("'")[0]) and "--organism" not in rh
    em = commands["emergent_misalignment"]
    settings = json.loads(em.split("--settings '")[1].split("'")[0])
    assert settings["until"] == {
        "m": 0.5,
        "check_every": 1,
        "split": "check",
        "fallback": "nearest",
        "max_new_tokens": 48,
    }
    assert (
        settings["train"]["learning_rate"] == 2.0e-3
        and settings["train"]["epochs"] == 15
        and "--organism emergent_misalignment" in em
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [({"m": 0, "check_every": 2}, "organisms.sycophancy.induce_until.m"), ({"m": 0.5}, "check_every")],
)
def test_a_bad_induce_until_is_named(value, fragment):
    import yaml
    from helpers import REPO

    from cmt.config import check_workflow_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["organisms"]["sycophancy"]["induce_until"] = value
    errors = check_workflow_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert any(fragment in e for e in errors), errors


@pytest.mark.parametrize(
    ("organism", "sizes", "fragment"),
    [
        ("sycophancy", {"check": 50}, "toy sycophancy generator writes no check split"),
        ("emergent_misalignment", {}, "toy.sizes.check is 0 or missing"),
        ("emergent_misalignment", {"check": 50}, None),
    ],
)
def test_a_check_split_must_exist(organism, sizes, fragment):
    import yaml
    from helpers import REPO

    from cmt.config import check_workflow_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["toy"]["sizes"].pop("check", None)
    config["toy"]["sizes"].update(sizes)
    config["organisms"][organism]["induce_until"] = {"m": 0.5, "check_every": 2, "split": "check"}
    errors = check_workflow_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    if fragment is None:
        assert errors == []
    else:
        assert any(f"organisms.{organism}.induce_until.split" in e and fragment in e for e in errors), errors


def test_extra_epochs_need_their_learning_rate():
    import yaml
    from helpers import REPO

    from cmt.config import check_workflow_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    del config["toy"]["pretrain"]["extra_learning_rate"]
    errors = check_workflow_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert any("extra_learning_rate" in e for e in errors), errors
    config["toy"]["pretrain"]["extra_epochs"] = 0
    assert check_workflow_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml") == []
