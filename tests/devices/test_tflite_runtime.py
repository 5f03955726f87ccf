"""tflite-runtime, the interpreter many Raspberry Pi images ship, for real: version 2.14.0 (its
last release) in its own venv with the numpy<2 it was built against (`make tflite-runtime-env`),
against ai-edge-litert here, on every precision of the stoplight .tflite and 500 images.

Measured: fp32, fp16 and full int8 agree on top-1 for all 500 images; float scores to ~1e-6;
int8 scores within one step of the final int8 logits on 99.2% of images (at most 1.7 steps,
0.053: the two releases' int8 kernels round differently). The dynamic-range file (int8
weights, float activations) does not: tflite-runtime 2.14 returns near-uniform scores for it
with every kernel set (XNNPACK, builtin, reference), while LiteRT 2.x computes it right. The
Pi profiles therefore pick full int8 and install ai-edge-litert; see README "Devices".
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

import edgepilot  # noqa: E402
from edgepilot.devices import profile_by_name  # noqa: E402
from edgepilot.runtime import preprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("EDGEPILOT_TFLITE_RUNTIME_PYTHON",
                             ROOT / ".venv-tflite-runtime" / "bin" / "python"))
pytestmark = pytest.mark.skipif(
    not PYTHON.exists(),
    reason=f"tflite-runtime's virtualenv is missing ({PYTHON}): make tflite-runtime-env")
N_IMAGES = 500


@pytest.fixture(scope="module")
def compared(rpi5_bundle, tmp_path_factory):
    """precision -> (tflite-runtime outputs, ai-edge-litert outputs, output step, path)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepilot.assets import shipped_model
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.datasets import load_dataset

    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    out = tmp_path_factory.mktemp("tflite-runtime") / "stoplight"
    val = load_dataset("stoplight", "val", 300, meta.input_size)
    files = {r.precision: Path(r.path) for r in edgepilot.export(
        net, torch.zeros(1, 3, 64, 64), formats="tflite", precision=["fp32", "fp16", "dynamic"],
        out=out, meta=meta, data=val, quiet=True)}
    [files["int8"]] = rpi5_bundle.glob("*_int8.tflite")  # what deploy made for the Pi 5
    images = load_dataset("stoplight", "val", N_IMAGES, meta.input_size, seed=4242)[0]
    inputs, ours, steps = {}, {}, {}
    for precision, path in files.items():
        model = edgepilot.load(path)
        [info] = model.inputs
        x = np.stack([preprocess(img, model.meta) for img in images])  # (N, 1, 64, 64, 3)
        inputs[path.name] = info.quantize(x) if info.quantized else x.astype(info.dtype)
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        ours[path.name] = _run(interpreter, inputs[path.name])
        steps[precision] = _output_step(interpreter)
    npz = out.with_name("inputs.npz")
    np.savez(npz, **inputs)
    result = subprocess.run([str(PYTHON), str(Path(__file__).with_name("tflite_runtime_run.py")),
                             str(npz), str(out.with_name("outputs.npz")),
                             *map(str, files.values())],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "2.14.0" and result.stdout.split()[1].startswith("1.")
    theirs = np.load(out.with_name("outputs.npz"))
    return {p: (theirs[f.name], ours[f.name], steps[p], f) for p, f in files.items()}


def _run(interpreter, batch: np.ndarray) -> np.ndarray:
    [image], [scores] = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for x in batch:
        interpreter.set_tensor(image["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(scores["index"]).copy())
    return np.stack(outputs)


def _output_step(interpreter) -> float:
    """The quantization step of the scores: the output's scale, or, when the graph ends in float
    (DEQUANTIZE then SOFTMAX), that of the last int8 tensor before it; 0 for a float graph.
    A change of one step in a logit moves a softmax output by less than one step."""
    [scores] = interpreter.get_output_details()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    producers = {out: op for op in interpreter._get_ops_details() for out in op["outputs"]
                 if op["op_name"] != "DELEGATE"}  # the graph's own nodes, not XNNPACK's
    tensor = scores["index"]
    while True:
        scale = details[tensor]["quantization"][0]
        if scale:
            return float(scale)
        op = producers.get(tensor)
        if op is None or not len(op["inputs"]):
            return 0.0
        tensor = op["inputs"][0]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tflite_runtime_agrees_with_litert(compared, precision):
    theirs, ours, step, _ = compared[precision]
    assert theirs.shape == ours.shape == (N_IMAGES, 1, 4)
    differ = theirs.argmax(-1) != ours.argmax(-1)
    agree = 1 - np.mean(differ)
    diff = np.abs(theirs.astype(np.float64) - ours.astype(np.float64)).max()
    if precision != "int8":
        assert agree == 1.0, f"{precision}: top-1 agrees on {agree:.1%} of {N_IMAGES} images"
    else:
        # The kernels round differently (below), so an image whose two best classes are about
        # as close as the two runtimes' scores may flip: only such near-ties may disagree
        # (measured: 2 of 500 for the classifier shipped at stop 11, none for the one before).
        flat_ours, flat_theirs = ours.reshape(N_IMAGES, -1), theirs.reshape(N_IMAGES, -1)
        top2 = np.sort(flat_ours, axis=1)[:, -2:]
        gaps = (top2[:, 1] - top2[:, 0])[differ.reshape(-1)]
        apart = np.abs(flat_theirs - flat_ours).max(1)[differ.reshape(-1)]
        # A flip is explained when the two best scores are closer than twice the runtimes'
        # difference on that very image.
        assert agree >= 0.99 and (gaps <= 2 * apart).all(), (agree, gaps, apart, step)
    if precision == "int8":
        # Measured: scores within one step of the final int8 logits (0.0306) on 99.2% of the
        # images, at most 1.7 steps (0.053); the logits themselves differ by up to 9 steps
        # pairwise (the two releases' int8 kernels round differently). With the weights
        # rounded by output error (issue 32): within one step (0.0272) on 97.8%, at most 1.5
        # steps (0.041). 0.1 still fails a broken kernel, as the dynamic file's 0.7 shows.
        assert step > 0 and np.mean(np.abs(theirs - ours).max(-1) > step) <= 0.05
        assert diff < 0.1, f"int8 scores differ by {diff:.3f} ({diff / step:.1f} steps)"
    else:
        assert diff <= 1e-4, f"{precision}: max |difference| {diff:.2e}"


@pytest.mark.slow
def test_dynamic_range_file_is_wrong_on_tflite_runtime_so_pi_profiles_avoid_it(compared):
    theirs, ours, _, _ = compared["dynamic"]
    fp32 = compared["fp32"][1]
    # LiteRT runs the dynamic file like fp32; tflite-runtime 2.14 does not (the module
    # docstring and README say so). If this starts failing, a fixed tflite-runtime arrived:
    # update the README note.
    assert np.mean(ours.argmax(-1) == fp32.argmax(-1)) >= 0.99
    assert np.mean(theirs.argmax(-1) == ours.argmax(-1)) < 0.9
    for name in ("rpi-zero2", "rpi4", "rpi5"):
        profile = profile_by_name(name)
        assert profile.precision == "int8" and "ai-edge-litert" in profile.requirements
