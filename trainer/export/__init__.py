"""Export a trained network as files a user can deploy: ``python -m trainer.export SOURCE``.

Into ``--out`` go ``weights.safetensors`` (the integer weights bit-packed at each channel's
bit depth: its payload is ``ceil(size_bits / 8)`` bytes), ``model.onnx`` (the slim dense
float network rebuilt from that file), ``model.int8.onnx`` (the same for onnxruntime's int8
kernels, its int8 weights the trained integers) and ``export.json`` (sizes, and the
accuracy and speed re-measured from both ONNX files). A float network gets the two ONNX
files (the int8 one onnxruntime's own quantization). The room, module by module:

- ``packed``: the file format ``scnn.weights/3`` (docs/export.md, "The file format"): write
  and read ``weights.safetensors``;
- ``dense``: the slim dense network rebuilt from that file, and its ONNX file;
- ``integer``: ``model.int8.onnx``, written from ``model.onnx`` and checked;
- ``sources``: what a SOURCE names (a run folder, a ``model.pt``, a checkpoint the sweep
  hands over), loaded without running code from the files;
- ``write``: the files of one network, checked, and the lines that report them;
- ``cli``: the command line (``__main__`` runs it).

``python -m sweep.run --export front`` exports a sweep's front with
``sweep.checkpoints.export_front``. Files are read without unpickling code
(``torch.load(weights_only=True)``).
"""

import importlib

# Loaded on first use: ``sweep.checkpoints`` reaches ``sources`` through this package, and a
# sweep's driver should not import torch (what ``packed``, ``dense`` and ``write`` need).
_HOME = {"ExportError": "sources", "export_network": "write", "main": "cli",
         "read_weights": "packed"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
