"""Settings -> vLLM arguments (for cmt.generation.vllm_backend): pure functions that never import vllm.

They map the model config's generation.vllm block, a LoRA adapter directory and the project's SamplingParams
onto the keyword arguments of vllm.LLM, vllm.lora.request.LoRARequest, vllm.SamplingParams and
vllm.sampling_params.BeamSearchParams, and are unit-tested without vllm (tests/test_generation_vllm.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from cmt.generation.base import SamplingParams, derive_seed

# vLLM's LoRAConfig.max_lora_rank is a Literal of these values (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# Defaults of the model config's generation.vllm block (workflow/schemas/config.schema.yaml).
DEFAULT_VLLM_SETTINGS = {
    "gpu_memory_utilization": 0.9,
    # The reference caps vLLM at 0.4 when an 8B reward model is loaded next to it on the same GPU.
    "gpu_memory_utilization_shared": 0.4,
    "max_model_len": None,
    "enforce_eager": False,
    "max_lora_rank": None,
}

# Per-request seeds stay below 2**62: vLLM gives the i-th of n child requests seed + i, and torch seeds
# must fit in 64 bits.
_SEED_MASK = (1 << 62) - 1


def vllm_settings(model_settings: dict) -> dict:
    """The model's generation.vllm block with defaults filled in; unknown keys are errors."""
    given = model_settings.get("vllm") or {}
    unknown = sorted(set(given) - set(DEFAULT_VLLM_SETTINGS))
    if unknown:
        raise ValueError(
            f"config key generation.vllm: unknown key(s) {unknown}; allowed: {sorted(DEFAULT_VLLM_SETTINGS)}"
        )
    return {**DEFAULT_VLLM_SETTINGS, **given}


def vllm_lora_rank(adapter_rank: int) -> int:
    """The smallest rank vLLM accepts for `max_lora_rank` that holds an adapter of rank `adapter_rank`."""
    if adapter_rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {adapter_rank}")
    for rank in VLLM_LORA_RANKS:
        if rank >= adapter_rank:
            return rank
    raise ValueError(f"LoRA rank {adapter_rank} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def read_adapter_rank(adapter_dir: str | os.PathLike) -> int:
    """The largest LoRA rank in a PEFT adapter directory (its `r`, or a larger per-module `rank_pattern`)."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter config not found")
    config = json.loads(path.read_text())
    if not isinstance(config.get("r"), int):
        raise ValueError(f"{path}: key 'r' (the LoRA rank) is missing or not an integer")
    pattern = config.get("rank_pattern") or {}
    return max([config["r"], *(int(r) for r in pattern.values())])


def lora_int_id(adapter_dir: str | os.PathLike) -> int:
    """A stable positive id for an adapter: the same resolved path gives the same id in every process."""
    digest = hashlib.sha256(str(Path(adapter_dir).resolve()).encode()).digest()
    return 1 + (int.from_bytes(digest[:4], "big") >> 1)


def lora_request_kwargs(adapter_dir: str | os.PathLike) -> dict:
    """Arguments of vllm.lora.request.LoRARequest for one adapter directory."""
    path = str(Path(adapter_dir).resolve())
    return {"lora_name": path, "lora_int_id": lora_int_id(path), "lora_path": path}


def gpu_memory_utilization(settings: dict, shares_gpu: bool) -> float:
    """vLLM's share of GPU memory: lower when a reward model is loaded onto the same GPU."""
    value = settings["gpu_memory_utilization_shared" if shares_gpu else "gpu_memory_utilization"]
    if not 0 < value <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {value}")
    return float(value)


def engine_kwargs(
    model_dir: str | os.PathLike,
    settings: dict,
    gpus: int,
    adapter_rank: int | None,
    shares_gpu: bool,
) -> dict:
    """Arguments of vllm.LLM for one model.

    `settings` is the job's model settings (dtype and the generation.vllm block). LoRA is enabled when an
    adapter is served or generation.vllm.max_lora_rank is set (so a base-model evaluation and the adapter
    evaluations after it share one engine); max_lora_rank covers the larger of the two.
    """
    vs = vllm_settings(settings)
    kwargs = {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "dtype": settings["dtype"],
        "tensor_parallel_size": max(1, int(gpus)),
        "gpu_memory_utilization": gpu_memory_utilization(vs, shares_gpu),
        "enable_prefix_caching": True,  # k samples, views and refinements share their prompts
        "enforce_eager": bool(vs["enforce_eager"]),
        "seed": 0,  # every sampled request carries its own seed (request_seed)
    }
    if vs["max_model_len"] is not None:
        kwargs["max_model_len"] = int(vs["max_model_len"])
    ranks = [r for r in (adapter_rank, vs["max_lora_rank"]) if r is not None]
    if ranks:
        kwargs.update(enable_lora=True, max_lora_rank=vllm_lora_rank(max(ranks)), max_loras=1)
    else:
        kwargs["enable_lora"] = False
    return kwargs


def request_seed(seed: int, index: int) -> int:
    """The seed of the request for prompt `index`: independent of batching and of the other prompts."""
    return derive_seed(seed, "vllm", index) & _SEED_MASK


def to_vllm_sampling_kwargs(
    params: SamplingParams,
    n: int,
    seed: int | None,
    stop_token_ids: Sequence[int] = (),
    logprobs: int | None = 0,
) -> dict:
    """Arguments of vllm.SamplingParams for one request (greedy or nucleus sampling; not beam search).

    `logprobs=0` asks for the log-prob of each sampled token (vLLM always returns the chosen token's).
    """
    if params.num_beams > 1:
        raise ValueError("num_beams > 1 is beam search: use beam_search_kwargs / LLM.beam_search")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    kwargs = {
        "n": n,
        "max_tokens": params.max_new_tokens,
        "stop_token_ids": list(stop_token_ids),
        "skip_special_tokens": True,
        "logprobs": logprobs,
    }
    if params.greedy:
        kwargs["temperature"] = 0.0
    else:
        # vLLM applies no top-k by default, matching the HF backend's top_k=0.
        kwargs.update(temperature=params.temperature, top_p=params.top_p, seed=seed)
    return kwargs


def beam_search_kwargs(params: SamplingParams, n: int) -> dict:
    """Arguments of vllm.sampling_params.BeamSearchParams (HF's defaults: length penalty 1, greedy beams)."""
    if params.num_beams < 2:
        raise ValueError(f"beam search needs num_beams >= 2, got {params.num_beams}")
    if not 1 <= n <= params.num_beams:
        raise ValueError(f"beam search returns 1..num_beams={params.num_beams} sequences, got n={n}")
    return {
        "beam_width": params.num_beams,
        "max_tokens": params.max_new_tokens,
        "temperature": 0.0,
        "length_penalty": 1.0,
    }


def scoring_sampling_kwargs() -> dict:
    """Arguments of vllm.SamplingParams for teacher-forced scoring: log-probs of every prompt token.

    `prompt_logprobs=0` returns the log-prob of each actual prompt token (no top-k alternatives); vLLM must
    generate at least one token, which is discarded.
    """
    return {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
