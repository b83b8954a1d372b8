"""Export a trained network as files a user can deploy: ``python -m trainer.export SOURCE``.

Into ``--out`` go ``weights.safetensors`` (the integer weights bit-packed at each channel's
bit depth: its payload is ``ceil(size_bits / 8)`` bytes), ``model.onnx`` (the slim dense
float network rebuilt from that file) and ``export.json`` (sizes, and the accuracy
re-measured from ``model.onnx``). The room, module by module:

- ``packed``: the file format ``scnn.weights/3`` (docs/export.md, "The file format"): write
  and read ``weights.safetensors``;
- ``dense``: the slim dense network rebuilt from that file, and its ONNX file;
- ``sources``: what a SOURCE names (a run folder, a ``model.pt``, a checkpoint the sweep
  hands over), loaded without running code from the files;
- ``write``: the three files of one network, checked, and the lines that report them;
- ``cli``: the command line (``__main__`` runs it).

``python -m sweep.run --export front`` exports a sweep's front with
``sweep.checkpoints.export_front``. Files are read without unpickling code
(``torch.load(weights_only=True)``).
"""

from trainer.export.cli import main
from trainer.export.packed import read_weights
from trainer.export.sources import ExportError
from trainer.export.write import export_network

__all__ = ["ExportError", "export_network", "main", "read_weights"]
