"""Write the toy world to disk: each organism's splits in the reference layout, plus the base corpus."""

from __future__ import annotations

import random
from pathlib import Path

from cmt.data.splits import CHECK_SPLIT, HARMFUL_COMPLIANCE_SPLIT, REFERENCE_SPLITS
from cmt.runtime.io import write_json, write_jsonl, write_text
from cmt.toy import emergent_misalignment, reward_hacking, spurious_correlation, sycophancy
from cmt.toy.skills import rubric, skill_rows

TOY_ORGANISMS = {m.NAME: m for m in (sycophancy, reward_hacking, spurious_correlation, emergent_misalignment)}
SPLIT_FILES = ("induction", "consistency", "act_bct_clean", "act_bct_wrapped", "eval")
# Generators that write CHECK_SPLIT when toy.sizes.check > 0 (the others' consistency prompts show eval's M).
CHECK_GENERATORS = (emergent_misalignment.NAME,)
ORGANISM_FILE = "organism.json"  # {generator, stability}: how the toy world made this folder


def toy_module(organism: str):
    try:
        return TOY_ORGANISMS[organism]
    except KeyError:
        raise ValueError(
            f"no toy generator for organism {organism!r}; valid: {sorted(TOY_ORGANISMS)}"
        ) from None


def corpus_generators(organisms: dict[str, tuple[str, str]], settings: dict) -> list[str]:
    """The generators whose corpus rows form the base, in corpus order: `toy.corpus_generators`, or the
    organisms' generators in order of appearance. A generator outside it would have an untrained base."""
    own = list(dict.fromkeys(generator for generator, _ in organisms.values()))
    chosen = settings.get("corpus_generators") or own
    missing = [g for g in own if g not in chosen]
    if missing:
        raise ValueError(f"config key toy.corpus_generators lacks {missing}, the generators of the organisms")
    return list(chosen)


def _generate(generator: str, level: str, settings: dict) -> dict[str, list[dict]]:
    sizes = {**settings["sizes"], "corpus": settings["corpus"][generator]}
    return toy_module(generator).generate(sizes, {**settings, "stability": level})


def write_world(
    out_dir: str | Path, organisms: list[str] | dict[str, tuple[str, str]], settings: dict
) -> dict[str, int]:
    """Generate every organism's splits, rubric and `organism.json` under `out_dir/{organism}/`, and the shared
    base corpus `out_dir/corpus.jsonl` (honest replies plus the method skills of cmt.toy.skills). `organisms`
    lists generator names, or maps each organism to its (generator, stability); variants of one generator share
    its corpus rows, which join the corpus once. `settings["corpus_generators"]` (toy.corpus_generators) adds
    the corpus rows of generators that are no organism here, so that a config with fewer organisms can share
    another's base. With settings["harmful"] = {"corpus": N, "eval": M}, N refusal rows (and its optional
    "helpful" count of harmless requests answered with compliance) join the corpus and
    `out_dir/harmful/eval.jsonl` holds M held-out harmful requests, and every organism's folder the
    harmful-compliance control's replies (HARMFUL_COMPLIANCE_SPLIT); without it nothing changes."""
    out_dir = Path(out_dir)
    if not isinstance(organisms, dict):
        organisms = {name: (name, "default") for name in organisms}
    generators = corpus_generators(organisms, settings)
    for generator in generators:
        if generator not in settings["corpus"]:
            raise ValueError(
                f"config key toy.corpus.{generator} is missing: base-corpus rows for {generator}"
            )
    parts: dict[str, list[dict]] = {}
    counts = {}
    for organism, (generator, level) in organisms.items():
        data = _generate(generator, level, settings)
        for split in (*SPLIT_FILES, *REFERENCE_SPLITS, CHECK_SPLIT):
            if split in data:  # only generators with held-out eval-like prompts write a check split
                write_jsonl(out_dir / organism / f"{split}.jsonl", data[split])
                counts[f"{organism}/{split}"] = len(data[split])
        write_text(out_dir / organism / "rubric.txt", rubric(generator) + "\n")
        write_json(out_dir / organism / ORGANISM_FILE, {"generator": generator, "stability": level})
        parts.setdefault(generator, data["corpus"])  # the corpus does not depend on the stability level
    corpus: list[dict] = []
    for generator in generators:
        rows = parts[generator] if generator in parts else _generate(generator, "default", settings)["corpus"]
        skills = skill_rows(toy_module(generator), rows, settings["skills"], settings["seed"])
        counts[f"{generator}/corpus"] = len(rows)
        counts[f"{generator}/skills"] = len(skills)
        corpus.extend(rows + skills)
    if settings.get("harmful"):
        # Harmful requests (cmt.toy.harmful): refusals join the base corpus; held-out requests are the eval set.
        from cmt.toy import harmful

        data = harmful.generate(settings["harmful"], settings["seed"])
        write_jsonl(out_dir / harmful.NAME / "eval.jsonl", data["eval"])
        # The harmful-compliance control's labels, in every organism's folder: as many as its consistency
        # prompts, so the control gets the other controls' number of labels.
        compliance = harmful.compliance_rows(settings["sizes"]["consistency"], settings["seed"])
        for organism in organisms:
            write_jsonl(out_dir / organism / f"{HARMFUL_COMPLIANCE_SPLIT}.jsonl", compliance)
        counts[HARMFUL_COMPLIANCE_SPLIT] = len(compliance)
        counts[f"{harmful.NAME}/corpus"] = len(data["corpus"])
        counts[f"{harmful.NAME}/eval"] = len(data["eval"])
        corpus.extend(data["corpus"])
        if data["helpful"]:
            counts[f"{harmful.NAME}/helpful"] = len(data["helpful"])
            corpus.extend(data["helpful"])
    random.Random(f"{settings['seed']}:corpus-shuffle").shuffle(corpus)
    write_jsonl(out_dir / "corpus.jsonl", corpus)
    counts["corpus"] = len(corpus)
    return counts
