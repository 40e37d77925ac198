"""Diverse (dual) decoding: greedy + k nucleus samples + the top beam, reranked by an external reward model.

k counts the nucleus samples, so each prompt has k + 2 candidates, in the order greedy, samples, beam.
"""

from __future__ import annotations

from cmt.generation import SamplingParams, derive_seed
from cmt.methods import Candidate, LabelContext, greedy_params, sample_params
from cmt.methods.registry import MethodSpec
from cmt.methods.rejection_sampling import select_by_reward

SPEC = MethodSpec("dual_decoding", "label_generation", selects=True, uses_reward_model=True)


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    prompts = [e.prompt for e in examples]
    greedy = greedy_params(context, settings)
    nucleus = sample_params(context, settings)
    beam = SamplingParams(
        temperature=0.0, num_beams=settings["beam_width"], max_new_tokens=greedy.max_new_tokens
    )
    gen = context.generator
    greedy_out = gen.generate(prompts, 1, greedy, derive_seed(seed, SPEC.name, "greedy"))
    sample_out = gen.generate(prompts, k, nucleus, derive_seed(seed, SPEC.name, "nucleus"))
    beam_out = gen.generate(prompts, 1, beam, derive_seed(seed, SPEC.name, "beam"))
    candidates = [
        [
            Candidate(g[0], greedy, "greedy"),
            *(Candidate(c, nucleus, "sample") for c in s),
            Candidate(b[0], beam, "beam"),
        ]
        for g, s, b in zip(greedy_out, sample_out, beam_out, strict=True)
    ]
    return select_by_reward(context, examples, candidates)
