"""Throughput of the procedural stoplight generator on one core, single process.

Usage: python benchmarks/generator_speed.py [--n 4000] [--size 96] [--seed 0]

Prints images/s measured with wall-clock time (and with process CPU time, which is
less sensitive to other load on the machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import cv2

try:
    from edgepilot.draw import stoplight
except ImportError:  # running from a plain checkout: import the module file directly
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
    import stoplight  # type: ignore[no-redef]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="images per timed run")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    args = parser.parse_args()

    cv2.setNumThreads(1)  # one core: no OpenCV worker threads
    config = stoplight.SceneConfig(size=args.size)
    stoplight.generate(64, seed=args.seed, config=config)  # warm-up (first-call allocations)

    best_wall = best_cpu = float("inf")
    for k in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        stoplight.generate(args.n, seed=args.seed + k + 1, config=config)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    print(f"stoplight.generate {args.size}x{args.size}, n={args.n}, "
          f"best of {args.repeats}, 1 thread")
    print(f"  wall: {args.n / best_wall:8.0f} images/s  ({1e6 * best_wall / args.n:.0f} us/image)")
    print(f"  cpu:  {args.n / best_cpu:8.0f} images/s  ({1e6 * best_cpu / args.n:.0f} us/image)")


if __name__ == "__main__":
    main()
