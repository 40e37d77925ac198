"""Loading base models, tokenizers and LoRA adapters from local directories (never from a hub at run time)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: int | None) -> None:
    """Match torch's intra-op threads to the cores Snakemake gave the job."""
    if threads and threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def load_tokenizer(model_dir: str | os.PathLike):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ValueError(f"{model_dir}: tokenizer has no chat template; cmt renders every prompt with one")
    return tok


def load_model(
    model_dir: str | os.PathLike,
    dtype: str = "float32",
    adapter: str | os.PathLike | None = None,
    trainable_adapter: bool = False,
    merge: bool = False,
):
    """Base model from `model_dir`, optionally with a LoRA adapter (trainable, merged or plain)."""
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=DTYPES[dtype])
    model.to(pick_device())
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable_adapter)
        if merge and not trainable_adapter:
            model = model.merge_and_unload()
    return model
