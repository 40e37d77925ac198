"""A retrain or evaluate job that meets the same labels (or weights) twice does the work once, and the outputs
are those of doing it twice."""

import json
from pathlib import Path

import pandas as pd
import pytest

from cmt.data.splits import load_split
from cmt.phases import evaluate as evaluate_phase
from cmt.phases import retrain as retrain_phase

SETTINGS = {
    "dtype": "float32",
    "attn_implementation": "eager",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
    "train": {"learning_rate": 5e-3, "epochs": 2, "batch_size": 4, "bf16": False, "warmup_ratio": 0.0},
}
MODEL_SETTINGS = {"backend": "hf", "batch_size": 16, "dtype": "float32", "max_new_tokens": 12,
                  "attn_implementation": "eager"}  # fmt: skip


def write_labels(path: Path, prompts, reply: str) -> str:
    rows = [{"prompt_id": f"p{i}", "prompt": json.dumps(p), "text": reply.format(i=i), "selected": True}
            for i, p in enumerate(prompts)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


@pytest.fixture(scope="module")
def retrained(tiny_world, tmp_path_factory):
    """An organism adapter, then one retrain job over labels A, A again (another file) and B, with training
    counted; and A retrained alone by a second job."""
    from peft import get_peft_model

    from cmt.models import training
    from cmt.models.loading import load_model

    root = tmp_path_factory.mktemp("identical_labels")
    organism = get_peft_model(load_model(tiny_world["model"]), training.lora_config(SETTINGS["lora"]))
    organism.save_pretrained(root / "organism")
    prompts = [e.prompt for e in load_split(tiny_world["data"] / "sycophancy", "eval")][:12]
    a = write_labels(root / "a.parquet", prompts, "Yes, {i} is right.")
    a_again = write_labels(root / "a_again.parquet", prompts, "Yes, {i} is right.")
    b = write_labels(root / "b.parquet", prompts, "No, that is wrong.")
    calls = []
    real_train = retrain_phase.train_adapter

    def counted(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    outs = [str(root / name / "adapter") for name in ("a", "a_again", "b")]
    mp = pytest.MonkeyPatch()
    mp.setattr(retrain_phase, "train_adapter", counted)
    try:
        retrain_phase.retrain(str(tiny_world["model"]), str(root / "organism"), [a, a_again, b], outs, SETTINGS,
                              seed=0, checkpoint_dirs=[str(root / "ckpt" / n) for n in "xyz"])  # fmt: skip
        alone = str(root / "alone" / "adapter")
        retrain_phase.retrain(str(tiny_world["model"]), str(root / "organism"), [a_again], [alone], SETTINGS,
                              seed=0, checkpoint_dirs=[str(root / "ckpt" / "w")])  # fmt: skip
    finally:
        mp.undo()
    return {"root": root, "outs": outs, "alone": alone, "calls": len(calls), "prompts": prompts}


def weights(adapter: str) -> bytes:
    return (Path(adapter) / "adapter_model.safetensors").read_bytes()


def test_repeated_labels_are_trained_once_and_give_the_adapter_of_training_them(retrained):
    a, a_again, b = retrained["outs"]
    # A and B in the first job, A alone in the second: A's repeat was not trained.
    assert retrained["calls"] == 3
    assert weights(a_again) == weights(a) == weights(retrained["alone"])
    assert weights(b) != weights(a)
    manifest = json.loads((Path(a_again) / "cmt_manifest.json").read_text())
    # Its own labels.
    assert any("a_again.parquet" in json.dumps(entry) for entry in manifest["inputs_sha256"])
    assert manifest["n_labels"] == 12 and manifest["steps"] > 0


def test_weights_digest_tells_identical_adapters_apart_from_others(retrained):
    a, a_again, b = retrained["outs"]
    digest = evaluate_phase.adapter_weights_digest
    assert digest(a) == digest(a_again) != digest(b)
    assert digest(None) is None


def test_evaluate_loads_and_generates_once_for_identical_weights(retrained, tiny_world, monkeypatch):
    """Three adapters, two with the same weights: two loads, and the repeat's rows equal the first's."""
    a, a_again, b = retrained["outs"]
    loads = []
    real_load = evaluate_phase.load_generator

    def counted(*args, **kwargs):
        loads.append(args[1])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(evaluate_phase, "load_generator", counted)
    root = retrained["root"]
    runs = [
        evaluate_phase.EvalRun(adapter, str(root / f"eval_{i}.parquet"),
                               {"model": "tiny", "organism": "sycophancy", "stage": "phase3", "method": "m", "k": i})
        for i, adapter in enumerate((a, a_again, b))
    ]  # fmt: skip
    evaluate_phase.evaluate(str(tiny_world["model"]), str(tiny_world["data"] / "sycophancy"), "sycophancy", runs,
                            MODEL_SETTINGS, {"size": 12}, seed=0)  # fmt: skip
    assert loads == [a, b]
    first, repeat, other = (pd.read_parquet(r.out_path) for r in runs)
    assert first["completion"].tolist() == repeat["completion"].tolist()
    assert repeat["k"].unique().tolist() == [1] and first["k"].unique().tolist() == [0]
    assert first["completion"].tolist() != other["completion"].tolist()
