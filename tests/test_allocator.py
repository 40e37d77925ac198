"""The jobs' allocator (cmt.runtime.allocator): which library the config picks, how LD_PRELOAD is built, and that
tcmalloc changes no number: a LoRA training run and a greedy decode give the same bytes under both allocators."""

import os
import subprocess
import sys

import pytest

from cmt.runtime import allocator

TCMALLOC = allocator.find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(
    TCMALLOC is None, reason="no tcmalloc here (apt install libtcmalloc-minimal4)"
)


def test_auto_takes_tcmalloc_where_found_and_the_system_allocator_otherwise(monkeypatch):
    libraries = {"tcmalloc": "libtcmalloc.so.4"}
    monkeypatch.setattr(allocator.ctypes.util, "find_library", libraries.get)
    assert allocator.preload_library("auto") == allocator.preload_library("tcmalloc") == "libtcmalloc.so.4"
    libraries["tcmalloc_minimal"] = "libtcmalloc_minimal.so.4"  # the minimal library first
    assert allocator.preload_library("auto") == "libtcmalloc_minimal.so.4"
    assert allocator.preload_library("system") is None
    libraries.clear()
    assert allocator.preload_library("auto") is None
    with pytest.raises(
        allocator.AllocatorError, match=r"config key allocator: tcmalloc, but no tcmalloc .*apt install"
    ):
        allocator.preload_library("tcmalloc")
    with pytest.raises(allocator.AllocatorError, match=r"'jemalloc' is not allowed; valid values"):
        allocator.preload_library("jemalloc")


def test_conda_and_container_rules_keep_their_own_libraries_unless_tcmalloc_is_required(monkeypatch):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", {"tcmalloc_minimal": "libtcm.so.4"}.get)
    assert allocator.preload_library("auto", own_software=True) is None
    assert allocator.preload_library("tcmalloc", own_software=True) == "libtcm.so.4"


def test_the_library_goes_first_in_ld_preload_once_and_keeps_the_rest():
    assert allocator.with_preload(None, "libt.so") == "libt.so"
    assert allocator.with_preload("liba.so libt.so:libb.so", "libt.so") == "libt.so:liba.so:libb.so"
    assert allocator.with_preload("liba.so", None) == "liba.so"
    assert allocator.shell_export(None) == ""

    def shell(env_value):  # the statement as a job's shell runs it, after `set -euo pipefail`
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        if env_value is not None:
            env["LD_PRELOAD"] = env_value
        script = "set -euo pipefail; " + allocator.shell_export("libnot-there.so") + 'printf %s "$LD_PRELOAD"'
        proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert shell(None) == "libnot-there.so"
    assert shell("liba.so") == "libnot-there.so:liba.so"


WORKLOAD = r"""
import hashlib, sys, warnings
import torch
from cmt.runtime.allocator import in_use
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0)
config._attn_implementation = "eager"
model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
def weights():
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().numpy().tobytes())
    return digest
before = weights().hexdigest()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
data = torch.randint(1, 300, (64, 24), generator=torch.Generator().manual_seed(1))
for step in range(12):
    batch = data[(step % 4) * 16:(step % 4 + 1) * 16]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
digest = weights()
with torch.no_grad():
    out = model.generate(input_ids=data[:8, :6], max_new_tokens=16, do_sample=False)
digest.update(out.numpy().tobytes())
print(in_use(), before, digest.hexdigest(), float(loss))
"""


def _run_workload(preload: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    proc = subprocess.run(
        [sys.executable, "-c", WORKLOAD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@needs_tcmalloc
def test_tcmalloc_changes_no_number_of_a_training_run_and_a_decode():
    system, *system_result = _run_workload(None)
    tcmalloc, *tcmalloc_result = _run_workload(TCMALLOC)
    assert (system, tcmalloc) == ("system", "tcmalloc")  # the preload took, and in_use sees it
    before, after, _ = system_result
    assert before != after  # the digest covers the trained weights and the decode
    assert tcmalloc_result == system_result
