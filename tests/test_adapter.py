"""Saving an adapter (cmt.phases.adapter.save_adapter)."""

import json

from peft import LoraConfig, get_peft_model

from cmt.models.loading import load_model
from cmt.phases.adapter import save_adapter


def test_an_adapter_config_lists_its_target_modules_in_one_order(tiny_world, tmp_path):
    model = get_peft_model(load_model(tiny_world["model"]), LoraConfig(r=2, target_modules="all-linear"))
    names = sorted(model.peft_config["default"].target_modules)
    # peft keeps a set, written in the process's string-hash order; here an order that is surely not sorted.
    model.peft_config["default"].target_modules = list(reversed(names))
    save_adapter(model, tmp_path / "adapter", {"task": "test"})
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == names
    assert len(names) == 14  # 7 linear layers in each of the tiny model's 2 blocks
    # and the adapter still loads
    assert load_model(tiny_world["model"], adapter=tmp_path / "adapter", merge=True) is not None
