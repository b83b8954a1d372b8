"""The integer ONNX, ``model.int8.onnx``: the dense network for onnxruntime's int8 kernels.

The graph is ``model.onnx`` in QDQ form (QuantizeLinear/DequantizeLinear pairs around each
convolution and the head, which onnxruntime fuses into integer QLinearConv and QGemm):

- activations uint8, one scale and zero point per tensor, calibrated by onnxruntime's
  calibrator (MinMax) on ``CALIBRATION_IMAGES`` training images of the run, drawn from its
  seed (``trainer.data.train_sample``). uint8, not int8: onnxruntime fuses signed
  activations only on ARM, so on x86 an S8S8 graph runs largely in float (docs/export.md);
- weights int8 per output channel, zero point 0. For a compressed network they are the
  trained integers: row o of a conv holds ``sign(s_o) * k`` with scale ``fl32(|s_o| * 2^e_o)``
  (s = g / sqrt(var + eps) of its BatchNorm, which the dense network folds into the weight),
  the head's row ``k`` with scale ``2^e * logit_scale``. A layer with a k outside
  ``WEIGHT_RANGES[bits]`` (7 bits on a CPU without VNNI, 8 with it) stays float, exactly as in
  ``model.onnx``. A float network
  (float-baseline, narrow-float) gets onnxruntime's own scales (per channel, symmetric,
  from each row's range; 7-bit, ``reduce_range``, where ``bits`` is 7): the post-training
  quantization a deployer would reach for;
- the logits stay float (the head's output is not quantized).

``write_int8`` writes it and, for a compressed network, checks that every int8 weight is
the trained integer and every scale the one above, bit for bit (else RuntimeError).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainer.export.dense import DenseNet, FloatLayer, build_dense
from trainer.export.packed import Exported

INT8_FILE = "model.int8.onnx"
CALIBRATION_IMAGES = 512  # training images the activation scales are calibrated on
CALIBRATION_BATCH = 64  # images per calibration batch
# The k an int8 layer may hold, by the largest bit depth allowed (``--int8-bits``). 7 (and
#   +64): onnxruntime's U8S8 kernels on x86 without VNNI (AVX2) sum pairs of uint8 x int8
#   products in int16 (vpmaddubsw), which saturates beyond 2 * 255 * 64 = 32,640: its docs'
#   advice is 7-bit weights (reduce_range). Measured: a cpu-preset network's 8-bit prep layer
#   in int8 cost 1.06 points on an AMD EPYC (AVX2), none with it float (docs/export.md).
#   8: VNNI (vpdpbusd) and AMX add the products in int32, so every int8 k is exact there.
WEIGHT_RANGES = {7: (-64, 64), 8: (-128, 127)}
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 flags of int32-accumulating int8
HEAD = "head"
FORMAT = ("QDQ: uint8 activations (a scale and zero point per tensor, MinMax calibration), "
          "int8 weights per output channel (zero point 0), int32 biases, float logits")


def onnx_weight(name: str) -> str:
    """The ONNX initializer of a layer's weight in ``model.onnx`` (``DenseNet``'s names)."""
    return "head.weight" if name == HEAD else f"convs.{name.replace('.', '_')}.weight"


def rows_max(w: np.ndarray) -> np.ndarray:
    """(O,) largest |w| of each row of an (O, ...) array; 0 for a row without columns."""
    return np.abs(w).reshape(len(w), -1).max(axis=1, initial=0.0)


def dense_weights(net: DenseNet) -> dict[str, np.ndarray]:
    """Layer name -> its float32 weight in the dense network (what ``model.onnx`` holds)."""
    out = {name.replace("_", "."): conv.weight.detach().numpy() for name, conv
           in net.convs.items()}
    out[HEAD] = net.head.weight.detach().numpy()
    return out


def exact_scales(ex: Exported, pad_to: int) -> dict[str, np.ndarray]:
    """Layer name -> (rows of its dense weight,) float32: ``fl32(|s| * 2^e)`` per row (the
    head: ``2^e * logit_scale``); 1 for a pad row, or one whose scale is 0.

    Computed as the dense network computes its weights, with every k replaced by 1: the
    folded weight of a row is then its scale, in the same float32 rounding.
    """
    ones = {}
    for name, layer in ex.layers.items():
        shape = (-1,) + (1,) * (layer.ints.dim() - 1)
        ones[name] = FloatLayer(torch.exp2(layer.exp).view(shape).expand(layer.ints.shape)
                                .clone(), layer.out_idx, layer.in_idx, layer.bn)
    net = build_dense(Exported(ones, ex.unions, ex.meta), pad_to)
    return {name: np.where(m > 0, m, 1).astype(np.float32)
            for name, m in ((n, rows_max(w)) for n, w in dense_weights(net).items())}


def trained_int8(ex: Exported, net: DenseNet) -> dict[str, np.ndarray]:
    """Layer name -> the int8 weight its dense weight must have: each row's trained k times
    the sign of its BatchNorm's s, placed in the dense rows and columns (int64; zeros on pad
    rows and columns)."""
    shapes = {n: w.shape for n, w in dense_weights(net).items()}
    out = {}
    for name, layer in ex.layers.items():
        dense = torch.zeros(shapes[name], dtype=torch.int64)
        sign = torch.ones(layer.ints.shape[0], dtype=torch.int64) if layer.bn is None else \
            torch.sign(layer.bn["weight"]).to(torch.int64)
        r, c = net.places[name]
        dense[r[:, None], c] = layer.ints * sign.view((-1,) + (1,) * (layer.ints.dim() - 1))
        out[name] = dense.numpy()
    return out


def int8_bits(cpuinfo: str | None = None) -> tuple[int, str]:
    """(the bit depth up to which a layer's k go into int8 on this CPU, why): 8 where
    onnxruntime's int8 kernels add in int32 (VNNI, AMX), else 7 (see ``WEIGHT_RANGES``)."""
    from trainer.results import cpu_flags

    have = [f for f in INT8_FLAGS if f in cpu_flags(cpuinfo)]
    if have:
        return 8, f"this CPU has {', '.join(have)}: onnxruntime's int8 kernels add in int32"
    return 7, ("no VNNI or AMX seen: onnxruntime's U8S8 kernels (AVX2) saturate int16 sums "
               "beyond 7-bit weights")


def why_float(layer, ints: np.ndarray, bits: int = 7) -> str | None:
    """Why a layer does not hold its trained integers in int8 up to ``bits``; None when it
    does."""
    lo, hi = WEIGHT_RANGES[bits]
    if ints.min(initial=0) >= lo and ints.max(initial=0) <= hi:
        return None
    top = int(layer.bits.max())
    if top > 8:
        return f"a row needs {top} bits (int8 holds 8)"
    return (f"a row needs {top} bits: int8 layers hold k in [{lo}, {hi}] (--int8-bits 7), as "
            "onnxruntime's U8S8 kernels saturate beyond 7-bit weights on x86 without VNNI")


class Images:
    """onnxruntime's CalibrationDataReader: the calibration images in batches."""

    def __init__(self, images: np.ndarray, name: str = "images"):
        self.feeds = iter([{name: images[i:i + CALIBRATION_BATCH]}
                           for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def write_int8(float_onnx: Path, out: Path, images: np.ndarray, ex: Exported | None = None,
               net: DenseNet | None = None, pad_to: int = 0, bits: int = 7) -> dict:
    """Write ``out`` (``model.int8.onnx``) from ``float_onnx`` (``model.onnx``); its record.

    ``images``: the calibration images, normalised float32 (N, 3, 32, 32). With ``ex`` (the
    packed file read back) and ``net`` (the dense network ``float_onnx`` was written from,
    padded to ``pad_to``) the weights are the trained integers, in layers whose k fit
    ``bits`` (``WEIGHT_RANGES``); without, onnxruntime's own.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    overrides, floats = {}, {}
    if ex is not None:
        scales = exact_scales(ex, pad_to)
        for name, ints in trained_int8(ex, net).items():
            why = why_float(ex.layers[name], ints, bits)
            if why:
                floats[name] = why
                continue
            overrides[onnx_weight(name)] = [{"axis": 0, "scale": float(s), "zero_point": 0}
                                            for s in scales[name]]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        import onnx

        graph = onnx.load(str(pre)).graph
        excluded = [node.name for node in graph.node if len(node.input) > 1 and
                    node.input[1] in {onnx_weight(n) for n in floats}]
        quantize_static(
            str(pre), str(out), Images(images), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded, reduce_range=ex is None and bits == 7,  # its own
            extra_options={"TensorQuantOverrides": overrides,
                           "QDQDisableWeightAdjustForInt32Bias": True,
                           "OpTypesToExcludeOutputQuantization": ["Gemm"]})
    held = int8_weights(out)
    if ex is not None:
        check_int8(held, trained_int8(ex, net), scales, floats)
    return {
        "file": INT8_FILE, "format": FORMAT, "opset": opset(out),
        "weights": "the trained integers k (sign(s) * k, scale fl32(|s| * 2^e))"
                   if ex is not None else
                   f"onnxruntime's own (per channel, symmetric MinMax, {bits} bits"
                   f"{': reduce_range' if bits == 7 else ''})",
        "int8_bits": bits, "int8_layers": sorted(held), "float_layers": floats,
        "weight_bytes": weight_bytes(out),
        "calibration": {"images": len(images), "from": "training images, drawn by the run's "
                        "seed", "method": "MinMax (onnxruntime)"},
    }


def int8_weights(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]]:
    """Weight initializer name (as in ``model.onnx``) -> (int8 values, scales, zero points)
    of every DequantizeLinear of an int8 weight in the QDQ file ``path``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in init:
            continue
        q = init[node.input[0]]
        if q.data_type != onnx.TensorProto.INT8:
            continue  # an int32 bias
        out[node.input[0].removesuffix("_quantized")] = tuple(
            numpy_helper.to_array(init[i]) for i in node.input[:3])
    return {name: out[onnx_weight(name)] for name in layer_names(out)}


def layer_names(held: dict) -> list[str]:
    """The layer names whose weights ``held`` (keyed by ONNX initializer) has."""
    names = {"head.weight": HEAD}
    return [names.get(k) or k.removeprefix("convs.").removesuffix(".weight").replace("_", ".")
            for k in held]


def check_int8(held: dict, want: dict[str, np.ndarray], scales: dict[str, np.ndarray],
               floats: dict[str, str]) -> None:
    """Every int8 layer holds the trained integers and the exact scales, zero points 0."""
    missing = sorted(set(want) - set(held) - set(floats))
    if missing:
        raise RuntimeError(f"int8 file: layers {missing} were not quantized")
    for name, (q, scale, zero) in held.items():
        if q.shape != want[name].shape or not np.array_equal(q.astype(np.int64), want[name]):
            bad = int((q.astype(np.int64) != want[name]).sum()) if q.shape == \
                want[name].shape else q.size
            raise RuntimeError(f"int8 file: {name}: {bad} of {q.size} weights are not the "
                               "trained integers")
        if not np.array_equal(scale.view(np.int32), scales[name].view(np.int32)) or \
                np.any(zero != 0):
            raise RuntimeError(f"int8 file: {name}: scales or zero points are not the "
                               "trained ones")


def opset(path: str | os.PathLike) -> int:
    import onnx

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def weight_bytes(path: str | os.PathLike) -> dict[str, int]:
    """Bytes of the conv and head weights in an ONNX file: int8 (with their scales and zero
    points apart) and float32."""
    import onnx

    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    out = {"int8": 0, "int8_scales_and_zero_points": 0, "float32": 0}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w = node.input[1]
        if w in init:
            out["float32"] += nbytes(init[w])
        elif w in made and made[w].op_type == "DequantizeLinear":
            q, *rest = made[w].input
            out["int8"] += nbytes(init[q])
            out["int8_scales_and_zero_points"] += sum(nbytes(init[i]) for i in rest)
    return out


def nbytes(tensor) -> int:
    from onnx import numpy_helper

    return int(numpy_helper.to_array(tensor).nbytes)
