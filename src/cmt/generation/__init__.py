"""Generation and scoring engine: one narrow `Generator` interface, an HF backend and (on GPUs) vLLM."""

from cmt.generation.base import Completion, Generator, SamplingParams, SequenceScore, derive_seed

__all__ = ["Completion", "Generator", "SamplingParams", "SequenceScore", "derive_seed", "make_generator"]


def make_generator(backend: str, **kwargs) -> Generator:
    """Build the generator named by config `generation.backend`."""
    if backend == "hf":
        from cmt.generation.hf import HFGenerator

        return HFGenerator(**kwargs)
    raise ValueError(f"unknown generation backend {backend!r}; valid: ['hf']")
