"""The precision a training step computes in, on a CPU or a GPU, and why it was chosen.

One autocast path for both devices: ``bf16`` runs the forward pass (and so its backward) in
``torch.autocast(device_type, dtype=torch.bfloat16)``, ``fp32`` in nothing. Under autocast the
convolutions, the head's matmul and the activations between them run in bfloat16; what bf16
would change in what is learned stays float32: parameters and their gradients (autocast casts
copies of the weights), the optimizers' state, the quantizer's b, e and its rounding
(elementwise ops, not on autocast's lists), the size term, the cross-entropy (``Step.loss``
takes ``logits.float()``) and BatchNorm's weights and running statistics (docs/method.md §3;
tests/test_precision.py checks them on a CPU).

``--precision auto`` is resolved with the preset (``trainer.config.auto_precision``). Whether
this CPU has bf16 units is read from ``torch.cpu.get_capabilities()`` (CPUID, via cpuinfo),
only to say so on the start line: auto stays fp32 on every CPU in this version (its parity
is measured, its speed on such a CPU not yet: docs/train.md, "Precision").
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

# torch.cpu.get_capabilities() keys of bfloat16 arithmetic units: x86 (AMX on Intel since
# Sapphire Rapids; AVX512-BF16 on Intel since Cooper Lake, AMD since Zen 4), then ARM64.
BF16_UNITS = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")


def native_bf16() -> list[str]:
    """The bfloat16 units this CPU reports, as get_capabilities() names them ([]: none)."""
    import torch

    capabilities = torch.cpu.get_capabilities()
    return [unit for unit in BF16_UNITS if capabilities.get(unit) is True]


def precision_words(precision: str, asked: str, device_type: str) -> str:
    """What a step computes in and why, for the start line: ``precision`` the resolved one
    (fp32 | bf16), ``asked`` what the config said before resolving (auto | fp32 | bf16)."""
    what = "bf16 autocast" if precision == "bf16" else "fp32"
    if device_type != "cpu":
        return f"{what} ({'auto: a GPU' if asked == 'auto' else 'asked'})"
    units = native_bf16()
    if asked != "auto":
        slower = ", but this CPU has no native bf16: 3-12x slower than fp32, docs/train.md" if (
            precision == "bf16" and not units) else ""
        return f"{what} (asked{slower})"
    if not units:
        return f"{what} (auto: this CPU has no native bf16)"
    return (f"{what} (auto: native bf16 here ({', '.join(units)}), but bf16 on CPUs waits for "
            "its speed measured on one, docs/train.md; --precision bf16 to use it)")


def autocast_for(device_type: str, precision: str, graphs: bool = False) -> Callable:
    """The context a step's forward pass (and the test pass) runs in: bf16 autocast on
    ``device_type`` (cpu | cuda), or nothing for fp32. A captured step (``graphs``) casts
    afresh at every replay: autocast's cache stays off."""
    import torch

    if precision == "fp32":
        return nullcontext
    if precision != "bf16":
        raise ValueError(f"precision must be fp32 or bf16 once resolved, got {precision!r}")
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=not graphs)
