"""Where an exported network's inference time goes: onnxruntime's profiler on ``model.onnx``
and ``model.int8.onnx`` of one export, time per operator type and per node, beside each
convolution's share of the MACs (issue 38, part 4).

Each file runs in its own onnxruntime CPU session with profiling on (``enable_profiling``),
``--threads`` threads (1), on one random batch at each of ``--batches`` (1 and 256):
``--images`` images' worth of runs (at least 20), the first fifth dropped as warm-up. The
``dur`` of the profiler's node events (the kernel times) is summed per operator type
(``op_name``: the operator onnxruntime ran after its graph rewrites, e.g. ``QLinearConv``,
``com.microsoft.nchwc`` ``Conv``, ``ReorderOutput``, ``Transpose``) and per node; a node that
holds a layer's weight or bias is named by that layer (``layer1``, ``res1.conv2``, ``head``).
Beside each layer: its share of the graph's MACs (``model.onnx``'s Conv and Gemm nodes, pad and
zero weights included) and of the live MACs (the trained network's weights, from
``weights.safetensors``). Printed: one table per file and batch, then the JSON object, whose
``ratio`` is the int8 file's time per image over the float file's at the largest batch (from
the profiles: the profiler itself costs a little).

    python -m benchmarks.profile_onnx EXPORT [--batches 1,256] [--images 8192] [--threads 1]
                                             [--keep DIR]
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import count, emit, parser
from benchmarks.inference import FORMS, batches
from trainer.cli import fail

WARMUP_FRACTION = 0.2  # the share of runs dropped from the front of each profile
LAYER_OF = re.compile(r"^(?:convs\.(\w+)\.(?:weight|bias)|(head)\.weight)")


def layer_name(initializer: str) -> str | None:
    """The layer whose weight or bias an initializer holds (``convs.res1_conv2.weight_quantized``
    -> ``res1.conv2``), else None."""
    m = LAYER_OF.match(initializer)
    if m is None:
        return None
    return m.group(2) or m.group(1).replace("_", ".")


def graph_macs(path: Path) -> dict[str, int]:
    """Layer -> multiply-accumulates of one image in its Conv or Gemm node of a float ONNX file,
    pad and zero weights included."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*g.value_info, *g.output)}
    init = {t.name: list(t.dims) for t in g.initializer}
    out = {}
    for node in g.node:
        if node.op_type == "Conv":
            o, i, kh, kw = init[node.input[1]]
            out[layer_name(node.input[1])] = o * i * kh * kw * int(np.prod(
                shapes[node.output[0]][2:]))
        elif node.op_type == "Gemm":
            out[layer_name(node.input[1])] = int(np.prod(init[node.input[1]]))
    return out


def live_macs(folder: Path) -> dict[str, int] | None:
    """Layer -> multiply-accumulates of one image on its live weights (``weights.safetensors``:
    rows with bits > 0 times live columns);
    None for a float network's export, which has no such file."""
    from trainer.export.packed import read_weights
    from trainer.model import SPATIAL

    path = folder / "weights.safetensors"
    if not path.is_file():
        return None
    return {name: SPATIAL.get(name, 1) ** 2 * int((layer.bits > 0).sum()) *
            int(layer.in_live.sum()) * int(np.prod(layer.ints.shape[2:]))
            for name, layer in read_weights(path).layers.items()}


def profile(path: Path, batch: int, runs: int, threads: int, keep: Path | None) -> dict:
    """Seconds per image of each node (by name) and operator type of ``path`` at ``batch``:
    the profiler's kernel times of the runs after the warm-up, per image."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.log_severity_level = 3  # not the warning that the saved graph is CPU-specific
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        for _ in range(runs):
            session.run(["logits"], {"images": x})
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = onnx.load(options.optimized_model_filepath).graph
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            stem = f"{path.name.removesuffix('.onnx')}-b{batch}"
            (keep / f"{stem}.json").write_text(json.dumps(events))
            onnx.save(onnx.load(options.optimized_model_filepath), str(keep / f"{stem}.opt.onnx"))
    layers = {n.name: next((layer_name(i) for i in n.input if layer_name(i)), None)
              for n in optimized.node}
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    dropped = int(len(starts) * WARMUP_FRACTION)
    kept = starts[dropped:]
    images = batch * len(kept)
    nodes: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or \
                e["ts"] < kept[0]:
            continue
        name = e["name"].removesuffix("_kernel_time")
        node = nodes.setdefault(name, {"op": e["args"]["op_name"], "layer": layers.get(name),
                                       "s": 0.0})
        node["s"] += e["dur"] / 1e6 / images
    ops: dict[str, float] = defaultdict(float)
    for node in nodes.values():
        ops[node["op"]] += node["s"]
    run_s = sum(e["dur"] for e in events if e.get("name") == "model_run"
                and e["ts"] >= kept[0]) / 1e6 / images
    return {"nodes": nodes, "ops": dict(ops), "run_s": run_s, "runs": len(kept),
            "dropped": dropped}


def by_layer(nodes: dict) -> dict[str, float]:
    """Layer -> seconds per image of the nodes that hold its weights."""
    out: dict[str, float] = defaultdict(float)
    for node in nodes.values():
        if node["layer"]:
            out[node["layer"]] += node["s"]
    return dict(out)


def shares(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.values()) or 1.0
    return {k: round(v / total, 4) for k, v in values.items()}


def table(title: str, p: dict, graph: dict, live: dict | None) -> str:
    """One file at one batch as text: operator types, then nodes with their layer's MACs."""
    total = sum(p["ops"].values())
    g_total, l_total = sum(graph.values()), sum((live or {}).values()) or 1
    lines = [f"{title}: {1e6 * p['run_s']:.1f} us/image per run, kernels {1e6 * total:.1f}"]
    for op, s in sorted(p["ops"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {op:<18} {1e6 * s:8.2f} us/image {s / total:7.1%}")
    lines.append(f"  {'node':<34} {'op':<16} {'time':>7} {'MACs graph':>10} {'live':>7}")
    for name, n in sorted(p["nodes"].items(), key=lambda kv: -kv[1]["s"]):
        layer = n["layer"]
        g = f"{graph[layer] / g_total:.1%}" if layer in graph else ""
        h = f"{live[layer] / l_total:.1%}" if live and layer in live else ""
        lines.append(f"  {(layer or '') + ' ' + name:<34.34} {n['op']:<16.16} "
                     f"{n['s'] / total:7.1%} {g:>10} {h:>7}")
    return "\n".join(lines)


def main() -> None:
    p = parser("profile_onnx", __doc__)
    p.add_argument("export", type=Path, metavar="EXPORT",
                   help="an export folder (python -m trainer.export ... --out EXPORT)")
    p.add_argument("--batches", type=batches, default=[1, 256],
                   help="comma-separated batch sizes (default 1,256)")
    p.add_argument("--images", type=count, default=8192,
                   help="images profiled per file and batch (%(default)s; at least 20 runs)")
    p.add_argument("--threads", type=count, default=1, help="onnxruntime threads (%(default)s)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep each profile's JSON and the optimized graph in DIR")
    args = p.parse_args()
    files = {form: args.export / name for form, name in FORMS.items()
             if (args.export / name).is_file()}
    if "float" not in files:
        fail(f"no {FORMS['float']} in {args.export}: give an export folder "
             "(python -m trainer.export ... --out DIR)", "benchmarks.profile_onnx")
    graph, live = graph_macs(files["float"]), live_macs(args.export)
    results: dict[str, dict] = {}
    for batch in args.batches:
        runs = max(20, args.images // batch)
        for form, path in files.items():
            got = profile(path, batch, runs, args.threads, args.keep)
            print(table(f"{args.export.name} {path.name} batch {batch}", got, graph, live))
            results.setdefault(form, {})[str(batch)] = {
                "us_per_image": round(1e6 * got["run_s"], 2),
                "runs": got["runs"], "warmup_runs_dropped": got["dropped"],
                "ops_us_per_image": {k: round(1e6 * v, 3) for k, v in got["ops"].items()},
                "ops_share": shares(got["ops"]),
                "layers_share": shares(by_layer(got["nodes"])),
                "nodes": {k: {"op": n["op"], "layer": n["layer"],
                              "us_per_image": round(1e6 * n["s"], 3)}
                          for k, n in got["nodes"].items()}}
    top = str(max(args.batches))
    ratio = (results["int8"][top]["us_per_image"] / results["float"][top]["us_per_image"]
             if "int8" in results else None)
    import onnxruntime

    emit("profile_onnx", {
        "ratio": round(ratio, 3) if ratio else None, "ratio_at_batch": int(top),
        "export": str(args.export), "macs_share_graph": shares(graph),
        "macs_share_live": shares(live) if live else None,
        "macs_per_image": {"graph": sum(graph.values()),
                           "live": sum(live.values()) if live else None},
        "files": results, "onnxruntime": onnxruntime.__version__,
        "onnxruntime_threads": args.threads})


if __name__ == "__main__":
    main()
