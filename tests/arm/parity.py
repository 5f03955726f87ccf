"""Run every model of the bundle beside this file on the images in images.npz and print the
raw outputs (dequantized, float32, in a base64 .npz) as JSON, with each output's
quantization step. The same file runs
on the emulated board and here, so the two sides differ only in the machine.

    python -I parity.py            # in a bundle folder holding images.npz
"""

import base64
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the bundle's copy of edgepilot's runtime

import numpy as np  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.runtime import preprocess  # noqa: E402
from edgepilot.runtime.detection import letterbox  # noqa: E402


def main() -> None:
    images = np.load(HERE / "images.npz")
    report = {}
    for name in json.loads((HERE / "bundle.json").read_text())["models"]:
        model = edgepilot.load(HERE / name, threads=1)
        meta = model.meta
        detector = meta.task == "detection"
        arrays = {}
        chosen = images["street" if detector else "scenes"]
        for i, image in enumerate(chosen):
            if detector:
                image = letterbox(image, meta.input_size)[0]
            y = model(preprocess(image, meta))
            for k, a in enumerate(y if isinstance(y, tuple) else (y,)):
                arrays[f"{i}_{k}"] = np.asarray(a, np.float32)
        packed = io.BytesIO()
        np.savez_compressed(packed, **arrays)
        report[name] = {"npz": base64.b64encode(packed.getvalue()).decode(),
                        "images": len(chosen), "count": len(model.outputs),
                        "backend": model.backend,
                        "steps": [o.scale if o.quantized else 0.0 for o in model.outputs]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
