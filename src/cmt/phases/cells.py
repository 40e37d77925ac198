"""Jobs that run one step for several cells: `cmt evaluate` scores several models of one organism, and
`cmt shift` measures one method's runs at several k, loading the organism once.

The functions here turn the per-cell lists a rule passes (one adapter, output and k per cell) into runs, check
that the lists line up, and run them. A list mismatch raises ValueError with a message meant for the user.
"""

from __future__ import annotations

from collections.abc import Sequence

from cmt.phases.evaluate import EvalRun


def eval_runs(
    model: str,
    organism: str,
    stage: str,
    adapters: Sequence[str],
    outs: Sequence[str],
    method: str | None = None,
    ks: Sequence[int] | None = None,
    harmful_outs: Sequence[str] | None = None,
    harmful_ks: Sequence[int] | None = None,
) -> list[EvalRun]:
    """The models one `cmt evaluate` job scores: the base (no adapter), the organism (one adapter) or a method's
    retrained adapters (phase3: one adapter, output and k each). `harmful_outs` go to every model, or in phase3
    to the models of `harmful_ks` (one each)."""
    if stage == "phase3":
        if not method or not ks or len(ks) != len(adapters) or len(ks) != len(outs):
            raise ValueError("--stage phase3 needs --method and one --ks, --adapter and --out each")
        cells = [(a, o, method, k) for a, o, k in zip(adapters, outs, ks, strict=True)]
    else:
        if len(outs) != 1 or len(adapters) != (stage == "phase1"):
            wanted = "one --adapter" if stage == "phase1" else "no --adapter"
            raise ValueError(f"--stage {stage} takes one --out and {wanted}")
        cells = [(adapters[0] if adapters else None, outs[0], None, None)]
    harmful_outs = list(harmful_outs or [])
    if harmful_ks is not None:
        if stage != "phase3" or len(harmful_ks) != len(harmful_outs) or not set(harmful_ks) <= set(ks):
            raise ValueError("--harmful-ks needs --stage phase3, one --harmful-out each and k values of --ks")
        by_k = dict(zip(harmful_ks, harmful_outs, strict=True))
        harmful_outs = [by_k.get(k) for *_, k in cells]
    elif harmful_outs and len(harmful_outs) != len(cells):
        raise ValueError(f"{len(cells)} evaluated models but {len(harmful_outs)} --harmful-out")
    identity = {"model": model, "organism": organism, "stage": stage}
    return [
        EvalRun(adapter, out, {**identity, "method": cell_method, "k": k}, harmful_out)
        for (adapter, out, cell_method, k), harmful_out in zip(
            cells, harmful_outs or [None] * len(cells), strict=True
        )
    ]


def check_shift_cells(
    ks: Sequence[int], adapters: Sequence[str], outs: Sequence[str], labels: Sequence[str] | None
) -> list[str | None]:
    """The label file per k (None for each when a method has none); the lists must have one value per k."""
    labels = list(labels) if labels else [None] * len(ks)
    if not len(ks) == len(adapters) == len(labels) == len(outs):
        raise ValueError("--ks, --adapter, --out (and --labels, when given) need one value per k")
    return labels


def measure_shift_runs(
    identity: dict,
    ks: Sequence[int],
    adapters: Sequence[str],
    labels: Sequence[str] | None,
    outs: Sequence[str],
    model_dir: str,
    organism_adapter: str,
    data_dir: str,
    splits: Sequence[str],
    m: int,
    seed: int,
    model_settings: dict,
    size: int | None = None,
    max_new_tokens: int | None = None,
) -> None:
    """One shift record per k of a method's runs (`identity`: model, organism, seed, method), written to the
    matching out path. The organism (P1) is the same for every k, so it is loaded once."""
    from cmt.generation import load_generator
    from cmt.phases.shift import measure_run
    from cmt.runtime.io import write_json

    label_paths = check_shift_cells(ks, adapters, outs, labels)
    p1 = load_generator(model_dir, organism_adapter, model_settings, "shift organism")
    for k, adapter, labels_path, out in zip(ks, adapters, label_paths, outs, strict=True):
        record = measure_run({**identity, "k": k}, model_dir, organism_adapter, adapter, labels_path, data_dir,
                             splits, m, seed, model_settings, size, max_new_tokens, p1=p1)  # fmt: skip
        write_json(out, record)
