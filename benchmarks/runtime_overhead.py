"""What edgepilot's `Model` call costs on top of the raw interpreter, on the same file.

For each model, the raw onnxruntime session (`session.run`) or LiteRT interpreter
(`set_tensor` / `invoke` / `get_tensor`) and `Model(x)` run the same prepared input,
interleaved: every round times a block of each, in alternating order. Prints p50 of both,
the difference in microseconds and as a share of the raw p50.
Targets: <= 3% of p50 for the MobileNet-style model, <= 20 us for the stoplight model.

    python benchmarks/runtime_overhead.py [--rounds 40] [--runs 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.train.checkpoint import load_checkpoint
from edgepilot.train.models import create_model


def export(out: Path) -> dict[str, str]:
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    mobilenet = create_model("mobilenet", width=1.0, num_classes=4).eval()
    mobile_meta = meta.replace(name="mobilenet", input_size=(224, 224))
    files = {}
    for name, model, model_meta in (("stoplight", net, meta), ("mobilenet_224", mobilenet,
                                                                 mobile_meta)):
        for report in edgepilot.export(model, torch.zeros(model_meta.input_shape),
                                       formats=["onnx", "tflite"], out=out / name,
                                       meta=model_meta, quiet=True):
            files[f"{name}.{report.format}"] = report.path
    return files


def raw_runner(model, x: np.ndarray):
    """The bare interpreter call the Model wraps, fed the same (already converted) array."""
    backend = model._backend
    if model.format.name == "onnx":
        session, feed = backend.session, {model.inputs[0].name: x}
        return lambda: session.run(None, feed)
    interpreter = backend.interpreter
    index_in = interpreter.get_input_details()[0]["index"]
    index_out = interpreter.get_output_details()[0]["index"]

    def run():
        interpreter.set_tensor(index_in, x)
        interpreter.invoke()
        return interpreter.get_tensor(index_out).copy()

    return run


def block(fn, runs: int) -> float:
    started = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - started) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = export(Path(tmp))
        print(f"threads={args.threads}; {args.rounds} interleaved rounds x {args.runs} runs; "
              "p50 of per-round means")
        print(f"{'model':<22}{'raw us':>10}{'Model us':>10}{'overhead':>12}{'share':>9}")
        for name, path in files.items():
            model = edgepilot.load(path, threads=args.threads)
            image = np.random.default_rng(0).integers(0, 256, (*model.meta.input_size, 3),
                                                      np.uint8)
            x = edgepilot.runtime.preprocess(image, model.meta)
            raw = raw_runner(model, x)
            def call(model=model, x=x):
                return model(x)

            for fn in (raw, call):
                block(fn, 20)  # warm-up
            raws, wrapped = [], []
            for r in range(args.rounds):
                pair = ((raws, raw), (wrapped, call)) if r % 2 == 0 else \
                    ((wrapped, call), (raws, raw))
                for sink, fn in pair:
                    sink.append(block(fn, args.runs))
            raw_p50, wrapped_p50 = statistics.median(raws), statistics.median(wrapped)
            over = wrapped_p50 - raw_p50
            print(f"{name:<22}{raw_p50 * 1e6:>10.1f}{wrapped_p50 * 1e6:>10.1f}"
                  f"{over * 1e6:>10.1f}us{100 * over / raw_p50:>8.2f}%")


if __name__ == "__main__":
    main()
