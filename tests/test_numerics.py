"""The machine's numeric path, recorded in manifests and the toy base's pretrain report."""

import pytest

from cmt.runtime.manifest import build_manifest
from cmt.runtime.numerics import bf16_matmul_kernels, cpu_info, numeric_path

SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
ZEN3 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(
    ("flags", "cap", "kernels"),
    [
        (SAPPHIRE_RAPIDS, None, "amx"),
        (SAPPHIRE_RAPIDS, "avx512_core_amx", "amx"),
        (SAPPHIRE_RAPIDS, "AVX512_CORE_BF16", "avx512_bf16"),  # AMX capped off: the Zen 4 instructions
        (SAPPHIRE_RAPIDS, "AVX2", "emulated"),
        (SAPPHIRE_RAPIDS, "NOT_AN_ISA", "amx"),  # oneDNN ignores a name it does not know
        (ZEN4, None, "avx512_bf16"),
        (ZEN4, "AVX512_CORE_AMX", "avx512_bf16"),  # a cap above what the CPU has changes nothing
        (ZEN3, None, "emulated"),
    ],
)
def test_bf16_kernels_follow_the_cpu_flags_and_the_onednn_cap(flags, cap, kernels):
    assert bf16_matmul_kernels(flags, cap) == kernels


def test_cpu_info_reads_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
    )
    assert cpu_info(str(cpuinfo)) == ("AMD EPYC 9R14", frozenset({"fpu", "avx2", "avx512_bf16"}))
    assert cpu_info(str(tmp_path / "missing"))[1] == frozenset()


def test_the_path_follows_the_environment_and_goes_into_every_manifest(monkeypatch):
    import torch

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    path = numeric_path()
    assert path["bf16_matmul"] == "emulated" and path["onednn_max_cpu_isa"] == "AVX2"
    assert path["aten_capability"] == torch.backends.cpu.get_cpu_capability()  # read once torch is imported
    assert build_manifest(task="t", settings={}, seeds={})["numerics"] == path


@pytest.mark.parametrize(
    ("flags", "cap", "native"),
    [
        (SAPPHIRE_RAPIDS, None, True),
        (ZEN4, None, True),
        (ZEN3, None, False),
        (SAPPHIRE_RAPIDS, "AVX2", False),
    ],
)
def test_auto_is_bf16_exactly_where_the_cpu_kernels_are_native(monkeypatch, flags, cap, native):
    from cmt.runtime import numerics

    monkeypatch.setattr(numerics, "cpu_info", lambda: ("a cpu", flags))
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert numerics.autocast_bf16("auto", "cpu") is native
    # an explicit setting is kept on any machine
    assert numerics.autocast_bf16(True, "cpu") is True and numerics.autocast_bf16(False, "cpu") is False
    assert numerics.autocast_bf16("auto", "mps") is False  # no device we know runs bf16 natively


def test_a_bf16_setting_that_is_not_true_false_or_auto_is_named():
    from cmt.runtime.numerics import autocast_bf16

    with pytest.raises(ValueError, match="bf16 must be true, false or auto, not 'yes'"):
        autocast_bf16("yes", "cpu")
