"""The pre-Phase-3 evidence of `diagnose` for one organism (model, organism, seed): `cmt.analysis.diagnose`.

It reads what exists before retraining: the organism, its Phase-2 labels and eval candidates, and its fragility.
The organism's greedy replies on the consistency prompts and every method's labels there are judged by the
organism's judge, so the shift term compares M on the same prompts. Writes the judged rows (one per prompt and
source) and the evidence (one row per run), each a parquet with a manifest.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from cmt.analysis.diagnose import EVIDENCE_COLUMNS, label_shift
from cmt.analysis.eta import slope_columns, with_transforms
from cmt.data.splits import load_split
from cmt.generation import SamplingParams, load_generator
from cmt.methods.registry import get_spec
from cmt.organisms import make_judge
from cmt.phases.evaluate import judged_rows, manifest_path_of
from cmt.runtime.io import DataError, write_json, write_parquet
from cmt.runtime.manifest import build_manifest

log = logging.getLogger(__name__)

ORGANISM_SOURCE = "organism"


def _run_of(path: str) -> tuple[str, int]:
    """(method, k) of a label or candidate file: .../<method>/k<k>.parquet."""
    p = Path(path)
    return p.parent.name, int(p.stem.removeprefix("k"))


def _eta_evidence(path: str | None) -> dict:
    """The rank-transform slope of M on score among this run's eval candidates, with its CI."""
    empty = {"eta_slope": math.nan, "eta_ci_low": math.nan, "eta_ci_high": math.nan, "eta_n_candidates": 0}
    if path is None:
        return empty
    df = with_transforms(pd.read_parquet(path))
    used = df[df["m"].notna() & df["score_rank"].notna()]
    if used.empty or used["m"].nunique() < 2:
        return {**empty, "eta_n_candidates": len(used)}
    slope = slope_columns(used, "rank")
    estimate = slope["slope"] if slope["slope_ci_method"] == "gee_wald" else slope["slope_firth"]
    return {"eta_slope": estimate, "eta_ci_low": slope["slope_ci_low"], "eta_ci_high": slope["slope_ci_high"],
            "eta_n_candidates": len(used)}  # fmt: skip


def _fragility(path: str | None) -> float:
    if path is None:
        return math.nan
    record = json.loads(Path(path).read_text())
    value = record.get("fragility")
    # An estimate its record calls unreliable is no evidence: the predictor abstains.
    if value is None or record.get("fragility_reliable") is False:
        return math.nan
    return float(value)


def diagnose_evidence(
    model: str,
    organism: str,
    seed: int,
    model_dir: str,
    adapter: str,
    data_dir: str,
    labels: list[str],
    candidates: list[str],
    fragility: str | None,
    model_settings: dict,
    judge_settings: dict | None,
    n_boot: int,
    rows_out: str,
    evidence_out: str,
) -> None:
    """Judge the organism's greedy consistency replies and every label; one evidence row per label run."""
    examples = load_split(Path(data_dir), "consistency")
    by_id = {e.prompt_id: e for e in examples}
    generator = load_generator(model_dir, adapter, model_settings, f"diagnose {organism}")
    params = SamplingParams(temperature=0.0, max_new_tokens=model_settings["max_new_tokens"])
    replies = [c[0].text for c in generator.generate([e.prompt for e in examples], 1, params, seed)]
    judge = make_judge(organism, judge_settings)
    sources = [(ORGANISM_SOURCE, 0, [e.prompt_id for e in examples], replies)]
    for path in labels:
        chosen = pd.read_parquet(path)
        chosen = chosen[chosen["selected"].astype(bool)]
        foreign = sorted(set(chosen["prompt_id"]) - set(by_id))
        if foreign:
            raise DataError(f"{path}: {len(foreign)} labelled prompt(s) are not consistency prompts of "
                            f"{data_dir} (e.g. {foreign[0]}); diagnose judges consistency labels only")  # fmt: skip
        sources.append((*_run_of(path), list(chosen["prompt_id"]), list(chosen["text"])))
    rows = []
    for source, k, prompt_ids, texts in sources:
        verdicts = judged_rows(judge, [by_id[p] for p in prompt_ids], texts)
        for prompt_id, text, verdict in zip(prompt_ids, texts, verdicts, strict=True):
            m = verdict["misaligned"] if verdict["scored"] else math.nan
            rows.append({"source": source, "k": k, "prompt_id": prompt_id, "text": text,
                         "scored": bool(verdict["scored"]), "misaligned": float(m)})  # fmt: skip
    judged = pd.DataFrame(rows)
    organism_m = judged[judged["source"] == ORGANISM_SOURCE].set_index("prompt_id")["misaligned"]
    eta_paths = {_run_of(p): p for p in candidates}
    evidence = []
    for path in labels:
        method, k = _run_of(path)
        mine = judged[(judged["source"] == method) & (judged["k"] == k)].set_index("prompt_id")["misaligned"]
        evidence.append({"model": model, "organism": organism, "seed": seed, "method": method, "k": k,
                         "family": get_spec(method).family, **label_shift(mine, organism_m, n_boot, seed),
                         **_eta_evidence(eta_paths.get((method, k))), "fragility": _fragility(fragility)})  # fmt: skip
    table = pd.DataFrame(evidence, columns=EVIDENCE_COLUMNS)
    write_parquet(rows_out, judged)
    write_parquet(evidence_out, table)
    manifest = build_manifest(
        task="diagnose",
        settings={"model": model_settings, "n_boot": n_boot},
        seeds={"diagnose": seed},
        inputs=[
            Path(data_dir) / "consistency.jsonl",
            *([adapter] if adapter else []),
            *labels,
            *candidates,
            *([fragility] if fragility else []),
        ],
        outputs=[rows_out, evidence_out],
        manifest_path=manifest_path_of(evidence_out),
        model=model,
        organism=organism,
        n_runs=len(table),
    )
    write_json(manifest_path_of(evidence_out), manifest)
    log.info("diagnose %s/%s/seed%d: %d runs, organism M on consistency %.3f", model, organism, seed,
             len(table), organism_m.mean())  # fmt: skip
