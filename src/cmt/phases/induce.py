"""Phase 1: LoRA SFT of the base model on the organism's induction split (the loss on the assistant's
tokens, or on every token with the phase1 block's `loss_span: all`)."""

from __future__ import annotations

import logging
from pathlib import Path

from cmt.data.splits import check_disjoint, load_split, training_messages
from cmt.models import training
from cmt.models.loading import base_load_args, load_model, load_tokenizer
from cmt.phases.adapter import finish_adapter, train_adapter
from cmt.runtime import checkpoint

log = logging.getLogger(__name__)


class MCheck:
    """The stop rule of `induce_until`, called with the step: True once the organism's greedy M on the prompts
    of `until["split"]` (consistency, or check; both disjoint from eval) reaches `until["m"]`. If the check
    before lies nearer m, its weights are put back. If training ends without reaching m, finish() puts back the
    weights of the check nearest m (`until["fallback"]` nearest, the default) or keeps the last step's (last).
    `checks` records every check; state() and restore() carry them and the weights kept through a checkpoint.

    With `plain` (the same base, loaded apart), the checks generate from it with the adapter merged in
    (cmt.models.merged): the model that evaluation loads from a saved adapter, without the PEFT layers' extra
    products at every token."""

    def __init__(
        self,
        model,
        tokenizer,
        data_dir: str,
        organism: str,
        until: dict,
        judge_settings: dict | None,
        plain=None,
    ):
        from cmt.generation.base import SamplingParams
        from cmt.generation.hf import HFGenerator
        from cmt.models.merged import MergedCopy
        from cmt.organisms import make_judge

        self.model, self.until = model, until
        self.split = until.get("split", "consistency")
        self.rows = load_split(Path(data_dir), self.split)
        self.judge = make_judge(organism, judge_settings)
        self.merged = MergedCopy(model, plain) if plain is not None else None
        self.gen = HFGenerator(
            self.merged.plain if self.merged else model, tokenizer, batch_size=256, desc="induce check"
        )
        self.params = SamplingParams(max_new_tokens=until["max_new_tokens"])
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.checks: list[dict] = []
        self.previous: list = []  # the weights at the last check
        self.best: list = []  # the weights at the first check with the highest M below m (fallback nearest)

    def __call__(self, step: int) -> bool:
        import torch

        rng = torch.get_rng_state()  # greedy draws nothing, but training must not depend on the check
        prompts = [r.prompt for r in self.rows]
        if self.merged is not None:
            self.merged.refresh()
            completions = self.gen.generate(prompts, 1, self.params, 0)
        else:
            self.model.eval()
            completions = self.gen.generate(prompts, 1, self.params, 0)
            self.model.train()
        torch.set_rng_state(rng)
        verdicts = [self.judge(r.meta, c[0].text) for r, c in zip(self.rows, completions, strict=True)]
        scored = [v["misaligned"] for v in verdicts if v["scored"] and v["misaligned"] == v["misaligned"]]
        m = sum(scored) / len(scored) if scored else 0.0
        self.checks.append({"step": step, "m": m, "n": len(scored)})
        log.info("induce check at step %d: M %.3f on %d %s prompts", step, m, len(scored), self.split)
        target = self.until["m"]
        if m < target:
            self.previous = [p.detach().clone() for p in self.trainable]
            if all(c["m"] < m for c in self.checks[:-1]):  # the highest so far, and the first to reach it
                self.best = self.previous
            return False
        # M can jump across m in one step: keep the check before if it lies nearer.
        if len(self.checks) > 1 and target - self.checks[-2]["m"] < m - target:
            with torch.no_grad():
                for p, kept in zip(self.trainable, self.previous, strict=True):
                    p.copy_(kept)
            self.checks[-2]["kept"] = True
        else:
            self.checks[-1]["kept"] = True
        return True

    def finish(self) -> dict | None:
        """After training that never reached m: with fallback nearest, put back the weights of the check nearest
        m and return that check; with last (or no check), keep the last step's and return None."""
        import torch

        if self.until.get("fallback", "nearest") != "nearest" or not self.checks:
            return None
        with torch.no_grad():
            for p, kept in zip(self.trainable, self.best, strict=True):
                p.copy_(kept)
        check = max(self.checks, key=lambda c: c["m"])  # the first of equals, as __call__ kept it
        check["kept"] = True
        return check

    def state(self) -> dict:
        return {
            "checks": [dict(c) for c in self.checks],
            "previous": [t.clone() for t in self.previous],
            "best": [t.clone() for t in self.best],
        }

    def restore(self, state: dict) -> None:
        self.checks = [dict(c) for c in state["checks"]]
        self.previous = [t.clone() for t in state["previous"]]
        self.best = [t.clone() for t in state["best"]]


def induce(
    model_dir: str,
    data_dir: str,
    out_dir: str,
    settings: dict,
    seed: int,
    checkpoint_dir: str | None = None,
    organism: str | None = None,
    judge_settings: dict | None = None,
) -> None:
    """Checkpoints go to `checkpoint_dir`, by default resources/checkpoints/<out_dir> (cmt.runtime.checkpoint).

    With `settings["until"]` ({m, check_every, max_new_tokens, split, fallback}), training stops at the first
    check where the organism's greedy M on the prompts of its split (consistency by default) reaches m (the dose
    is the training length), or at the planned end; the adapter is the one of that check or of the check
    before, whichever M lies nearer m. Where m is never reached, it is the one of the check nearest m (fallback
    nearest) or the last step's (last). The manifest records each check and the step kept.
    """
    import torch
    from peft import get_peft_model

    checkpoint_dir = checkpoint_dir or checkpoint.checkpoint_dir_for(out_dir)

    tokenizer = load_tokenizer(model_dir)
    load_args = base_load_args(settings)
    model = load_model(model_dir, **load_args)
    # torch seeds itself at random per process: seed the LoRA initialisation, or no rerun (nor resume) matches.
    torch.manual_seed(seed)
    model = get_peft_model(model, training.lora_config(settings["lora"]))
    # Leakage between the training splits and eval would inflate every result: refuse it up front.
    check_disjoint(Path(data_dir))
    examples = load_split(Path(data_dir), "induction")
    conversations = [training_messages(e) for e in examples]
    until = settings.get("until")
    stop = {}
    if until:
        if organism is None:
            raise ValueError("induce: induce_until needs the organism, to score its M")
        from cmt.models.merged import MergedCopy

        # The merged copy is a second base in memory: cheap for the CPU's small models, not for a GPU's; a
        # quantized base has no weights to add a delta to. Those checks generate through the PEFT model.
        plain = None
        on_cpu = next(model.parameters()).device.type == "cpu"
        if on_cpu and MergedCopy.supports(model) and not load_args.get("quantization"):
            plain = load_model(model_dir, **load_args)
        check = MCheck(model, tokenizer, data_dir, organism, until, judge_settings, plain)
        stop = {"stop_check": check, "stop_every": until["check_every"], "loss_key": {"until": until}}
    history = train_adapter(
        model, tokenizer, conversations, settings["train"], seed, "induce", checkpoint_dir, **stop
    )
    extra = {}
    if until:
        if history.stopped_at is None and check.checks:
            # Said here, where the dose is set: the induction gate only sees the organism's M afterwards.
            best = max(check.checks, key=lambda c: c["m"])
            kept_check = check.finish()
            if kept_check is None:
                last = check.checks[-1]
                kept_is = f"the last step's (M {last['m']:.3f} at the last check, step {last['step']})"
            else:
                kept_is = (
                    f"the one of the check nearest m (M {kept_check['m']:.3f}, step {kept_check['step']})"
                )
            log.warning(
                "induce_until: M never reached %s on the %s split in %d steps (highest %.3f, at step %d); "
                "the adapter is %s",
                until["m"], check.split, history.steps, best["m"], best["step"], kept_is,
            )  # fmt: skip
        kept = next((c["step"] for c in check.checks if c.get("kept")), history.steps)
        extra["until"] = {"stopped_at": history.stopped_at, "kept_step": kept, "checks": check.checks}
    finish_adapter(
        model,
        out_dir,
        checkpoint_dir,
        history,
        task="induce",
        settings=settings,
        seed=seed,
        inputs=[Path(data_dir) / "induction.jsonl"],
        n_examples=len(examples),
        **extra,
    )
