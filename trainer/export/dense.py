"""The slim dense network: plain float layers rebuilt from ``weights.safetensors``, to ONNX.

Every conv's weight is dequantized (2^e * k, exactly the training's ``qweight()``) and its
BatchNorm (eval mode) is folded in:

    BN(conv(x, W)) = conv(x, s * W) + (beta - mean * s),   s = gamma / sqrt(var + eps)

so a block is conv with bias -> ReLU (-> 2x2 max-pool), and the head is a linear layer
whose weight carries the logit scale 0.125 (a power of two: folding it is exact). Cut
channels are gone: the layers have the rows and columns the file holds, dead-but-present
channels included (they still emit their BatchNorm constant).

**Residual unions.** A residual sum lives on the union of its shortcut's and its branch's
channels. Here the shortcut's producer (layer1, layer3) and the branch's last conv compute
their outputs directly on the union: their rows for union channels they do not have are
zero with zero bias, so they emit ReLU(0) = 0 there and the sum is a plain Add. Every
layer's columns are placed by original channel index in the channels its producer computes
(an input channel it does not read gets a zero column).

**Padding.** Every activation is padded with zero channels (zero rows and bias in its
producer, zero columns in its consumers) to a multiple of ``pad_to`` channels, at least one
block, so no tensor is empty: onnxruntime's blocked (NCHWc) convolutions take a conv only
when its channels are a multiple of the block (8 with AVX2, 16 with AVX-512) or its input has
fewer than a block, else it runs as a slower plain NCHW conv (docs/export.md, "Padding").
The export pads to this CPU's block (``nchwc_block``): 8 runs 4-11 % faster than 16 on an
AVX2 CPU (docs/export.md, "Where the time goes"). The function is unchanged; the logits are
the same.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.export.packed import BN_FIELDS, LOGIT_SCALE, RESIDUALS, Exported, Layer

PAD = -1  # a channel that exists only to pad an activation (always zero)
PAD_TO = 16  # build_dense's default multiple: a multiple of every NCHWc block (docs above)
PAD_CHOICES = (1, 8, 16)  # the multiples the export offers (--pad-to); 1: no padding
OPSET = 17  # the ONNX opset written: the lowest that onnx's version converter reaches from
#   the exporter's (Relu has no adapter down to 13, which per-channel QDQ would allow)


class DenseNet(nn.Module):
    """ResNet-9 as conv+bias -> ReLU blocks on the live channels; input normalised images."""

    def __init__(self, convs: dict[str, nn.Conv2d], head: nn.Linear,
                 places: dict[str, tuple[Tensor, Tensor]] | None = None):
        super().__init__()
        self.convs = nn.ModuleDict({name.replace(".", "_"): c for name, c in convs.items()})
        self.head = head
        # layer name -> (dense row of each of its rows, dense column of each of its columns)
        self.places = places or {}

    def block(self, name: str, x: Tensor, pool: bool = False) -> Tensor:
        y = F.relu(self.convs[name](x))
        return F.max_pool2d(y, 2) if pool else y

    def residual(self, name: str, x: Tensor) -> Tensor:
        if f"{name}_conv1" not in self.convs:  # the branch was removed: identity
            return x
        return x + self.block(f"{name}_conv2", self.block(f"{name}_conv1", x))

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 32, 32) -> (B, classes)
        x = self.residual("res1", self.block("layer1", self.block("prep", x), pool=True))
        x = self.block("layer3", self.block("layer2", x, pool=True), pool=True)
        x = self.residual("res3", x)
        return self.head(torch.amax(x, dim=(2, 3)))


def channels(idx: Tensor, pad_to: int = PAD_TO) -> list[int]:
    """An activation's channels (original indices), then pad channels up to a multiple of
    ``pad_to`` (at least one, so no activation is empty)."""
    have = idx.tolist()
    return have + [PAD] * (max(1, math.ceil(len(have) / pad_to)) * pad_to - len(have))


def nchwc_block(cpuinfo: str | None = None) -> tuple[int, str]:
    """(the multiple the export pads activations to on this CPU, why): onnxruntime's NCHWc
    block, 16 with AVX-512F and 8 with AVX2 (MLAS), else 16, a multiple of both.

    ``cpuinfo``: the text of /proc/cpuinfo (read here when None; absent off Linux).
    """
    from trainer.results import cpu_flags

    flags = cpu_flags(cpuinfo)
    if "avx512f" in flags:
        return 16, "this CPU has AVX-512F: onnxruntime's NCHWc block is 16"
    if "avx2" in flags:
        return 8, "this CPU has AVX2 without AVX-512F: onnxruntime's NCHWc block is 8"
    return 16, "neither AVX2 nor AVX-512F seen in /proc/cpuinfo: 16, a multiple of every block"


def positions(idx: Tensor, space: list[int], what: str) -> Tensor:
    """Where each original channel of ``idx`` sits in ``space`` (it must be there)."""
    where = {c: i for i, c in enumerate(space) if c != PAD}
    missing = [c for c in idx.tolist() if c not in where]
    if missing:
        raise RuntimeError(f"{what}: channels {missing} are not among {space}")
    return torch.tensor([where[c] for c in idx.tolist()], dtype=torch.long)


def folded(layer: Layer, eps: float) -> tuple[Tensor, Tensor]:
    """(weight, bias) of a conv with its eval-mode BatchNorm folded in (float64 math)."""
    w = layer.weight().double()
    bn = {k: v.double() for k, v in layer.bn.items()}
    s = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    return (w * s.view(-1, 1, 1, 1)).float(), (bn["bias"] - bn["running_mean"] * s).float()


def dense_conv(name: str, layer: Layer, rows: list[int], cols: list[int],
               eps: float) -> tuple[nn.Conv2d, tuple[Tensor, Tensor]]:
    """A Conv2d computing ``rows`` (original channels, pads) from the activation ``cols``,
    and where the layer's rows and columns sit in it."""
    w, b = folded(layer, eps)
    k = w.shape[-1]
    conv = nn.Conv2d(len(cols), len(rows), kernel_size=k, padding=k // 2, bias=True)
    weight = torch.zeros(len(rows), len(cols), k, k)
    bias = torch.zeros(len(rows))
    r = positions(layer.out_idx, rows, f"{name} rows")
    c = positions(layer.in_idx, cols, f"{name} columns")
    weight[r[:, None], c] = w
    bias[r] = b
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv, (r, c)


def build_dense(ex: Exported, pad_to: int = PAD_TO) -> DenseNet:
    """The dense float network of an exported one (eval mode), activations padded with zero
    channels to multiples of ``pad_to`` (1: none but the one that keeps a tensor non-empty)."""
    layers, eps = ex.layers, ex.meta["bn_eps"]
    convs: dict[str, nn.Conv2d] = {}
    places: dict[str, tuple[Tensor, Tensor]] = {}

    def conv(name: str, rows: list[int], cols: list[int]) -> list[int]:
        convs[name], places[name] = dense_conv(name, layers[name], rows, cols, eps)
        return rows

    x = conv("prep", channels(layers["prep"].out_idx, pad_to), [0, 1, 2])
    for before, trunk, res in ((None, "layer1", "res1"), ("layer2", "layer3", "res3")):
        if before is not None:
            x = conv(before, channels(layers[before].out_idx, pad_to), x)
        union = channels(ex.unions[res], pad_to)
        shortcut = conv(trunk, union, x)  # the shortcut's channels, computed on the union
        if f"{res}.conv1" in layers:
            h = conv(f"{res}.conv1", channels(layers[f"{res}.conv1"].out_idx, pad_to),
                     shortcut)
            conv(f"{res}.conv2", union, h)
        x = union
    top = layers["head"]
    head = nn.Linear(len(x), top.out_idx.numel(), bias=False)
    weight = torch.zeros(top.out_idx.numel(), len(x))
    cols = positions(top.in_idx, x, "head columns")
    weight[:, cols] = top.weight() * ex.meta["logit_scale"]
    with torch.no_grad():
        head.weight.copy_(weight)
    places["head"] = (torch.arange(top.out_idx.numel()), cols)
    return DenseNet(convs, head, places).eval()


@dataclass
class FloatLayer:
    """A layer as ``build_dense`` reads it, holding float weights instead of integers."""

    w: Tensor  # (O, I, k, k) or (O, I) float32: the weight the network computes with
    out_idx: Tensor  # (O,) original output channels
    in_idx: Tensor  # (I,) original input channels
    bn: dict[str, Tensor] | None  # BatchNorm of a conv; None for the head

    def weight(self) -> Tensor:
        return self.w


def float_exported(model) -> Exported:
    """Any ResNet9 (a float one too: the uncompressed reference) in ``build_dense``'s terms.

    Each layer's weight is ``qweight()``: the float weight, or the quantized one.
    """
    blocks = dict(model.blocks())
    layers = {}
    for name, layer in model.quant_layers():
        block = blocks.get(name)
        bn = None if block is None else {f: getattr(block.bn, f).detach().clone()
                                         for f in BN_FIELDS}
        layers[name] = FloatLayer(layer.qweight().detach().clone().contiguous(),
                                  layer.out_idx.clone(), layer.in_idx.clone(), bn)
    eps = {float(b.bn.eps) for b in blocks.values()}
    if len(eps) != 1:
        raise RuntimeError(f"BatchNorm eps differ between layers: {sorted(eps)}")
    return Exported(layers=layers, unions={r: getattr(model, r).out_idx.clone()
                                           for r in RESIDUALS},
                    meta={"bn_eps": eps.pop(), "logit_scale": LOGIT_SCALE})


def export_onnx(net: DenseNet, path: str | os.PathLike) -> None:
    """Write ``net`` as ONNX at opset ``OPSET``: input ``images`` (N, 3, 32, 32) float32,
    output ``logits``."""
    import onnx
    from onnx import version_converter
    from torch.export import Dim

    program = torch.onnx.export(net.eval(), (torch.zeros(2, 3, 32, 32),), dynamo=True,
                                input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: Dim("batch")},), verbose=False)
    model = version_converter.convert_version(program.model_proto, OPSET)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def session(path: str | os.PathLike, threads: int = 0):
    """An onnxruntime CPU session of ``path``; ``threads`` > 0 fixes its thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_speed(path: str | os.PathLike, batch: int, threads: int, seconds: float = 0.5,
               warmup: int = 3, min_runs: int = 3) -> dict:
    """Images per second of ``path`` with onnxruntime on the CPU at batch ``batch``.

    ``warmup`` untimed runs, then runs of one random batch until ``seconds`` have passed (at
    least ``min_runs``): images / wall time of the timed runs.
    """
    import time

    run = session(path, threads)
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    for _ in range(warmup):
        run.run(["logits"], {"images": x})
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        run.run(["logits"], {"images": x})
        runs += 1
    elapsed = time.perf_counter() - start
    return {"images_per_s": batch * runs / elapsed, "runs": runs, "seconds": elapsed}


def onnx_logits(path: str | os.PathLike, batches, threads: int = 0) -> np.ndarray:
    """Run the ONNX file on CPU with onnxruntime over ``batches`` of images; (N, classes)."""
    run = session(path, threads)
    return np.concatenate([run.run(["logits"], {"images": x.numpy()})[0] for x in batches])


def onnx_macs(path: str | os.PathLike) -> int:
    """Multiply-accumulates of one image through the Conv and Gemm nodes of an ONNX file,
    pad and zero weights included (what the runtime computes, not the live weights)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.value_info, *graph.output)}
    init = {t.name: list(t.dims) for t in graph.initializer}
    macs = 0
    for node in graph.node:
        if node.op_type == "Conv":
            o, i, kh, kw = init[node.input[1]]
            h, w = shapes[node.output[0]][2:]
            macs += o * i * kh * kw * h * w
        elif node.op_type == "Gemm":
            macs += int(np.prod(init[node.input[1]]))
    return macs
