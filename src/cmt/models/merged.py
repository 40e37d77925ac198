"""A plain copy of the base model that holds a training LoRA model's weights merged, for generating mid-training.

Generating through a PEFT model runs every adapted layer as base product + LoRA products + Python glue at each
token; Phase 1's titration checks spent most of their time there. The copy's adapted weights are set to
base + delta, the sum `merge_and_unload` forms when evaluation loads a saved adapter, so the copy is the model
that evaluation would load at that step.
"""

from __future__ import annotations

import torch

PEFT_PREFIX = "base_model.model."


class MergedCopy:
    """`plain` (the same base, loaded apart) kept in step with `peft_model` by `refresh()`.

    Only plain LoRA on linear layers is merged this way (no DoRA, no LoRA bias, one active adapter);
    `MergedCopy.supports(peft_model)` says whether a model qualifies.
    """

    def __init__(self, peft_model, plain):
        if not self.supports(peft_model):
            raise ValueError("MergedCopy: only one plain LoRA adapter on linear layers can be merged")
        self.plain = plain.eval()
        for p in self.plain.parameters():
            p.requires_grad_(False)
        self.pairs = []
        for name, module in _lora_layers(peft_model):
            target = self.plain.get_submodule(name.removeprefix(PEFT_PREFIX))
            if target.weight.shape != module.get_base_layer().weight.shape:
                raise ValueError(f"MergedCopy: {name} has another shape in the plain model")
            self.pairs.append((module, target))

    @staticmethod
    def supports(peft_model) -> bool:
        from peft.tuners.lora import Linear

        layers = list(_lora_layers(peft_model))
        if not layers:
            return False
        for _, module in layers:
            adapters = module.active_adapters
            if not isinstance(module, Linear) or len(adapters) != 1:
                return False
            (adapter,) = adapters
            if module.use_dora.get(adapter) or module.lora_bias.get(adapter) or module.fan_in_fan_out:
                return False
        return True

    @torch.no_grad()
    def refresh(self):
        """Set each adapted weight to base + delta (peft's own delta), and return the plain model."""
        for module, target in self.pairs:
            (adapter,) = module.active_adapters
            target.weight.copy_(module.get_base_layer().weight + module.get_delta_weight(adapter))
        return self.plain


def _lora_layers(peft_model):
    from peft.tuners.lora import LoraLayer

    return ((name, m) for name, m in peft_model.named_modules() if isinstance(m, LoraLayer))
