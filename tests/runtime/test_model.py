"""The Model wrapper's own logic, on a fake backend: quantized I/O and output checks."""

import threading
from pathlib import Path

import numpy as np
import pytest

import edgepilot
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


@pytest.mark.parametrize("files,key", [("tiny_onnx", None), ("tiny_tflite", "fp32"),
                                       ("tiny_tflite", "int8")])
def test_a_model_shared_across_threads_answers_as_it_does_alone(request, files, key,
                                                                fresh_colour_data):
    """Interpreters are not re-entrant: four threads sharing one Model get, image for image,
    the scores one thread gets alone (the Model's lock serialises the backend calls)."""
    built = request.getfixturevalue(files)
    model = edgepilot.load(built[key] if key else built.path, threads=1)
    images = fresh_colour_data[0][:48]
    alone = [model.predict(img).scores for img in images]
    results: dict[int, dict] = {}
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        start.wait(timeout=60)  # all four begin together, so their calls interleave
        order = range(len(images)) if worker % 2 else reversed(range(len(images)))
        results[worker] = {i: model.predict(images[i]).scores for i in order}

    workers = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert sorted(results) == [0, 1, 2, 3]  # no thread died or hung
    for worker, scores in results.items():
        assert [scores[i] for i in range(len(images))] == alone, f"worker {worker}"
