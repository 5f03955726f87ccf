"""The Model wrapper's own logic, on a fake backend: quantized I/O and output checks."""

from pathlib import Path

import numpy as np
import pytest

from edgepilot.errors import ModelFileError
from edgepilot.formats import FORMATS
from edgepilot.meta import ModelMeta
from edgepilot.runtime.backend import Backend, TensorInfo
from edgepilot.runtime.model import Model


class FakeBackend(Backend):
    """Echoes its input, so the test sees exactly what the wrapper fed the backend."""

    description = "fake"
    meta_json = None

    def __init__(self, inputs, outputs):
        self.inputs, self.outputs, self.fed = inputs, outputs, None

    def run(self, arrays):
        self.fed = arrays[0]
        return [arrays[0].reshape(1, -1)]


def test_quantized_input_and_output_are_converted_at_the_boundary():
    info = TensorInfo("x", (1, 4), np.dtype(np.int8), scale=0.5, zero_point=-3)
    backend = FakeBackend([info], [TensorInfo("y", (1, 4), np.dtype(np.int8), 0.5, -3)])
    model = Model(backend, meta=None, path=Path("m.onnx"), format=FORMATS[0])
    y = model(np.array([[0.0, 1.0, 100.0, -100.0]], np.float32))
    assert backend.fed.dtype == np.int8
    assert backend.fed.tolist() == [[-3, -1, 127, -128]]  # clipped to int8, not wrapped
    np.testing.assert_allclose(y, [[0.0, 1.0, 65.0, -62.5]])


def test_output_count_must_match_labels():
    meta = ModelMeta(name="m", labels=("a", "b", "c"), input_size=(2, 2), layout="NC",
                     mean=(0, 0, 0), std=(1, 1, 1))
    backend = FakeBackend([TensorInfo("x", (1, 12), np.dtype(np.float32))],
                          [TensorInfo("y", (1, 12), np.dtype(np.float32))])
    model = Model(backend, meta=meta, path=Path("m.onnx"), format=FORMATS[0])
    with pytest.raises(ModelFileError, match="'m' outputs 12 values but its metadata has 3"):
        model.predict(np.zeros((2, 2, 3), np.uint8))
