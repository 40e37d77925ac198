"""Generation and scoring engine: one narrow `Generator` interface, an HF backend and (on GPUs) vLLM
(cmt.generation.vllm_backend, an optional extra)."""

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
    if backend == "vllm":
        from cmt.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator(**kwargs)
    raise ValueError(f"unknown generation backend {backend!r}; valid: ['hf', 'vllm']")


def load_generator(
    model_dir: str, adapter: str | None, model_settings: dict, desc: str, shares_gpu: bool = False
) -> Generator:
    """The base model behind the configured backend: hf merges the adapter, if any, into the weights; vllm
    serves it unmerged as a LoRA request. `shares_gpu` (a reward model on the same GPU) lowers vLLM's share of
    GPU memory."""
    if model_settings["backend"] == "vllm":
        from cmt.generation.vllm_backend import load_vllm_generator

        return load_vllm_generator(model_dir, adapter, model_settings, desc, shares_gpu=shares_gpu)
    from cmt.models.loading import base_load_args, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, adapter=adapter, merge=True, **base_load_args(model_settings))
    return make_generator(
        model_settings["backend"],
        model=model,
        tokenizer=tokenizer,
        batch_size=model_settings["batch_size"],
        desc=desc,
        reply_format=model_settings.get("reply_format", "plain"),
    )
