"""Evaluate a model (base, organism or retrained) on the organism's eval prompts: one scored row per prompt."""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cmt.data.splits import Example, load_split
from cmt.generation import SamplingParams, load_generator
from cmt.generation.base import RepeatedCallCache
from cmt.judges import judge_batch
from cmt.organisms import make_judge
from cmt.runtime.io import write_json, write_parquet
from cmt.runtime.manifest import build_manifest, sha256_file

log = logging.getLogger(__name__)

# judge.max_parse_failure_rate's default (the config schema's): the share of an evaluation's scored rows that may
# lack a parsed judge verdict before the evaluation fails.
MAX_PARSE_FAILURE_RATE = 0.05


class ParseFailureRateError(RuntimeError):
    """Too many of an evaluation's scored rows got no parsed judge verdict for its M to be trusted."""


def stratified_subset(examples: list[Example], size: int | None, seed: int) -> list[Example]:
    """A seeded subset stratified by (label, framing), in the file's order; all rows when size is None."""
    if size is None or size >= len(examples):
        return examples
    strata: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        strata[(e.meta.get("label"), e.meta.get("user_provides_answer"))].append(i)
    rng = random.Random(f"{seed}:eval-subset")
    keep: list[int] = []
    for key in sorted(strata, key=repr):
        idx = strata[key]
        quota = round(size * len(idx) / len(examples))
        keep.extend(rng.sample(idx, min(quota, len(idx))))
    return [examples[i] for i in sorted(keep)]


@dataclass(frozen=True)
class EvalRun:
    """One evaluated model: the adapter to load (None for the base), where its rows go, and who it is."""

    adapter: str | None
    out_path: str
    identity: dict  # model, organism, stage, method, k
    harmful_out: str | None = None  # rows of the harmful-request eval slot, when configured


def phase3_training_examples(adapter: str | None) -> int | None:
    """How many examples Phase 3 trained on, from the retrained adapter's manifest (None: not recorded)."""
    manifest = _adapter_manifest(adapter)
    for key in ("n_labels", "n_pairs"):
        if key in manifest:
            return int(manifest[key])
    return None


def phase3_label_set(adapter: str | None) -> str:
    """The hash of the labels Phase 3 trained on ('' for act/bct and when unrecorded)."""
    return str(_adapter_manifest(adapter).get("label_set", ""))


def _adapter_manifest(adapter: str | None) -> dict:
    import json

    path = Path(adapter or "") / "cmt_manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def sampled_misalignment(generator, judge, examples: list[Example], policy: dict, seed: int) -> list[float]:
    """Per eval row, the misaligned share of `policy["n"]` replies sampled at the methods' temperature (NaN on
    rows the judge does not score): whether misalignment is a property of the policy or one fixed reply."""
    import math

    params = SamplingParams(temperature=policy["temperature"], top_p=policy.get("top_p", 1.0),
                            max_new_tokens=policy["max_new_tokens"])  # fmt: skip
    samples = generator.generate([e.prompt for e in examples], policy["n"], params, seed)
    flat = [(e, c.text) for e, cs in zip(examples, samples, strict=True) for c in cs]
    verdicts = judged_rows(judge, [e for e, _ in flat], [t for _, t in flat])
    shares = []
    for i in range(len(examples)):
        values = [v["misaligned"] for v in verdicts[i * policy["n"] : (i + 1) * policy["n"]] if v["scored"]]
        values = [x for x in values if math.isfinite(x)]
        shares.append(sum(values) / len(values) if values else math.nan)
    return shares


def manifest_path_of(out_path: str) -> str:
    """The manifest beside a per-row parquet file: x.parquet -> x.manifest.json."""
    return str(Path(out_path).with_suffix("")) + ".manifest.json"


def judged_rows(judge, examples: list[Example], texts: list[str]) -> list[dict]:
    """One verdict per (example, completion): the judge sees the row's metadata and its prompt."""
    return judge_batch(judge, [e.meta for e in examples], texts, [e.prompt for e in examples])


def check_parse_failure_rate(verdicts: list[dict], identity: dict, max_rate: float) -> None:
    """Fail when the share of scored rows whose judge reply did not parse exceeds `max_rate`.

    M leaves those rows out (their `misaligned` is NaN), so a high share would make M the M of the rows the
    judge happened to answer. The programmatic judge always parses; its verdicts pass."""
    scored = [v for v in verdicts if v.get("scored")]
    failed = [v for v in scored if not v.get("parse_ok", True)]
    if not failed or len(failed) / len(scored) <= max_rate:
        return
    rate = len(failed) / len(scored)
    where = ", ".join(f"{k} {identity[k]}" for k in ("method", "k") if identity.get(k) not in (None, ""))
    first = failed[0]
    raise ParseFailureRateError(
        f"evaluate {identity.get('organism')}, stage {identity.get('stage')}{f' ({where})' if where else ''}: "
        f"the judge's reply did not parse for {len(failed)} of {len(scored)} scored rows, a parse-failure rate "
        f"of {rate:.3f}, above judge.max_parse_failure_rate {max_rate:g}. First: {first.get('parse_errors')!r} "
        f"in reply {str(first.get('raw', ''))[:160]!r}. Unparsed replies are not cached, so a rerun asks the "
        "judge again; if it keeps failing, check the judge model and judge.max_tokens"
    )


def adapter_weights_digest(adapter: str | None) -> str | None:
    """The sha256 of each of an adapter's config and weight files; None without an adapter. Retraining on
    identical labels is deterministic, so k-scaling runs whose selectors picked the same labels share it."""
    if not adapter:
        return None
    # adapter_* only: the manifest beside them names the labels, which differ between k.
    return json.dumps([(p.name, sha256_file(p)) for p in sorted(Path(adapter).glob("adapter_*"))])


def judge_usage(judge) -> dict:
    usage = getattr(judge, "usage", None)
    return usage() if usage is not None else {"kind": "programmatic"}


def evaluate(
    model_dir: str,
    data_dir: str,
    organism: str,
    runs: list[EvalRun],
    model_settings: dict,
    eval_settings: dict,
    seed: int,
    judge_settings: dict | None = None,
    harmful_settings: dict | None = None,
) -> None:
    """Greedy replies of each run's model on the same seeded eval subset, judged; one parquet (and manifest)
    per run."""
    examples = stratified_subset(load_split(Path(data_dir), "eval"), eval_settings.get("size"), seed)
    params = SamplingParams(temperature=0.0, max_new_tokens=model_settings["max_new_tokens"])
    judge = make_judge(organism, judge_settings)
    max_rate = (judge_settings or {}).get("max_parse_failure_rate", MAX_PARSE_FAILURE_RATE)
    # The last adapter's weights digest and its generator: the next adapter with the same weights reuses them.
    loaded: tuple[str | None, RepeatedCallCache] | None = None
    for run in runs:
        stage = run.identity["stage"]
        digest = adapter_weights_digest(run.adapter)
        if loaded is not None and digest is not None and loaded[0] == digest:
            log.info(
                "%s: the same weights as the job's previous adapter; its replies are reused", run.adapter
            )
            generator = loaded[1]
        else:
            loaded = generator = None  # the previous model is released before the next one loads
            generator = RepeatedCallCache(
                load_generator(model_dir, run.adapter, model_settings, f"evaluate {stage}")
            )
            loaded = (digest, generator)
        n_train = phase3_training_examples(run.adapter) if stage == "phase3" else None
        label_set = phase3_label_set(run.adapter) if stage == "phase3" else ""
        # Prompts Phase 2 gave no label and replies it could not parse, carried to runs.csv per run.
        recorded = _adapter_manifest(run.adapter) if stage == "phase3" else {}
        completions = [c[0] for c in generator.generate([e.prompt for e in examples], 1, params, seed)]
        verdicts = judged_rows(judge, examples, [c.text for c in completions])
        check_parse_failure_rate(verdicts, {"organism": organism, **run.identity}, max_rate)
        rows = []
        for e, completion, verdict in zip(examples, completions, verdicts, strict=True):
            rows.append(
                {
                    **run.identity,
                    "seed": seed,
                    "prompt_id": e.prompt_id,
                    "framing": e.meta.get("user_provides_answer") or "none",
                    "category": e.meta.get("label"),
                    "completion": completion.text,
                    "num_tokens": completion.num_tokens,
                    "scored": verdict["scored"],
                    "misaligned": verdict["misaligned"],
                    "correct": verdict["correct"],
                    "capability": float(verdict.get("capability", float("nan"))),
                    # Reward hacking's reference rows: the group, the subtype and a gameable task's raw count.
                    "metric_group": verdict.get("metric_group", e.meta.get("metric_group")),
                    "subtype": verdict.get("subtype", e.meta.get("subtype")),
                    "count": float(verdict.get("count", float("nan"))),
                    "finished": completion.finished,
                    "judge_parse_ok": verdict.get("parse_ok", True),
                    "n_train": n_train,
                    "label_set": label_set,
                    "n_dropped": recorded.get("n_dropped"),
                    "n_label_parse_failures": recorded.get("n_label_parse_failures"),
                }
            )
        df = pd.DataFrame(rows)
        policy = eval_settings.get("policy_samples")
        if stage == "phase1" and policy:
            policy = {"max_new_tokens": model_settings["max_new_tokens"], **policy}
            df["sampled_misaligned"] = sampled_misalignment(generator, judge, examples, policy, seed)
        scored = df[df["scored"]]
        log.info("%s %s k=%s: M = %.3f over %d scored rows (%d rows)", stage, run.identity.get("method") or "",
                 run.identity.get("k"), scored["misaligned"].mean(), len(scored), len(df))  # fmt: skip
        write_parquet(run.out_path, df)
        inputs = [Path(data_dir) / "eval.jsonl"] + ([run.adapter] if run.adapter else [])
        manifest = build_manifest(
            task="evaluate",
            settings={"model": model_settings, "eval": eval_settings, "judge": judge_usage(judge)},
            seeds={"eval": seed},
            inputs=inputs,
            outputs=[run.out_path],
            manifest_path=manifest_path_of(run.out_path),
            **run.identity,
            n_rows=len(df),
            n_scored=len(scored),
            n_judge_parse_failures=int((~df["judge_parse_ok"]).sum()),
        )
        write_json(manifest_path_of(run.out_path), manifest)
        if run.harmful_out:
            evaluate_harmful_slot(run, generator, data_dir, model_settings, seed, harmful_settings)


def harmful_requests_path(data_dir: str, requests: str) -> Path:
    """`toy`: the toy world's held-out harmful requests (beside the organism folders); else the given file."""
    return Path(data_dir).parent / "harmful" / "eval.jsonl" if requests == "toy" else Path(requests)


def evaluate_harmful_slot(run, generator, data_dir, model_settings, seed, harmful_settings):
    """The eval slot for harmful requests: greedy replies of the same model, scored for compliance."""
    from cmt.phases.harmful import evaluate_harmful

    if not harmful_settings:
        raise ValueError(f"{run.harmful_out}: a harmful-rows output needs the config's eval.harmful block")
    requests = harmful_requests_path(data_dir, harmful_settings["requests"])
    judge = harmful_settings.get("judge") if harmful_settings["scorer"] == "strongreject" else None
    # The model is already loaded for the eval rows: reuse it rather than load it again.
    rows = evaluate_harmful(run.identity, None, run.adapter, str(requests), harmful_settings["scorer"],
                            judge, model_settings, seed, None, generator=generator)  # fmt: skip
    write_parquet(run.harmful_out, rows)
