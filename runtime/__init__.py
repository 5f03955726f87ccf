"""edgepilot.runtime: run exported models without torch.

`load(path)` picks the backend by file suffix and returns a `Model`. Backends import their
library (onnxruntime, an interpreter) only when a file of their format is loaded.
"""

from edgepilot.runtime.image import preprocess, read_image
from edgepilot.runtime.model import Model, Prediction, load

__all__ = ["load", "Model", "Prediction", "preprocess", "read_image"]
