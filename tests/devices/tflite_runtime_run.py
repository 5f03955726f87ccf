"""Run .tflite files with tflite-runtime (in its own venv, numpy<2) on prepared input tensors.

Usage: python tflite_runtime_run.py INPUTS.npz OUT.npz MODEL.tflite...
INPUTS.npz holds one array per model file name: (N, *input shape) in the input's own dtype.
OUT.npz gets the raw output tensors (N, *output shape), one array per model file name.
"""

import sys
from pathlib import Path

import numpy as np
import tflite_runtime
from tflite_runtime.interpreter import Interpreter


def run(path: str, batch: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    [image], [scores] = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for x in batch:
        interpreter.set_tensor(image["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(scores["index"]).copy())
    return np.stack(outputs)


def main() -> None:
    inputs = np.load(sys.argv[1])
    results = {Path(m).name: run(m, inputs[Path(m).name]) for m in sys.argv[3:]}
    np.savez(sys.argv[2], **results)
    print(tflite_runtime.__version__, np.__version__)


if __name__ == "__main__":
    main()
