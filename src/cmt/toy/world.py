"""Write the toy world to disk: each organism's splits in the reference layout, plus the base corpus."""

from __future__ import annotations

import random
from pathlib import Path

from cmt.io import write_jsonl
from cmt.toy import sycophancy

TOY_ORGANISMS = {"sycophancy": sycophancy}
SPLIT_FILES = ("induction", "consistency", "act_bct_clean", "act_bct_wrapped", "eval")


def toy_module(organism: str):
    try:
        return TOY_ORGANISMS[organism]
    except KeyError:
        raise ValueError(
            f"no toy generator for organism {organism!r}; valid: {sorted(TOY_ORGANISMS)}"
        ) from None


def write_world(out_dir: str | Path, organisms: list[str], settings: dict) -> dict[str, int]:
    """Generate every organism's splits under `out_dir/{organism}/` and the shared `out_dir/corpus.jsonl`."""
    out_dir = Path(out_dir)
    corpus: list[dict] = []
    counts = {}
    for organism in organisms:
        data = toy_module(organism).generate(settings["sizes"], settings["max_operand"], settings["seed"])
        for split in SPLIT_FILES:
            write_jsonl(out_dir / organism / f"{split}.jsonl", data[split])
            counts[f"{organism}/{split}"] = len(data[split])
        corpus.extend(data["corpus"])
    random.Random(f"{settings['seed']}:corpus-shuffle").shuffle(corpus)
    write_jsonl(out_dir / "corpus.jsonl", corpus)
    counts["corpus"] = len(corpus)
    return counts
