"""The numeric path of this machine: what decides how a CPU run rounds, recorded so a result can be traced to it.

bf16 training on the CPU runs its matrix products on oneDNN kernels chosen by the processor: AMX tiles on Intel
Xeons since Sapphire Rapids, AVX512-BF16 instructions on AMD EPYC since Zen 4 (and on Intel with AMX capped by
ONEDNN_MAX_CPU_ISA), slow emulation elsewhere. The kernels round differently, and over a pretraining run the toy
base and its organisms come out as different models, much as another seed would (docs/toy-results.md, "Other
CPUs"). Same machine, config and seed still give the same numbers. Emulated bf16 matrix products are 20 to 100
times slower than float32 ones, so training's `bf16: auto` (`autocast_bf16`) turns autocast on only where they
are native.
"""

from __future__ import annotations

import functools
import os
import platform
import sys

# ONEDNN_MAX_CPU_ISA values (oneDNN's names) that still admit AMX, those that admit bf16 instructions but not AMX,
# and those below bf16. A value oneDNN does not know is ignored by it, so it counts as no cap.
AMX_CAPS = frozenset({"AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16",
                      "AVX10_2_512_AMX_2", "ALL", "DEFAULT"})  # fmt: skip
BF16_CAPS = frozenset({"AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_2_512"})
BELOW_BF16_CAPS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                             "AVX512_CORE_VNNI"})  # fmt: skip


@functools.lru_cache(maxsize=4)
def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in `path`; (platform.processor(), {}) where it cannot be read
    (not Linux)."""
    model, flags = "", frozenset()
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor(), flags


def bf16_matmul_kernels(flags: frozenset[str], max_isa: str | None) -> str:
    """Which kernels oneDNN runs a bf16 matrix product on: "amx", "avx512_bf16" or "emulated" (no bf16
    instructions, or capped below them). Unknown cap names count as no cap, as oneDNN ignores them."""
    cap = (max_isa or "").strip().upper()
    known = cap in AMX_CAPS | BF16_CAPS | BELOW_BF16_CAPS
    if "amx_bf16" in flags and (not known or cap in AMX_CAPS):
        return "amx"
    if "avx512_bf16" in flags and (not known or cap not in BELOW_BF16_CAPS):
        return "avx512_bf16"
    return "emulated"


def numeric_path() -> dict:
    """This process's numeric path: CPU model, bf16 matmul kernels, ATen's vector level (when torch is already
    imported; None otherwise, so that recording it never costs the import) and the variables that cap them."""
    model, flags = cpu_info()
    torch = sys.modules.get("torch")
    return {
        "cpu": model,
        "machine": platform.machine(),
        "bf16_matmul": bf16_matmul_kernels(flags, os.environ.get("ONEDNN_MAX_CPU_ISA")),
        "aten_capability": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
    }


def native_bf16(device_type: str) -> bool:
    """Whether bf16 matrix products run natively here: a CUDA GPU that supports bf16, or a CPU with AMX or
    AVX512-BF16 kernels that ONEDNN_MAX_CPU_ISA does not cap off. Any other device counts as emulated."""
    if device_type == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        return bf16_matmul_kernels(cpu_info()[1], os.environ.get("ONEDNN_MAX_CPU_ISA")) != "emulated"
    return False


def autocast_bf16(setting: bool | str, device_type: str) -> bool:
    """A training setting `bf16` (true, false or "auto") as the autocast it gives on this device: auto is bf16
    where its matrix products are native (`native_bf16`), float32 elsewhere. Which one a job took follows from
    the numeric path its manifest records (bf16_matmul), and its log says it."""
    if setting == "auto":
        return native_bf16(device_type)
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"bf16 must be true, false or auto, not {setting!r}")
