"""The default fast path: what each device gets, CPU bf16 detection, and that a path changes kernels, not maths."""

from __future__ import annotations

import pytest
import torch

from helpers import random_layout, random_model
from lungddpm import ConfigError
from lungddpm.model.fastpath import BF16_CPU_PATH, RELEASED_PATH, FastPath, pick_fast_path, running_on, set_attention
from lungddpm.model.unet import AttentionBlock
from lungddpm.runtime.precision import autocast, cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")


def test_native_bf16_detection_agrees_with_torchs_own_cpuinfo():
    """/proc/cpuinfo flags against torch's cpuinfo library (an independent reader of CPUID)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None or capabilities().get("architecture") != "x86_64":
        pytest.skip("torch.cpu.get_capabilities (torch >= 2.10, x86-64) is the reference")
    caps = capabilities()
    assert cpu_has_native_bf16() == bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def test_native_bf16_detection_reads_the_flags_line(tmp_path):
    with_flag, without, empty = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with_flag.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_fp16\nbugs\t\t: avx512_bf16\n")
    empty.write_text("")
    assert cpu_has_native_bf16(str(with_flag))
    assert not cpu_has_native_bf16(str(without)) and not cpu_has_native_bf16(str(empty))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_each_device_and_request_gets_its_path():
    auto_cpu = pick_fast_path(CPU)
    assert auto_cpu == (BF16_CPU_PATH if cpu_has_native_bf16() else FastPath("fp32", "legacy"))
    assert pick_fast_path(CPU, "fp32") == RELEASED_PATH
    assert pick_fast_path(CPU, "bf16") == BF16_CPU_PATH
    assert pick_fast_path(torch.device("cuda")) == FastPath("fp32", "sdpa")
    assert pick_fast_path(torch.device("cuda", 1), "fp16") == FastPath("fp16", "sdpa")
    assert RELEASED_PATH.provenance() == {"precision": "fp32", "attention": "legacy", "memory_layout": "contiguous"}
    with pytest.raises(ConfigError, match="precision 'fp8'.*auto"):
        pick_fast_path(CPU, "fp8")
    with pytest.raises(ConfigError, match="attention 'flash'"):
        set_attention(random_model(), "flash")


def test_autocast_resolves_auto_as_the_fast_path_does():
    """autocast(device, "auto") (what checks and samplers call) runs the precision pick_fast_path reports."""
    with autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") == (pick_fast_path(CPU).precision == "bf16")
    assert resolve_precision(torch.device("cuda"), "auto") == "fp32" and resolve_precision(CPU, "fp16") == "fp16"


def test_a_path_changes_kernels_not_results_and_is_undone_afterwards(one_thread):
    model = random_model(seed=3)
    cond, x_ref = random_layout()
    t = torch.tensor([5])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    with torch.no_grad():
        with running_on(model, RELEASED_PATH):
            assert not any(b.use_sdpa for b in blocks)
            released = model.predict_noise(x_ref, cond, t)
        with running_on(model, FastPath("fp32", "sdpa", "channels_last_3d")):
            assert all(b.use_sdpa for b in blocks)
            assert all(c.weight.is_contiguous(memory_format=torch.channels_last_3d) for c in convs)
            fast = model.predict_noise(x_ref, cond, t)
    assert all(b.use_sdpa for b in blocks)  # the model's own setting (config.attention "sdpa") again
    assert all(c.weight.is_contiguous() for c in convs)
    assert torch.allclose(fast, released, rtol=0, atol=1e-5 * released.abs().max().item())
