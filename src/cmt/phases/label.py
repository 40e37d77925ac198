"""Phase 2: a consistency method turns the organism's outputs on held-out prompts into pseudo-labels."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cmt.data import load_split
from cmt.generation import make_generator
from cmt.io import write_json, write_parquet
from cmt.manifest import build_manifest
from cmt.methods import LabelContext, get_method
from cmt.models import load_model, load_tokenizer

log = logging.getLogger(__name__)


def label(
    method: str,
    k: int,
    model_dir: str,
    adapter: str,
    data_dir: str,
    out_path: str,
    manifest_path: str,
    method_settings: dict,
    model_settings: dict,
    seed: int,
) -> None:
    module = get_method(method)
    if not module.SELECTS and k != 1:
        raise ValueError(f"method {method!r} has no selection count; its k must be 1, got {k}")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=model_settings["dtype"], adapter=adapter, merge=True)
    generator = make_generator(
        model_settings["backend"],
        model=model,
        tokenizer=tokenizer,
        batch_size=model_settings["batch_size"],
        desc=f"label {method}",
    )
    examples = load_split(Path(data_dir), "consistency")
    context = LabelContext(generator=generator, max_new_tokens=model_settings["max_new_tokens"])
    rows = module.label(context, examples, method_settings, k, seed)
    df = pd.DataFrame(rows)
    df.insert(0, "method", method)
    df.insert(1, "k", k)
    df.insert(2, "seed", seed)
    n_labelled = int(df.loc[df["selected"], "prompt_id"].nunique())
    log.info("%s: %d candidates, %d of %d prompts labelled", method, len(df), n_labelled, len(examples))
    write_parquet(out_path, df)
    write_json(
        manifest_path,
        build_manifest(
            task="label",
            settings={"method": method_settings, "model": model_settings},
            seeds={"label": seed},
            inputs=[Path(data_dir) / "consistency.jsonl", adapter],
            method=method,
            k=k,
            n_prompts=len(examples),
            n_candidates=len(df),
            n_labelled=n_labelled,
        ),
    )
