"""``weights.safetensors``: a compressed ResNet-9 as bit-packed integers, and its reader.

Every weight of a quantized layer is ``2^e * k`` with an integer k that fits in
``B = ceil(b+)`` bits two's complement (``trainer.quant.integer_weights``). The file stores
the k of every channel at its own B, so that the packed bytes are the size the training
reports (``size_bits``), plus the little it takes to unpack and use them.

The format (format ``scnn.weights/3``: tensors, bitstream, masks, header) and the older
formats 1 and 2 that ``read_weights`` also reads: docs/export.md, "The file format";
what the metadata costs: docs/export.md, "Metadata overhead".
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainer.data import MEAN, STD
from trainer.model import ResNet9
from trainer.quant import layer_size

FORMAT = "scnn.weights/3"
FORMATS = ("scnn.weights/1", "scnn.weights/2", FORMAT)  # what read_weights reads
NIBBLE_MAX = 15  # the largest bit depth a 4-bit nibble holds
INT8 = (-128, 127)  # the exponents an int8 ``exp`` holds
LOGIT_SCALE = 0.125  # ResNet9.forward multiplies the head's output by this
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
RESIDUALS = ("res1", "res3")
METADATA = ("bits", "exp", "exp_head", "masks")  # what unpacking the payload takes
ZLIB_PLANES = ("bits", "exp", "masks")  # stored as zlib's stream when that is shorter


@dataclass
class Layer:
    """One weight layer as read from the file: integers, bit depths and exponents."""

    ints: Tensor  # (O, I, k, k) or (O, I) int64: present rows x present columns
    bits: Tensor  # (O,) int64: B = ceil(b+) per row, 0 for a dead row
    exp: Tensor  # (O,) float32: e per row (0 for a dead row, whose weights are 0 anyway)
    out_idx: Tensor  # (O,) int64: original output channel of each row
    in_idx: Tensor  # (I,) int64: original input channel of each column
    in_live: Tensor  # (I,) bool: the column is live (its weights are in the payload)
    bn: dict[str, Tensor] | None  # BatchNorm parameters and running stats (O,); None: head

    def weight(self) -> Tensor:
        """The dequantized weight 2^e * k (float32): the network's ``qweight()``, bit for bit."""
        shape = (-1,) + (1,) * (self.ints.dim() - 1)
        return torch.exp2(self.exp).view(shape) * self.ints.to(torch.float32)


@dataclass
class Exported:
    """Everything ``read_weights`` returns: enough to rebuild the float network."""

    layers: dict[str, Layer]  # the layers present, in LAYER_NAMES order
    unions: dict[str, Tensor]  # "res1"/"res3" -> original channels of the residual sum
    meta: dict  # the header: format, layers, shapes, config, bn_eps, logit_scale,
    #   input_mean/std, bits_encoding, exp_dtype


@dataclass
class Sizes:
    """Bytes of each part of ``weights.safetensors``."""

    size_bits: int  # sum of z_L over the layers: the size the training reports
    payload: int  # ``payload``: ceil(size_bits / 8)
    metadata: int  # ``bits``, ``exp`` and ``masks``: what unpacking the payload takes
    unpriced: int  # ``unpriced`` (weights on dead-but-present inputs)
    batchnorm: int  # ``bn`` (float32), which the size does not count
    header: int  # the safetensors header (JSON: tensor table and metadata) and its length
    file: int  # the whole file

    @property
    def overhead(self) -> float:
        """Metadata as a fraction of the payload."""
        return self.metadata / self.payload if self.payload else math.inf


# --- bit packing ---------------------------------------------------------------------------

def pack(rows: list[np.ndarray], bits: list[int]) -> np.ndarray:
    """One bitstream: row r's integers each as bits[r]-bit two's complement, MSB first.

    Returns uint8 (ceil(total bits / 8),), zero-padded at the end.
    """
    pieces = []
    for values, b in zip(rows, bits, strict=True):
        if b == 0 and values.any():
            raise ValueError("a row of 0 bits holds nonzero integers")
        if b == 0 or values.size == 0:
            continue
        lo, hi = -(1 << (b - 1)), (1 << (b - 1)) - 1
        if values.min() < lo or values.max() > hi:
            raise ValueError(f"integers in [{values.min()}, {values.max()}] do not fit in "
                             f"{b} bits two's complement")
        unsigned = values.astype(np.int64) & ((1 << b) - 1)
        shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
        pieces.append(((unsigned[:, None] >> shifts) & 1).astype(np.uint8).ravel())
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
    return np.packbits(stream)


def unpack(packed: np.ndarray, counts: list[int], bits: list[int]) -> list[np.ndarray]:
    """Inverse of ``pack``: row r has counts[r] integers of bits[r] bits (int64 arrays)."""
    need = sum(n * b for n, b in zip(counts, bits, strict=True))
    if packed.size != (need + 7) // 8:
        raise ValueError(f"bitstream of {packed.size} bytes, but the rows need {need} bits")
    stream = np.unpackbits(packed)[:need]
    rows, at = [], 0
    for n, b in zip(counts, bits, strict=True):
        if b == 0:
            rows.append(np.zeros(n, np.int64))
            continue
        chunk = stream[at:at + n * b].reshape(n, b).astype(np.int64)
        at += n * b
        unsigned = chunk @ (np.int64(1) << np.arange(b - 1, -1, -1, dtype=np.int64))
        rows.append(unsigned - ((unsigned >> (b - 1)) << b))  # sign-extend
    return rows


def mask(idx: Tensor, n: int) -> np.ndarray:
    """Bit mask (packbits) of the increasing original indices ``idx`` among ``n`` channels."""
    idx = idx.cpu().numpy()
    if np.any(np.diff(idx) <= 0) or (idx.size and (idx[0] < 0 or idx[-1] >= n)):
        raise ValueError(f"channel indices {idx.tolist()} are not increasing within 0..{n - 1}")
    flags = np.zeros(n, dtype=bool)
    flags[idx] = True
    return np.packbits(flags)


def unmask(packed: np.ndarray, n: int) -> Tensor:
    """The original indices (int64, increasing) a bit mask of ``n`` channels selects."""
    return torch.from_numpy(np.flatnonzero(np.unpackbits(packed)[:n])).to(torch.int64)


def pack_bits(bits: np.ndarray) -> tuple[np.ndarray, str]:
    """(the bit depths as stored, their encoding): nibbles when every B <= 15, else uint8."""
    bits = np.asarray(bits, dtype=np.uint8)
    if bits.size and int(bits.max()) > NIBBLE_MAX:
        return bits, "uint8"
    padded = np.append(bits, np.zeros(bits.size % 2, np.uint8))
    return (padded[0::2] << 4) | padded[1::2], "nibbles"


def unpack_bits(stored: np.ndarray, encoding: str) -> np.ndarray:
    """Inverse of ``pack_bits`` (uint8); from nibbles, with the zero pad nibble if any."""
    if encoding == "uint8":
        return stored
    if encoding == "nibbles":
        return np.stack([stored >> 4, stored & 0x0F], axis=1).ravel()
    raise ValueError(f"unknown bits encoding {encoding!r}: expected nibbles or uint8")


def deflate(plane: np.ndarray) -> tuple[np.ndarray, bool]:
    """(the plane as stored, whether that is zlib's stream of its bytes): zlib only when
    shorter. A plane of few distinct values (the bit depths and integer exponents of a
    layer take 2-4 values each; masks of a network with few cuts are nearly all ones)
    compresses to a third or less."""
    plane = np.ascontiguousarray(plane)
    packed = np.frombuffer(zlib.compress(plane.tobytes(), 9), dtype=np.uint8)
    return (packed, True) if packed.size < plane.nbytes else (plane, False)


def inflate(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Inverse of a ``deflate`` that compressed: the plane, as ``dtype``."""
    return np.frombuffer(zlib.decompress(stored.tobytes()), dtype=np.dtype(dtype))


def float_exponents(exp: np.ndarray) -> np.ndarray:
    """The exponents as float16 when every one is exactly a float16, else float32."""
    exp = np.asarray(exp, dtype=np.float32)
    half = exp.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), exp) else exp


def pack_exponents(conv: np.ndarray, head: np.ndarray) -> dict[str, np.ndarray]:
    """``exp`` and ``exp_head``: the convs' live-row e as int8 when every one is an integer
    in [-128, 127] (``integer_exponents``), the head's (which has no BatchNorm to take a
    fraction) apart as floats; else every live row's e in ``exp`` as floats (format 2's)."""
    conv = np.asarray(conv, dtype=np.float32)
    if np.array_equal(np.round(conv), conv) and np.all((conv >= INT8[0]) & (conv <= INT8[1])):
        return {"exp": conv.astype(np.int8), "exp_head": float_exponents(head)}
    return {"exp": float_exponents(np.concatenate([conv, head]))}


# --- writing -------------------------------------------------------------------------------

@dataclass
class Rows:
    """The parts of the file's tensors that one layer contributes."""

    priced: list[np.ndarray]  # per live row: its integers on the live columns
    unpriced: list[np.ndarray]  # per live row: its integers on the dead-but-present columns
    live_bits: list[int]  # B per live row
    bits: np.ndarray  # (O,) uint8
    exp: np.ndarray  # (O_live,) float32
    masks: list[np.ndarray]  # rows, columns, live columns
    bn: np.ndarray | None  # (4, O) float32


def layer_rows(name: str, layer, live_in: Tensor, shape: tuple[int, ...],
               bn: torch.nn.BatchNorm2d | None) -> Rows:
    """What one layer puts in the file; its packed size is checked against ``layer_size``."""
    ints = layer.qints().cpu()  # (O, I, k, k) or (O, I)
    bits = torch.ceil(torch.relu(layer.b.detach())).to(torch.int64).cpu()
    live_in = live_in.cpu()
    if live_in.numel() != ints.shape[1]:
        raise RuntimeError(f"{name}: {live_in.numel()} input flags for {ints.shape[1]} columns")
    live = (bits > 0).nonzero().flatten().tolist()
    rows = Rows(priced=[ints[o][live_in].flatten().numpy() for o in live],
                unpriced=[ints[o][~live_in].flatten().numpy() for o in live],
                live_bits=[int(bits[o]) for o in live],
                bits=bits.numpy().astype(np.uint8),
                exp=layer.e.detach().cpu()[live].numpy().astype(np.float32),
                masks=[mask(layer.out_idx, shape[0]), mask(layer.in_idx, shape[1]),
                       mask(layer.in_idx.cpu()[live_in], shape[1])],
                bn=None if bn is None else np.stack(
                    [getattr(bn, f).detach().cpu().numpy() for f in BN_FIELDS]).astype(np.float32))
    z = sum(v.size * b for v, b in zip(rows.priced, rows.live_bits, strict=True))
    exact = float(layer_size(layer, live_in.to(layer.b.device))[1])
    if z != exact:
        raise RuntimeError(f"{name}: packed {z} bits but its exact size is {exact:g} bits")
    return rows


def weight_tensors(model: ResNet9) -> tuple[dict[str, np.ndarray], list[str], int]:
    """(tensors, names of the layers present, size in bits) of a quantized network."""
    if not model.quantized:
        raise ValueError("the network is not quantized: there are no integers to pack")
    blocks = dict(model.blocks())
    parts: list[Rows] = []
    names = []
    for name, layer, live_in in model.live_inputs():
        block = blocks.get(name)
        parts.append(layer_rows(name, layer, live_in, model.initial_shapes[name],
                                block.bn if block is not None else None))
        names.append(name)
    unions = [mask(getattr(model, r).out_idx, model.initial_shapes[f"{r}.conv2"][0])
              for r in RESIDUALS]
    live_bits = [b for p in parts for b in p.live_bits]
    if names[-1] != "head":
        raise RuntimeError(f"the last layer is {names[-1]!r}, not the head")
    tensors = {
        "payload": pack([v for p in parts for v in p.priced], live_bits),
        "unpriced": pack([v for p in parts for v in p.unpriced], live_bits),
        "bits": np.concatenate([p.bits for p in parts]),  # (sum O,) uint8, packed below
        **pack_exponents(np.concatenate([p.exp for p in parts[:-1]]), parts[-1].exp),
        "masks": np.concatenate([m for p in parts for m in p.masks] + unions),
        "bn": np.concatenate([p.bn for p in parts if p.bn is not None], axis=1),
    }
    size_bits = sum(v.size * b for p in parts for v, b in zip(p.priced, p.live_bits,
                                                               strict=True))
    return tensors, names, size_bits


def write_weights(model: ResNet9, config: dict, path: str | os.PathLike) -> Sizes:
    """Write ``model`` (quantized; ``config``: its TrainConfig as a dict) to ``path``."""
    from safetensors.numpy import save_file

    tensors, names, size_bits = weight_tensors(model)
    tensors["bits"], encoding = pack_bits(tensors["bits"])
    exp_dtype = str(tensors["exp"].dtype)
    compressed = []
    for plane in ZLIB_PLANES:
        tensors[plane], zipped = deflate(tensors[plane])
        compressed += [plane] if zipped else []
    eps = {float(b.bn.eps) for _, b in model.blocks()} or {1e-5}
    if len(eps) > 1:
        raise RuntimeError(f"BatchNorm eps differ between layers: {sorted(eps)}")
    meta = {"format": FORMAT, "bits_encoding": encoding, "zlib": json.dumps(compressed),
            "exp_dtype": exp_dtype, "layers": json.dumps(names),
            "shapes": json.dumps({n: list(s) for n, s in model.initial_shapes.items()}),
            "config": json.dumps(config), "bn_eps": repr(eps.pop()),
            "logit_scale": repr(LOGIT_SCALE), "input_mean": json.dumps(MEAN),
            "input_std": json.dumps(STD)}
    save_file(tensors, str(path), metadata=meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # like the Parquet results: readable by everyone
    with open(path, "rb") as f:
        header = 8 + int.from_bytes(f.read(8), "little")  # length prefix + JSON header
    return Sizes(size_bits=size_bits, payload=tensors["payload"].nbytes,
                 metadata=sum(tensors[k].nbytes for k in METADATA if k in tensors),
                 unpriced=tensors["unpriced"].nbytes, batchnorm=tensors["bn"].nbytes,
                 header=header, file=os.path.getsize(path))


# --- reading -------------------------------------------------------------------------------

class Cursor:
    """Reads consecutive pieces of a 1-d array (or of the last axis of a 2-d one)."""

    def __init__(self, array: np.ndarray):
        self.array, self.at = array, 0

    def take(self, n: int) -> np.ndarray:
        piece = self.array[..., self.at:self.at + n]
        if piece.shape[-1] != n:
            raise ValueError(f"the file ends {n - piece.shape[-1]} entries early")
        self.at += n
        return piece


def read_weights(path: str | os.PathLike) -> Exported:
    """Read a ``weights.safetensors`` back: the integers, bit for bit, and all the rest."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        raw = dict(f.metadata() or {})
        if raw.get("format") not in FORMATS:
            raise ValueError(f"{path} is not an scnn weights file (format "
                             f"{raw.get('format')!r}, expected one of {', '.join(FORMATS)})")
        t = {k: f.get_tensor(k) for k in f.keys()}
    meta = {"format": raw["format"], "layers": json.loads(raw["layers"]),
            "shapes": json.loads(raw["shapes"]), "config": json.loads(raw["config"]),
            "bn_eps": float(raw["bn_eps"]), "logit_scale": float(raw["logit_scale"]),
            "input_mean": json.loads(raw["input_mean"]),
            "input_std": json.loads(raw["input_std"]),
            **decode_metadata(raw, t)}
    bits, masks, bn = (Cursor(t[k]) for k in ("bits", "masks", "bn"))
    conv_exp = Cursor(t["exp"])
    head_exp = Cursor(t["exp_head"]) if "exp_head" in t else conv_exp
    layers = {}
    for name in meta["layers"]:
        o0, i0, *kernel = meta["shapes"][name]
        out_idx = unmask(masks.take(-(-o0 // 8)), o0)
        in_idx = unmask(masks.take(-(-i0 // 8)), i0)
        in_live = torch.isin(in_idx, unmask(masks.take(-(-i0 // 8)), i0))
        b = torch.from_numpy(bits.take(out_idx.numel()).astype(np.int64))
        e = torch.zeros(out_idx.numel(), dtype=torch.float32)
        exp = head_exp if name == "head" else conv_exp
        e[b > 0] = torch.from_numpy(exp.take(int((b > 0).sum())).copy())
        layers[name] = Layer(
            ints=torch.zeros((out_idx.numel(), in_idx.numel(), *kernel), dtype=torch.int64),
            bits=b, exp=e, out_idx=out_idx, in_idx=in_idx, in_live=in_live,
            bn=None if name == "head" else dict(zip(BN_FIELDS, torch.from_numpy(
                bn.take(out_idx.numel()).copy()), strict=True)))
    fill_integers(layers, t["payload"], t["unpriced"])
    unions = {}
    for res in RESIDUALS:
        c0 = meta["shapes"][f"{res}.conv2"][0]
        unions[res] = unmask(masks.take(-(-c0 // 8)), c0)
    rest = bits.array[bits.at:]
    if rest.size > (meta["bits_encoding"] == "nibbles") or rest.any():
        raise ValueError(f"{path}: {rest.size} bit depths left over after the last layer")
    for exp in (conv_exp, head_exp):
        if exp.at != exp.array.size:
            raise ValueError(f"{path}: {exp.array.size - exp.at} exponents left over")
    return Exported(layers=layers, unions=unions, meta=meta)


def decode_metadata(raw: dict[str, str], t: dict[str, np.ndarray]) -> dict[str, str]:
    """Turn the file's ``bits``, ``exp``, ``exp_head`` and ``masks`` (in ``t``) into one
    uint8 per row, float32 exponents and raw masks, for any format; returns the header's
    ``bits_encoding`` and ``exp_dtype``."""
    if raw["format"] == FORMAT:
        zipped, exp_dtype = json.loads(raw["zlib"]), raw["exp_dtype"]
    else:  # formats 1 and 2: only the masks may be zlib's stream; exp has its own dtype
        encoding = raw.get("masks_encoding", "raw")
        if encoding not in ("raw", "zlib"):
            raise ValueError(f"unknown masks encoding {encoding!r}: expected zlib or raw")
        zipped, exp_dtype = ["masks"] * (encoding == "zlib"), str(t["exp"].dtype)
    if exp_dtype not in ("int8", "float16", "float32"):
        raise ValueError(f"exp_dtype {exp_dtype!r}: expected int8, float16 or float32")
    if (exp_dtype == "int8") != ("exp_head" in t):
        raise ValueError(f"exp_dtype {exp_dtype} {'with' if 'exp_head' in t else 'without'} "
                         "an exp_head tensor: int8 comes with one, float16 and float32 without")
    dtypes = {"bits": "uint8", "exp": exp_dtype, "masks": "uint8"}
    if not set(zipped) <= set(dtypes):
        raise ValueError(f"zlib planes {zipped}: expected some of {', '.join(dtypes)}")
    for plane in zipped:
        t[plane] = inflate(t[plane], dtypes[plane])
    for plane, dtype in dtypes.items():
        if str(t[plane].dtype) != dtype:
            raise ValueError(f"{plane} holds {t[plane].dtype}, but the header says {dtype}")
    encoding = raw.get("bits_encoding", "uint8")  # format 1: one per byte
    t["bits"] = unpack_bits(t["bits"], encoding)  # a pad nibble may end it
    for plane in ("exp", "exp_head"):  # int8 and float16 -> float32 are exact
        if plane in t:
            t[plane] = t[plane].astype(np.float32)
    return {"bits_encoding": encoding, "exp_dtype": exp_dtype}


def fill_integers(layers: dict[str, Layer], payload: np.ndarray, unpriced: np.ndarray) -> None:
    """Unpack both bitstreams into each layer's ``ints`` (live rows; dead rows stay 0)."""
    plan = []  # (layer, row, live columns, n live, n dead, B) in stream order
    for layer in layers.values():
        per_in = math.prod(layer.ints.shape[2:])
        n_live = int(layer.in_live.sum()) * per_in
        n_dead = int((~layer.in_live).sum()) * per_in
        for o in (layer.bits > 0).nonzero().flatten().tolist():
            plan.append((layer, o, n_live, n_dead, int(layer.bits[o])))
    b_list = [p[4] for p in plan]
    priced = unpack(payload, [p[2] for p in plan], b_list)
    dead = unpack(unpriced, [p[3] for p in plan], b_list)
    for (layer, o, *_), a, d in zip(plan, priced, dead, strict=True):
        kernel = layer.ints.shape[2:]
        layer.ints[o, layer.in_live] = torch.from_numpy(a).view(-1, *kernel)
        layer.ints[o, ~layer.in_live] = torch.from_numpy(d).view(-1, *kernel)
