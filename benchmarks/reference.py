"""Regenerate benchmarks/reference/: every format and precision of the stoplight model and
of the MobileNet-style model at 224x224, threads 1 and 2, with accuracy where meaningful.

The MobileNet checkpoint is built here, seeded and untrained: it is in the table for speed,
so it gets no accuracy column (its dataset's images only calibrate int8).

    python benchmarks/reference.py [--runs 100]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from edgepilot.assets import shipped_model
from edgepilot.bench import benchmark, export_matrix
from edgepilot.bench_report import append_csv, dump_json, plot, print_table
from edgepilot.train.checkpoint import load_checkpoint, save_checkpoint
from edgepilot.train.models import create_model

OUT = Path(__file__).resolve().parent / "reference"


def mobilenet_checkpoint(folder: Path) -> Path:
    _, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    torch.manual_seed(0)
    net = create_model("mobilenet", width=1.0, num_classes=4).eval()
    # Calibration images come from the stoplight generator, resized to 224.
    return save_checkpoint(folder / "mobilenet_224.pt", net, arch="mobilenet",
                           config={"width": 1.0, "num_classes": 4},
                           meta=meta.replace(name="mobilenet", input_size=(224, 224)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for checkpoint, validate in ((shipped_model("stoplight", ".pt"), True),
                                     (mobilenet_checkpoint(tmp), False)):
            files, failed, data = export_matrix(checkpoint, tmp / checkpoint.stem,
                                                validate=validate)
            results += failed + benchmark([checkpoint, *files], threads=[1, 2],
                                          runs=args.runs, rounds=10, data=data)
    print_table(results)
    dump_json(results, OUT / "results.json")
    csv_path = OUT / "results.csv"
    csv_path.unlink(missing_ok=True)
    append_csv(results, csv_path)
    plot(results, OUT / "bench.png")
    print(f"wrote {OUT}/results.json, results.csv, bench.png")


if __name__ == "__main__":
    main()
