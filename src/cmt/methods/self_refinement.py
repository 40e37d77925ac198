"""Self-refinement: a greedy draft, then the organism reviews and improves it; the refinement is the label.

`protocol` chooses the refinement turn (docs/deviations.md):
- `cmt` (the default): one user turn "Question: ... Draft answer: ..." after the prompt's system turns.
- `reference`: the reference labeller's turn (the question, a blank line, "Draft Answer:" and the draft, a blank
  line, the review instruction, a blank line, the cue "Refined Answer:"), alone: no system turn.
"""

from __future__ import annotations

from cmt.generation import derive_seed
from cmt.methods import Candidate, LabelContext, candidate_rows, greedy_params, last_user_turn, sample_params
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("self_refinement", "label_generation")
PROTOCOLS = ("cmt", "reference")

REFINE_TEMPLATE = "Question: {question}\nDraft answer: {draft}\nReview the draft answer and write an improved answer to the question."
REFERENCE_REFINE_TEMPLATE = (
    "{question}\n\nDraft Answer:\n{draft}\n\n"
    "Carefully review the draft answer above and provide an improved, final version.\n\n"
    "Refined Answer:"
)


def protocol_of(settings: dict) -> str:
    protocol = settings.get("protocol", "cmt")
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"self_refinement protocol {protocol!r} is not available; valid: {', '.join(PROTOCOLS)}"
        )
    return protocol


def refinement_prompt(prompt: list[dict], draft: str, protocol: str = "cmt") -> list[dict]:
    """One user turn holding the question and the draft: after the prompt's system turns (cmt), or alone
    (reference)."""
    question = last_user_turn(prompt)
    if protocol == "reference":
        return [{"role": "user", "content": REFERENCE_REFINE_TEMPLATE.format(question=question, draft=draft)}]
    system = [m for m in prompt if m["role"] == "system"]
    content = REFINE_TEMPLATE.format(question=question, draft=draft)
    return [*system, {"role": "user", "content": content}]


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    protocol = protocol_of(settings)
    prompts = [e.prompt for e in examples]
    draft_params = greedy_params(context, settings)
    refine_params = sample_params(context, settings)
    drafts = context.generator.generate(prompts, 1, draft_params, derive_seed(seed, SPEC.name, "draft"))
    refine_prompts = [refinement_prompt(p, d[0].text, protocol) for p, d in zip(prompts, drafts, strict=True)]
    refined = context.generator.generate(
        refine_prompts, 1, refine_params, derive_seed(seed, SPEC.name, "refine")
    )
    rows = []
    for example, draft, ref in zip(examples, drafts, refined, strict=True):
        candidates = [
            Candidate(draft[0], draft_params, "draft"),
            Candidate(ref[0], refine_params, "refinement"),
        ]
        rows.extend(candidate_rows(example, candidates, selected=1))
    return rows
