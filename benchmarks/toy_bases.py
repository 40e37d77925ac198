"""How far the toy world's organisms move with the base: the default config's induction stage on other bases.

Usage: PYTHONPATH=src .venv/bin/python benchmarks/toy_bases.py WORKROOT [VARIANT ...]
Each variant pretrains a base and induces the 12 organisms (4 organisms x seeds 0-2) in WORKROOT/VARIANT, with
`analysis.induction_gate.on_fail: exclude` so that every cell is reported, then prints one table: the base's
held-out sycophancy accuracy and M, Phase-1 M per organism and seed, the cells in the gate's band, and the
pretraining seconds. Variants (default: all that apply to this machine):

  default     the default config on this machine's kernels
  base_seed1  another base: toy.pretrain.seed 1 instead of 0
  no_amx      ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, the kernels of a CPU with AVX512-BF16 but no AMX (only where
              this CPU has AMX: elsewhere the cap changes nothing)

docs/toy-results.md ("Other CPUs") records what it gave on an AMD EPYC and an Intel Xeon with AMX.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch  # noqa: F401  (imported, so that numeric_path reports ATen's vector level)
import yaml

from cmt.runtime.numerics import cpu_info, numeric_path

ROOT = Path(__file__).resolve().parents[1]
ORGANISMS = ("sycophancy", "reward_hacking", "spurious_correlation", "emergent_misalignment")
SEEDS = (0, 1, 2)


def variants() -> dict[str, tuple[dict, dict]]:
    """name -> (environment additions, config changes as {dotted.key: value})."""
    found = {"default": ({}, {}), "base_seed1": ({}, {"toy.pretrain.seed": 1})}
    if "amx_bf16" in cpu_info()[1]:
        found["no_amx"] = ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, {})
    return found


def write_config(path: Path, changes: dict) -> None:
    config = copy.deepcopy(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    config["analysis"]["induction_gate"]["on_fail"] = "exclude"
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run_variant(work: Path, env: dict, changes: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    write_config(config, changes)
    targets = [f"results/organisms/toy/{o}/seed{s}/induction_report.json" for o in ORGANISMS for s in SEEDS]
    command = [str(ROOT / ".venv" / "bin" / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(work),
               "--configfile", str(config), "--replace-workflow-config", "--cores", "all", *targets]  # fmt: skip
    with open(work / "snakemake.out", "w") as out:
        subprocess.run(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, check=True)
    results = work / "results"
    pretrain = json.loads((results / "models" / "toy" / "pretrain_report.json").read_text())
    log = (work / "logs" / "pretrain_base" / "toy.log").read_text()
    stamps = re.findall(r"^(\d\d):(\d\d):(\d\d) ", log, re.M)
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in stamps]
    row = {
        "bf16 kernels": pretrain.get("numerics", {}).get("bf16_matmul"),
        "base held-out acc (sycophancy)": round(pretrain["heldout_accuracy"]["sycophancy"], 2),
        "pretraining s": (seconds[-1] - seconds[0]) % 86400 if seconds else None,
    }
    in_band = 0
    for organism in ORGANISMS:
        values = []
        for seed in SEEDS:
            report = json.loads((results / "organisms" / "toy" / organism / f"seed{seed}" /
                                 "induction_report.json").read_text())  # fmt: skip
            values.append(f"{report['risk_phase1']:.2f}")
            in_band += bool(report["in_band"])
            if organism == "sycophancy" and seed == 0:
                row["base M (sycophancy)"] = round(report["risk_base"], 2)
        row[organism] = " / ".join(values)
    row["cells in band"] = f"{in_band} of {len(ORGANISMS) * len(SEEDS)}"
    return row


def main(root: Path, names: list[str]) -> None:
    available = variants()
    unknown = [n for n in names if n not in available]
    if unknown:
        sys.exit(f"unknown or inapplicable variant(s) {unknown}; here: {sorted(available)}")
    print("numerics", numeric_path())
    rows = {name: run_variant(root / name, *available[name]) for name in names or available}
    print(pd.DataFrame(rows).to_string())


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]).resolve(), sys.argv[2:])
