"""edgepilot: take a PyTorch vision model to edge hardware and prove it works there.

    >>> import edgepilot
    >>> model = edgepilot.load("stoplight.onnx")      # torch-free runtime
    >>> model.predict("photo.jpg").label
    >>> edgepilot.export(net, torch.zeros(1, 3, 64, 64), out="runs/net", meta=meta)
    >>> edgepilot.benchmark(["runs/net.onnx", "runs/net_int8.tflite"], threads=[1, 2])

Importing edgepilot imports no torch, onnx or TensorFlow; exporters import them when called.
"""

from edgepilot import export
from edgepilot.bench import benchmark
from edgepilot.errors import (
    EdgepilotError,
    InputError,
    MissingDependencyError,
    ModelFileError,
    UnknownArchitectureError,
    UnsupportedFormatError,
)
from edgepilot.formats import FORMATS, Format
from edgepilot.meta import ModelMeta
from edgepilot.runtime import Model, Prediction, load

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "EdgepilotError",
    "Format",
    "InputError",
    "MissingDependencyError",
    "Model",
    "ModelFileError",
    "ModelMeta",
    "Prediction",
    "UnknownArchitectureError",
    "UnsupportedFormatError",
    "__version__",
    "benchmark",
    "export",
    "load",
]
