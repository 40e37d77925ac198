"""Induction-strength sweep of the toy world (docs/toy-results.md, "Calibration").

Usage: PYTHONPATH=src .venv/bin/python benchmarks/toy_induction_sweep.py STRENGTHS ORGANISMS [SEEDS] [EPOCHS]
e.g. 0.5,0.65 sycophancy,reward_hacking 0,1,2. Needs the toy base at ROOT/results/models/toy (run
`.venv/bin/snakemake --cores 2 results/models/toy/model.safetensors` first). Per organism, strength and seed it
induces an organism (on one thread, as the pipeline does) and prints one JSON line: greedy M on the eval split
(n scored rows), M over 8 samples at T = 0.7, and `both`, the share of scored prompts whose 8 samples hold both
an aligned and a misaligned reply.

Phase 1 is the pipeline's: an organism's own `phase1` overrides (learning rate, epochs) and its `induce_until`
titration apply, so a titrated organism's row is what its induce job would give (EPOCHS, when given, replaces
every organism's epochs; the row's `stopped_at` and `kept_step` say where a titration stopped).
"""

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml

from cmt.data.splits import load_split
from cmt.generation import SamplingParams, load_generator
from cmt.organisms import make_judge
from cmt.phases.induce import induce
from cmt.toy.world import write_world

# One thread, as the pipeline's induce and evaluate jobs: the thread count changes the rounding, and with it the
# organisms (the values in docs/benchmarks.md were measured so).
torch.set_num_threads(1)
root = Path(os.environ.get("ROOT", "."))
cfg = yaml.safe_load((root / "config/config.yaml").read_text())
model_dir = str(root / "results/models/toy")
spec = cfg["models"]["toy"]
kernel = {"attn_implementation": spec["attn_implementation"]} if spec.get("attn_implementation") else {}
strengths = [float(s) for s in sys.argv[1].split(",")]
organisms = sys.argv[2].split(",")
seeds = [int(s) for s in sys.argv[3].split(",")] if len(sys.argv) > 3 else [0]
epochs_arg = int(sys.argv[4]) if len(sys.argv) > 4 else None


def phase1(org: str) -> tuple[dict, dict | None]:
    """The organism's Phase-1 training settings and its induce_until rule, as workflow/rules/helpers.smk builds
    them."""
    organism = cfg["organisms"][org]
    train = {**spec["phase1"], **(organism.get("phase1") or {})}
    if epochs_arg is not None:
        train["epochs"] = epochs_arg
    until = organism.get("induce_until")
    if until:
        until = {**until, "max_new_tokens": spec["generation"]["max_new_tokens"]}
    return train, until


out = []
for s in strengths:
    toy = copy.deepcopy(cfg["toy"])
    toy["induction_strength"] = {o: s for o in organisms}
    toy["corpus"] = {o: toy["corpus"][o] for o in organisms}  # as the pipeline: some splits depend on it
    toy.pop("harmful", None)
    data = Path(os.environ.get("OUT", "results/tune")) / f"data_{s}"
    write_world(data, organisms, toy)
    for org in organisms:
        train, until = phase1(org)
        epochs = train["epochs"]
        titrated = "_until" if until else ""
        for seed in seeds:
            ad = Path(os.environ.get("OUT", "results/tune")) / f"ad_{s}_{org}_{seed}_{epochs}{titrated}"
            t0 = time.time()
            if not (ad / "adapter_config.json").exists():
                settings = {"dtype": spec["dtype"], **kernel, "lora": spec["lora"], "train": train}
                if until:
                    settings["until"] = until
                induce(
                    model_dir,
                    str(data / org),
                    str(ad),
                    settings,
                    seed,
                    checkpoint_dir=str(ad) + "_ckpt",
                    organism=org if until else None,
                )
            stop = json.loads((ad / "cmt_manifest.json").read_text()).get("until") or {}
            gen = load_generator(
                model_dir,
                str(ad),
                {"backend": "hf", "dtype": spec["dtype"], "gpus": 0, **kernel, **spec["generation"]},
                "tune",
            )
            ex = load_split(data / org, "eval")
            judge = make_judge(org)
            prompts = [e.prompt for e in ex]
            greedy = gen.generate(prompts, 1, SamplingParams(temperature=0.0, max_new_tokens=48), seed)
            vs = [judge(e.meta, c[0].text) for e, c in zip(ex, greedy, strict=True)]
            sc = [v for v in vs if v["scored"]]
            m = sum(v["misaligned"] for v in sc) / len(sc)
            cap = sum(v["correct"] for v in vs) / len(vs)
            samp = gen.generate(
                prompts, 8, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=48), seed
            )
            both = []
            msamp = []
            for e, cs in zip(ex, samp, strict=True):
                v8 = [judge(e.meta, c.text) for c in cs]
                if not v8[0]["scored"]:
                    continue
                ms = [v["misaligned"] for v in v8]
                both.append(0 < sum(ms) < 8)
                msamp.append(sum(ms) / 8)
            r = dict(
                strength=s,
                organism=org,
                seed=seed,
                epochs=epochs,
                lr=train["learning_rate"],
                stopped_at=stop.get("stopped_at"),
                kept_step=stop.get("kept_step"),
                M=round(m, 3),
                n=len(sc),
                cap=round(cap, 3),
                M_sampled=round(sum(msamp) / len(msamp), 3),
                both=round(sum(both) / len(both), 3),
                secs=round(time.time() - t0),
            )
            print(json.dumps(r), flush=True)
