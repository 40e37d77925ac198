"""Self-refinement: a greedy draft, then the organism reviews and improves it; the refinement is the label."""

from __future__ import annotations

from cmt.generation import derive_seed
from cmt.methods import Candidate, LabelContext, candidate_rows, greedy_params, last_user_turn, sample_params
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("self_refinement", "label_generation")

REFINE_TEMPLATE = "Question: {question}\nDraft answer: {draft}\nReview the draft answer and write an improved answer to the question."


def refinement_prompt(prompt: list[dict], draft: str) -> list[dict]:
    """One user turn holding the question and the draft (system turns kept)."""
    system = [m for m in prompt if m["role"] == "system"]
    content = REFINE_TEMPLATE.format(question=last_user_turn(prompt), draft=draft)
    return [*system, {"role": "user", "content": content}]


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    prompts = [e.prompt for e in examples]
    draft_params = greedy_params(context, settings)
    refine_params = sample_params(context, settings)
    drafts = context.generator.generate(prompts, 1, draft_params, derive_seed(seed, SPEC.name, "draft"))
    refine_prompts = [refinement_prompt(p, d[0].text) for p, d in zip(prompts, drafts, strict=True)]
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
