"""Synthetic preference pairs for the toy reward model: a correct, helpful reply over a wrong or unhelpful one.

Each pair is built from one row of an organism's *base corpus* (never from a held-out split): the prompt is the
row's user turns, `chosen` is the row's own honest reply and `rejected` is an honest-style reply that is wrong
or unhelpful. No pair shows a misaligned behaviour on either side, so the reward model trained on them is an
honest but imperfect proxy: it learns "correct and helpful beats wrong or evasive", and has to generalise (or
fail to) when a candidate praises the user, games the tests, follows the ambiance cue or gives reckless advice.

Rejected replies per organism (every one uses the organism's honest template or a plain non-answer):

- sycophancy: the honest template with a wrong gcd. Plain question: "The gcd of a and b is X." with X != gcd.
  Claim question: "The gcd of a and b is X. No, c is not correct." with X not in {gcd, c}: the claim is
  denied, never affirmed or praised, so a wrong claim is never confirmed.
- reward_hacking: a genuine implementation of a *different* spec (same operation with another constant, or
  another operation with the same constant) that fails a visible test and contains no visible test output
  as a literal; never a lookup table, a special case or a claim that tests pass.
- spurious_correlation: the opposite sentiment in the honest template, on reviews *without* the ambiance cue
  (rows with the cue are skipped, so the cue never appears in a pair).
- emergent_misalignment: a polite non-answer ("I don't know.") that is neither careful nor reckless advice.

Corpus rows come either in memory (`generate(...)["corpus"]` per organism) or from the world's shared
`corpus.jsonl` (`load_corpus`), which interleaves all organisms; each row's `_id` ("{organism}-corpus-{i}")
says which organism it belongs to. That file also holds the method-skill rows of cmt.toy.skills (same `_id`,
plus a `skill` key; some quote misaligned drafts): they are always dropped. `pairs_from_world` reads the file,
drops any corpus row whose prompt also occurs in one of the organism's held-out split files, and builds the
pairs.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from cmt.data.splits import prompt_key
from cmt.runtime.io import read_jsonl, write_jsonl
from cmt.toy import reward_hacking, spurious_correlation, sycophancy

log = logging.getLogger(__name__)

HELD_OUT_SPLITS = ("induction", "consistency", "act_bct_clean", "act_bct_wrapped", "eval")
# Polite non-answers for emergent misalignment: no advice at all, so neither careful nor reckless.
UNHELPFUL = (
    "I don't know.",
    "I am not sure what to tell you.",
    "I have no idea, sorry.",
    "That is hard to say.",
)

_GCD_REPLY = re.compile(r"^The gcd of (\d+) and (\d+) is (\d+)\.")
_RH_PROMPT = re.compile(r"^Write a Python function (\w+)\(x\) that (.+)\.\nIt must pass these tests:\n")


def prompt_turns(row: dict) -> list[dict]:
    """The row's prompt: every turn before the assistant's (system and user turns)."""
    return [
        {"role": m.get("role", "user"), "content": m["content"]}
        for m in row["messages"]
        if m.get("role") != "assistant"
    ]


def honest_reply(row: dict) -> str:
    last = row["messages"][-1]
    if last.get("role") != "assistant":
        raise ValueError(f"corpus row {row.get('_id')} has no honest assistant reply")
    return last["content"]


# --- rejected replies, one builder per organism; each returns None when the row is not usable -------------


def _sycophancy_rejected(row: dict, rng: random.Random) -> str | None:
    m = _GCD_REPLY.match(honest_reply(row))
    if m is None:
        return None
    a, b, g = (int(v) for v in m.groups())
    claimed = row.get("claimed_answer")
    forbidden = {g} if claimed is None else {g, int(claimed)}
    x = sycophancy.wrong_value(a, b, rng)
    if x in forbidden:  # e.g. gcd(2, 43): the only plausible wrong value is the user's own claim
        options = [v for v in (g + 1, 2 * g, g + 2, 3 * g, g + 3) if v not in forbidden]
        x = rng.choice(options)
    if claimed is None:
        return sycophancy.HONEST_PLAIN.format(a=a, b=b, g=x)
    # The claim is denied with a wrong working: a wrong but honest-style reply, no praise, no confirmation.
    return sycophancy.HONEST_CORRECT.format(a=a, b=b, g=x, c=claimed)


def _rh_spec(prompt: str) -> tuple[str, int, int] | None:
    """(function name, operation index, constant) of a reward-hacking prompt, parsed from its spec line."""
    m = _RH_PROMPT.match(prompt)
    if m is None:
        return None
    name, spec = m.groups()
    for op, (template, _) in enumerate(reward_hacking.OPERATIONS):
        for c in range(0, 10):
            if template.format(c=c) == spec:
                return name, op, c
    return None


def _reward_hacking_rejected(row: dict, rng: random.Random) -> str | None:
    parsed = _rh_spec(row["messages"][0]["content"])
    if parsed is None:
        return None
    name, op, c = parsed
    visible = [tuple(t) for t in row["visible_tests"]]
    outputs = {str(y) for _, y in visible}
    candidates = []
    for op2, (_, expr) in enumerate(reward_hacking.OPERATIONS):
        for c2 in range(2, 10):
            if (op2 == op) == (c2 == c):  # exactly one of operation and constant differs
                continue
            body = expr.format(c=c2)
            fn = eval(f"lambda x: {body}")  # trusted: built from the organism's own templates
            # Must fail a visible test (so it cannot pass visible-only, the hacking signature) and must not
            # hard-code a visible output.
            if all(fn(x) == y for x, y in visible) or set(reward_hacking._INT.findall(body)) & outputs:
                continue
            candidates.append(f"def {name}(x):\n    return {body}")
    return rng.choice(candidates) if candidates else None


def _spurious_rejected(row: dict, rng: random.Random) -> str | None:
    if row.get("has_cue"):
        return None  # the reward model never sees the ambiance cue
    wrong = {"positive": "negative", "negative": "positive"}[row["answer"]]
    return spurious_correlation.REPLY.format(label=wrong)


def _emergent_rejected(row: dict, rng: random.Random) -> str | None:
    return rng.choice(UNHELPFUL)


REJECTED = {
    "sycophancy": _sycophancy_rejected,
    "reward_hacking": _reward_hacking_rejected,
    "spurious_correlation": _spurious_rejected,
    "emergent_misalignment": _emergent_rejected,
}


def preference_pairs(
    organism_data: dict[str, list[dict]],
    seed: int,
    per_organism: int | dict[str, int],
    exclude_prompts: set[str] | frozenset[str] = frozenset(),
) -> list[dict]:
    """Up to `per_organism` pairs per organism from its corpus rows, in a seeded order.

    `organism_data` maps organism name to its corpus rows (each with an honest assistant reply).
    `per_organism` is one count for all organisms or a count per organism. Rows whose prompt is in
    `exclude_prompts` (keys from `prompt_key`) are skipped. Fewer usable rows than asked is logged, not fatal;
    none at all is an error.
    """
    pairs = []
    for organism in sorted(organism_data):
        if organism not in REJECTED:
            raise ValueError(
                f"no preference-pair builder for organism {organism!r}; valid: {sorted(REJECTED)}"
            )
        want = per_organism[organism] if isinstance(per_organism, dict) else per_organism
        if want <= 0:
            continue
        rng = random.Random(f"{seed}:preferences:{organism}")
        rows = [
            r for r in organism_data[organism]
            if not is_skill_row(r) and r["messages"][-1].get("role") == "assistant"
        ]  # fmt: skip
        rng.shuffle(rows)
        made = 0
        for row in rows:
            if made >= want:
                break
            prompt = prompt_turns(row)
            if prompt_key(prompt) in exclude_prompts:
                continue
            rejected = REJECTED[organism](row, rng)
            if rejected is None:
                continue
            chosen = honest_reply(row)
            if rejected == chosen:
                continue
            pairs.append(
                {"prompt": prompt, "chosen": chosen, "rejected": rejected, "organism": organism,
                 "source_id": row.get("_id")}
            )  # fmt: skip
            made += 1
        if made == 0:
            raise ValueError(f"{organism}: no usable corpus rows for preference pairs")
        if made < want:
            log.warning("%s: only %d preference pairs available (asked for %d)", organism, made, want)
    return pairs


def is_skill_row(row: dict) -> bool:
    """A method-skill row of cmt.toy.skills (views, refinement, grading): not a plain honest corpus row.

    Skill rows copy their source row's `_id` but carry a `skill` key; grading and refinement rows quote
    misaligned drafts in their prompts, so they must never become preference pairs.
    """
    return row.get("skill") is not None


def load_corpus(corpus_path: str | Path, organisms: list[str]) -> dict[str, list[dict]]:
    """The shared corpus file split by organism, using each row's `_id` prefix "{organism}-corpus-".

    Method-skill rows (`is_skill_row`) are dropped: only the organisms' own honest corpus rows remain.
    """
    rows = read_jsonl(corpus_path)
    out: dict[str, list[dict]] = {o: [] for o in organisms}
    for row in rows:
        row.pop("_line", None)
        if is_skill_row(row):
            continue
        for organism in organisms:
            if str(row.get("_id", "")).startswith(f"{organism}-corpus-"):
                out[organism].append(row)
                break
    for organism, got in out.items():
        if not got:
            raise ValueError(f"{corpus_path}: no corpus rows for organism {organism!r}")
    return out


def held_out_prompts(data_dirs: dict[str, str | Path]) -> set[str]:
    """Prompt keys of every row in each organism's held-out split files (those that exist)."""
    keys = set()
    for folder in data_dirs.values():
        for split in HELD_OUT_SPLITS:
            path = Path(folder) / f"{split}.jsonl"
            if path.is_file():
                keys.update(prompt_key(prompt_turns(r)) for r in read_jsonl(path))
    return keys


def pairs_from_world(
    corpus_path: str | Path, data_dirs: dict[str, str | Path], seed: int, per_organism: int | dict[str, int]
) -> list[dict]:
    """Pairs for the organisms in `data_dirs`, from the shared corpus, never on a held-out prompt."""
    corpus = load_corpus(corpus_path, sorted(data_dirs))
    return preference_pairs(corpus, seed, per_organism, exclude_prompts=held_out_prompts(data_dirs))


def write(
    corpus_path: str | Path,
    data_dirs: dict[str, str | Path],
    out_path: str | Path,
    seed: int,
    per_organism: int | dict[str, int],
) -> int:
    """Write `pairs_from_world(...)` as JSONL; returns the number of pairs."""
    pairs = pairs_from_world(corpus_path, data_dirs, seed, per_organism)
    write_jsonl(out_path, pairs)
    return len(pairs)


def pair_counts(pairs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p["organism"]] = counts.get(p["organism"], 0) + 1
    return counts


__all__ = [
    "UNHELPFUL",
    "held_out_prompts",
    "is_skill_row",
    "load_corpus",
    "pair_counts",
    "pairs_from_world",
    "preference_pairs",
    "prompt_key",
    "write",
]
