"""Why int8 pays more on some CPUs than others: fp32 vs int8 onnxruntime time per layer kind.

MobileNet-style networks are three kinds of convolution: a stem (3 input channels), depthwise
3x3 and pointwise 1x1. This times each alone, at the sizes MobileNet-224 runs them, as an fp32
ONNX file and as the QDQ int8 file onnxruntime's static quantizer makes of it (int8 weights
per channel, uint8 and int8 activations), on 1 thread, interleaved, and prints the speed-ups
beside the CPU's int8 dot-product features. Pointwise layers hold nearly all of MobileNet's
multiply-adds, so their speed-up bounds the whole network's.

    python benchmarks/int8_layers.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime import quantization as q

#: (name, in channels, out channels, kernel, stride, groups, input side): MobileNet-224's.
LAYERS = (
    ("stem 3x3 s2, 3->32 @224", 3, 32, 3, 2, 1, 224),
    ("depthwise 3x3, 128 @56", 128, 128, 3, 1, 128, 56),
    ("depthwise 3x3, 512 @14", 512, 512, 3, 1, 512, 14),
    ("pointwise 1x1, 128->128 @56", 128, 128, 1, 1, 1, 56),
    ("pointwise 1x1, 512->512 @14", 512, 512, 1, 1, 1, 14),
    ("pointwise 1x1, 1024->1024 @7", 1024, 1024, 1, 1, 1, 7),
)
INT8_FEATURES = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimddp", "i8mm")


class _Reader(q.CalibrationDataReader):
    def __init__(self, inputs):
        self.inputs = iter(inputs)

    def get_next(self):
        return next(self.inputs, None)


def layer_files(folder: Path, layer) -> dict[str, Path]:
    _, c_in, c_out, kernel, stride, groups, side = layer
    conv = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2,
                                               groups=groups), torch.nn.ReLU()).eval()
    x = torch.rand(1, c_in, side, side)
    stem = folder / f"layer{LAYERS.index(layer)}"
    files = {"fp32": stem.with_suffix(".onnx")}
    with warnings.catch_warnings():  # the TorchScript exporter: one plain layer needs no more
        warnings.simplefilter("ignore")
        torch.onnx.export(conv, (x,), str(files["fp32"]), input_names=["x"], dynamo=False)
    rng = np.random.default_rng(0)
    for activations in ("uint8", "int8"):
        files[activations] = stem.with_name(f"{stem.name}_{activations}.onnx")
        q.quantize_static(
            str(files["fp32"]), str(files[activations]),
            _Reader([{"x": rng.random((1, c_in, side, side), np.float32)} for _ in range(4)]),
            quant_format=q.QuantFormat.QDQ, per_channel=True, weight_type=q.QuantType.QInt8,
            activation_type=q.QuantType.QUInt8 if activations == "uint8" else q.QuantType.QInt8)
    return files


def time_files(files: dict[str, Path], side: int, c_in: int, seconds: float) -> dict[str, float]:
    """Fastest round's mean ms per run of each file, 1 thread, files in alternation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for k, p in files.items()}
    x = {"x": np.random.default_rng(1).random((1, c_in, side, side), np.float32)}
    for session in sessions.values():
        session.run(None, x)
    best = dict.fromkeys(sessions, float("inf"))
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for key, session in sessions.items():
            started = time.perf_counter()
            for _ in range(10):
                session.run(None, x)
            best[key] = min(best[key], (time.perf_counter() - started) * 100)
    return best


def cpu_features() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    have = [f for f in INT8_FEATURES if f in flags]
    return ", ".join(have) if have else "none of " + ", ".join(INT8_FEATURES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per layer")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice, once per file
    print(f"CPU: {platform.processor() or platform.machine()}; int8 dot-product features: "
          f"{cpu_features()}; onnxruntime {ort.__version__}, 1 thread")
    print(f"{'layer':<32}{'fp32 ms':>9}{'u8 ms':>9}{'s8 ms':>9}{'fp32/u8':>9}{'fp32/s8':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for layer in LAYERS:
            files = layer_files(Path(tmp), layer)
            ms = time_files(files, layer[6], layer[1], args.seconds)
            print(f"{layer[0]:<32}{ms['fp32']:>9.3f}{ms['uint8']:>9.3f}{ms['int8']:>9.3f}"
                  f"{ms['fp32'] / ms['uint8']:>8.2f}x{ms['fp32'] / ms['int8']:>8.2f}x")


if __name__ == "__main__":
    main()
