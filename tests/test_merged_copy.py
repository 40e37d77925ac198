"""The merged copy that Phase 1's titration checks generate from (cmt.models.merged)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from cmt.models.loading import load_model
from cmt.models.merged import MergedCopy


def _trained_lora(model_dir, **lora):
    model = get_peft_model(
        load_model(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora)
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter: lora_B starts at zero, which would hide a wrong merge
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def test_the_copy_holds_the_weights_that_evaluation_loads(tiny_world, tmp_path):
    model = _trained_lora(tiny_world["model"])
    copy = MergedCopy(model, load_model(tiny_world["model"]))
    plain = copy.refresh()
    model.save_pretrained(tmp_path / "adapter")
    # What an evaluate job loads: the saved adapter merged into the base (merge_and_unload).
    loaded = load_model(tiny_world["model"], adapter=tmp_path / "adapter", merge=True).state_dict()
    base = load_model(tiny_world["model"]).state_dict()
    ours = plain.state_dict()
    assert ours.keys() == loaded.keys()
    assert all(torch.equal(ours[k], loaded[k]) for k in ours)
    changed = [k for k in ours if not torch.equal(ours[k], base[k])]
    assert len(changed) == 14  # 7 linear layers in each of the tiny model's 2 blocks
    # A refresh follows the adapter as it trains, and leaves the training model's base weights alone.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2)
    again = copy.refresh().state_dict()
    assert all(not torch.equal(again[k], loaded[k]) for k in changed)
    frozen = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.named_parameters()
    }
    assert all(torch.equal(frozen[k], base[k]) for k in changed)


@pytest.mark.parametrize("lora", [{"use_dora": True}, {"lora_bias": True}])
def test_an_adapter_it_cannot_merge_is_refused(tiny_world, lora):
    model = _trained_lora(tiny_world["model"], **lora)
    assert not MergedCopy.supports(model)
    with pytest.raises(ValueError, match="only one plain LoRA adapter"):
        MergedCopy(model, load_model(tiny_world["model"]))
