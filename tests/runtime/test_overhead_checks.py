"""The input checks and run-time error conversion on `Model.__call__`'s fast path (issue 34):
what is worked out once at load must not change what every call checks or raises."""

import threading
from pathlib import Path

import numpy as np
import pytest

from edgepilot.errors import InputError, ModelFileError, UnsupportedFormatError
from edgepilot.formats import FORMATS
from edgepilot.runtime.backend import Backend, TensorInfo
from edgepilot.runtime.model import Model


class ScriptedBackend(Backend):
    """Returns its inputs (or raises `fail`), counting the runs."""

    description = "scripted"
    meta_json = None

    def __init__(self, inputs, outputs=None, fail=None):
        self.inputs, self.outputs = inputs, outputs or inputs
        self.fail, self.runs = fail, 0

    def run(self, arrays):
        self.runs += 1
        if self.fail is not None:
            raise self.fail
        return list(arrays)


def _model(inputs, outputs=None, fail=None) -> Model:
    return Model(ScriptedBackend(inputs, outputs, fail), meta=None, path=Path("m.onnx"),
                 format=FORMATS[0])


def test_every_call_checks_again_even_the_same_array():
    model = _model([TensorInfo("x", (1, 3), np.dtype(np.float32))])
    x = np.zeros((1, 3), np.float32)
    model(x)
    x[0, 1] = np.inf  # the same object, now holding a non-finite value
    with pytest.raises(InputError, match="'x' holds NaN or infinite values"):
        model(x)
    assert model._backend.runs == 1


def test_dynamic_dims_accept_any_size_and_check_the_static_ones():
    model = _model([TensorInfo("x", (None, 3), np.dtype(np.float32))])
    for rows in (1, 2, 5):
        assert model(np.ones((rows, 3), np.float32)).shape == (rows, 3)
    with pytest.raises(InputError, match=r"'x' expects shape \?x3, got 2x4"):
        model(np.ones((2, 4), np.float32))
    with pytest.raises(InputError, match=r"'x' expects shape \?x3, got 3$"):
        model(np.ones(3, np.float32))


def test_static_shape_mismatches_are_refused():
    model = _model([TensorInfo("x", (1, 2, 2), np.dtype(np.float32))])
    with pytest.raises(InputError, match="'x' expects shape 1x2x2, got 1x2x3"):
        model(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(InputError, match="'x' expects shape 1x2x2, got 1x4"):
        model(np.zeros((1, 4), np.float32))


def test_input_count_and_per_input_checks_with_two_inputs():
    model = _model([TensorInfo("a", (1, 2), np.dtype(np.float32)),
                    TensorInfo("b", (1, 2), np.dtype(np.int8))])
    a, b = np.zeros((1, 2), np.float32), np.array([[1, 2]], np.int8)
    with pytest.raises(InputError, match=r"takes 2 input\(s\) \(a, b\), got 1"):
        model(a)
    out = model(a, b)
    assert isinstance(out, tuple) and out[1].dtype == np.int8
    with pytest.raises(InputError, match="'b' is int8, which holds -128..127; got values 1..300"):
        model(a, np.array([[1, 300]], np.int64))
    with pytest.raises(InputError, match="'b' holds NaN"):
        model(a, np.array([[np.nan, 1]]))


def test_a_fixed_batch_of_one_runs_row_by_row():
    model = _model([TensorInfo("x", (1, 3), np.dtype(np.float32))])
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(model(x), x)
    assert model._backend.runs == 4


def test_a_failing_run_is_a_model_file_error_and_releases_the_lock():
    err = RuntimeError("bad node")
    model = _model([TensorInfo("x", (1, 3), np.dtype(np.float32))], fail=err)
    with pytest.raises(ModelFileError, match=r"^Running 'm.onnx' failed: bad node$") as caught:
        model(np.zeros((1, 3), np.float32))
    assert caught.value.__cause__ is err
    assert not model._lock.locked()
    done = threading.Event()
    threading.Thread(target=lambda: (model._lock.acquire(), model._lock.release(),
                                     done.set())).start()
    assert done.wait(5)


@pytest.mark.parametrize("fail", [UnsupportedFormatError("own error"), KeyboardInterrupt()])
def test_edgepilot_errors_and_interrupts_pass_through_unchanged(fail):
    model = _model([TensorInfo("x", (1, 3), np.dtype(np.float32))], fail=fail)
    with pytest.raises(type(fail)) as caught:
        model(np.zeros((1, 3), np.float32))
    assert caught.value is fail
    assert not model._lock.locked()


def test_quantized_outputs_are_dequantized_and_others_returned_as_they_came():
    plain = TensorInfo("p", (1, 2), np.dtype(np.float32))
    quant = TensorInfo("q", (1, 2), np.dtype(np.int8), scale=0.5, zero_point=1)
    model = _model([plain, quant], outputs=[plain, quant])
    p, q = np.array([[1.5, 2.5]], np.float32), np.array([[3, -1]], np.int8)
    out_p, out_q = model(p, q)
    assert out_p is p
    assert out_q.dtype == np.float32 and out_q.tolist() == [[1.0, -1.0]]
