"""Self-certainty: sample k replies and keep the one the organism is most certain of.

`score: mean_logprob` (the reference) is the mean token log-probability of the sample under the untempered
model. `score: kl_uniform` is the self-certainty of Kang et al.: the mean over positions of the KL divergence
of the next-token distribution from uniform, from a teacher-forced pass.
"""

from __future__ import annotations

from cmt.methods import Candidate, LabelContext, argmax_first, candidate_rows, sample_params
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("self_certainty", "label_generation", selects=True)


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    params = sample_params(context, settings)
    prompts = [e.prompt for e in examples]
    samples = context.generator.generate(prompts, k, params, seed)
    flat_prompts = [p for p, cands in zip(prompts, samples, strict=True) for _ in cands]
    flat_texts = [c.text for cands in samples for c in cands]
    scored = context.generator.score(flat_prompts, flat_texts)
    attr = {"mean_logprob": "logprob_mean", "kl_uniform": "kl_uniform_mean"}[settings["score"]]
    rows, pos = [], 0
    for example, cands in zip(examples, samples, strict=True):
        scores = [getattr(s, attr) for s in scored[pos : pos + len(cands)]]
        pos += len(cands)
        candidates = [Candidate(c, params, "sample", s) for c, s in zip(cands, scores, strict=True)]
        rows.extend(candidate_rows(example, candidates, argmax_first(scores)))
    return rows
