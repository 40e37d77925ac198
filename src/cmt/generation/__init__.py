"""Generation and scoring engine: one narrow `Generator` interface, an HF backend and (on GPUs) vLLM."""

from cmt.generation.base import Completion, Generator, SamplingParams, SequenceScore, derive_seed

__all__ = [
    "Completion",
    "Generator",
    "SamplingParams",
    "SequenceScore",
    "derive_seed",
    "load_generator",
    "make_generator",
]


def make_generator(backend: str, **kwargs) -> Generator:
    """Build the generator named by config `generation.backend`."""
    if backend == "hf":
        from cmt.generation.hf import HFGenerator

        return HFGenerator(**kwargs)
    raise ValueError(f"unknown generation backend {backend!r}; valid: ['hf']")


def load_generator(model_dir: str, adapter: str | None, model_settings: dict, desc: str) -> Generator:
    """The base model (with the adapter merged, if any) behind the configured backend."""
    from cmt.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=model_settings["dtype"], adapter=adapter, merge=True)
    return make_generator(
        model_settings["backend"],
        model=model,
        tokenizer=tokenizer,
        batch_size=model_settings["batch_size"],
        desc=desc,
    )
