"""Loading base models, tokenizers and LoRA adapters from local directories (never from a hub at run time)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from cmt.runtime.runlog import timed

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: int | None) -> None:
    """Match torch's intra-op threads to the cores Snakemake gave the job."""
    if threads and threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@timed("load")
def load_tokenizer(model_dir: str | os.PathLike):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ValueError(f"{model_dir}: tokenizer has no chat template; cmt renders every prompt with one")
    return tok


def bnb_config(quantization: dict):
    """transformers' BitsAndBytesConfig from a model's `quantization` config block (QLoRA)."""
    from transformers import BitsAndBytesConfig

    settings = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
                "bnb_4bit_use_double_quant": True, **quantization}  # fmt: skip
    settings["bnb_4bit_compute_dtype"] = DTYPES[settings["bnb_4bit_compute_dtype"]]
    return BitsAndBytesConfig(**settings)


def base_load_args(settings: dict) -> dict:
    """load_model's keywords from a job's model settings: dtype, the QLoRA block and the attention kernel."""
    return {
        "dtype": settings["dtype"],
        "quantization": settings.get("quantization"),
        "attn_implementation": settings.get("attn_implementation"),
    }


@timed("load")
def load_model(
    model_dir: str | os.PathLike,
    dtype: str = "float32",
    adapter: str | os.PathLike | None = None,
    trainable_adapter: bool = False,
    merge: bool = False,
    quantization: dict | None = None,
    attn_implementation: str | None = None,
):
    """Base model from `model_dir`, optionally with a LoRA adapter (trainable, merged or plain).

    `attn_implementation` (None: transformers' choice) picks the attention kernel, as in `from_pretrained`.

    `quantization` (QLoRA, training only): the frozen base is loaded in 4 bits by bitsandbytes onto this
    process's GPU, and prepared for k-bit training (norms in float32, gradient checkpointing, input gradients).
    """
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    attention = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if quantization:
        if merge:
            raise ValueError("a quantized base is for training; generation loads the unquantized weights")
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"{model_dir}: quantization (QLoRA, bitsandbytes 4-bit) needs a CUDA GPU, and this process has "
                "none; run the training jobs on a GPU node or remove models.<name>.quantization"
            )
        from peft import prepare_model_for_kbit_training

        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir),
            dtype=DTYPES[dtype],
            quantization_config=bnb_config(quantization),
            device_map={"": torch.cuda.current_device()},
            **attention,
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=DTYPES[dtype], **attention)
        model.to(pick_device())
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable_adapter)
        if merge and not trainable_adapter:
            model = model.merge_and_unload()
    return model
