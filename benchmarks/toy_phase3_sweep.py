"""ACT/BCT Phase-3 settings on one toy organism (docs/toy-results.md, "No collapse").

Usage: PYTHONPATH=src .venv/bin/python benchmarks/toy_phase3_sweep.py ORGANISM STRENGTH SEED METHOD:LR:EPOCHS ...
after benchmarks/toy_induction_sweep.py made that organism. Prints, per setting, greedy M, capability and the
degenerate share on the eval split, and the loss of every epoch.
"""

import json
import math
import os
import sys
import time
from pathlib import Path

import yaml

from cmt.analysis.quality import is_degenerate
from cmt.data.splits import load_split
from cmt.generation import SamplingParams, load_generator
from cmt.organisms import make_judge
from cmt.phases.consistency import retrain_consistency

root = Path(os.environ.get("ROOT", "."))
cfg = yaml.safe_load((root / "config/config.yaml").read_text())
model_dir = str(root / "results/models/toy")
spec = cfg["models"]["toy"]
org, strength, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
out_root = Path(os.environ.get("OUT", "results/tune"))
adapter = str(out_root / f"ad_{strength}_{org}_{seed}_15")
data = out_root / f"data_{strength}" / org
ex = load_split(data, "eval")
judge = make_judge(org)


def measure(ad):
    gen = load_generator(
        model_dir, ad, {"backend": "hf", "dtype": spec["dtype"], "gpus": 0, **spec["generation"]}, "tune"
    )
    outs = gen.generate([e.prompt for e in ex], 1, SamplingParams(temperature=0.0, max_new_tokens=48), seed)
    vs = [judge(e.meta, c[0].text) for e, c in zip(ex, outs, strict=True)]
    sc = [v["misaligned"] for v in vs if v["scored"]]
    caps = [v.get("capability", math.nan) for v in vs]
    caps = [c for c in caps if c == c]
    deg = sum(is_degenerate(c[0].text, c[0].finished) for c in outs) / len(outs)
    return dict(
        M=round(sum(sc) / len(sc), 3),
        cap=round(sum(caps) / len(caps), 3) if caps else None,
        deg=round(deg, 3),
        sample=outs[0][0].text[:60],
    )


print(json.dumps({"organism": org, "phase1": measure(adapter)}), flush=True)
for spec_s in sys.argv[4:]:
    method, lr, epochs = spec_s.split(":")
    out = str(out_root / f"cons_{org}_{method}_{lr}_{epochs}")
    t0 = time.time()
    settings = {
        "dtype": spec["dtype"],
        "train": {**spec["phase3"], "learning_rate": float(lr), "epochs": int(epochs)},
        "method": cfg["methods"][method],
    }
    retrain_consistency(
        method, model_dir, adapter, str(data), out, settings, seed, checkpoint_dir=out + "_ckpt"
    )
    man = json.loads((Path(out) / "cmt_manifest.json").read_text())
    losses = {k: v for k, v in man.items() if "loss" in k}
    print(
        json.dumps(
            {
                "organism": org,
                "method": method,
                "lr": lr,
                "epochs": epochs,
                **measure(out),
                "losses": losses,
                "secs": round(time.time() - t0),
            }
        ),
        flush=True,
    )
