"""Never slower than float: keep in float the kinds of layers that int8 makes slower here.

On CPUs without int8 dot-product instructions some int8 kernels lose to float ones (on an AMD
Zen 3: depthwise 3x3 convolutions at 0.58-0.74x, the 3-channel stem at 0.53x; see
benchmarks/int8_layers.py), so a whole int8 file can be slower than its float one. After the
layout and the accuracy guard have chosen, each kind of layer (stem, depthwise, pointwise,
other convolutions, fully connected) is tried in float, timed against the int8 file on this
CPU (interleaved, one thread), and the kind whose float copy makes the file fastest is kept in
float if it is faster by more than the timing noise and the accuracy budget still holds; then
the next, until no kind gains. The report lists each kind with its timings and why it was kept
or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["keep_slow_kinds_float", "interleaved_ms", "SPEED_GAIN", "SLOW_ENOUGH_MS"]

#: A kind goes to float only if the file gets this much faster: timings on a shared machine
#: wobble by a few percent, and a wobble must not decide.
SPEED_GAIN = 0.05
#: Float models faster than this (ms, 1 thread) are not searched: the choice cannot matter.
SLOW_ENOUGH_MS = 2.0


def interleaved_ms(calls: dict, seconds: float) -> dict:
    """Per key, the fastest of its rounds' mean latencies (ms) of `calls[key]()`. The calls
    are timed in alternation, so load on the machine hits all alike; the fastest round is the
    one least disturbed by other processes."""
    runs = {}
    for key, call in calls.items():
        call()  # warm-up: first-run allocations
        started = time.perf_counter()
        call()
        runs[key] = max(1, int(0.02 / max(time.perf_counter() - started, 1e-6)))
    best = dict.fromkeys(calls, float("inf"))
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < 3 or (time.perf_counter() < deadline and rounds < 50):
        for key, call in calls.items():
            started = time.perf_counter()
            for _ in range(runs[key]):
                call()
            best[key] = min(best[key], (time.perf_counter() - started) / runs[key] * 1000)
        rounds += 1
    return best


def keep_slow_kinds_float(kinds: dict[str, list[str]], current: Path,
                          quantize: Callable[[list[str]], Path],
                          time_ms: Callable[[dict[str, Path]], dict[str, float]],
                          confirm: Callable[[list[str]], Path | None] | None = None
                          ) -> tuple[Path, list[str], list[dict]]:
    """Greedily keep in float the kinds of layers that make the int8 file slower.

    Args:
        kinds: kind ("depthwise convolutions") -> the layers of that kind, as `quantize` names
            them.
        current: the int8 file chosen so far (every layer int8, or what the guard kept).
        quantize: writes an int8 file with these layers (beside those the guard kept) in
            float, to be timed, and returns it.
        time_ms: milliseconds per inference of each file, timed together on this CPU.
        confirm: the file to keep with these layers in float, or None where it breaks the
            accuracy budget (None: the timed file is kept; a layer in float never loses
            accuracy to its int8 copy).

    Returns:
        the file to keep, the layers kept in float for speed, and one note per kind.
    """
    kept: list[str] = []
    notes = {kind: {"kind": kind, "layers": len(layers), "chosen": "int8"}
             for kind, layers in kinds.items() if layers}
    remaining = [kind for kind in notes]
    while remaining:
        trials = {kind: quantize(kept + kinds[kind]) for kind in remaining}
        ms = time_ms({"int8": current, **trials})
        base = ms["int8"]
        for kind in remaining:
            notes[kind].update(int8_ms=round(base, 4), with_float_ms=round(ms[kind], 4))
        faster = sorted((k for k in remaining if ms[k] < base * (1 - SPEED_GAIN)),
                        key=ms.__getitem__)
        chosen = None
        for kind in faster:
            confirmed = trials[kind] if confirm is None else confirm(kept + kinds[kind])
            if confirmed is not None:
                chosen = kind
                break
            notes[kind]["why"] = (f"{ms[kind]:.3f} ms in float against {base:.3f} ms in int8, "
                                  "but in float the accuracy budget no longer holds")
        for kind in remaining:
            if kind != chosen and "why" not in notes[kind]:
                notes[kind]["why"] = (
                    f"{ms[kind]:.3f} ms with them in float against {base:.3f} ms in int8: "
                    + ("slower" if ms[kind] >= base else
                       f"within the timing noise ({SPEED_GAIN:.0%})"
                       if kind not in faster else "a faster kind went first"))
        if chosen is None:
            break
        kept += kinds[chosen]
        current = confirmed
        notes[chosen].update(chosen="float", why=(
            f"{ms[chosen]:.3f} ms with them in float against {base:.3f} ms in int8 "
            f"({1 - ms[chosen] / base:.0%} faster), accuracy budget kept"))
        remaining = [k for k in remaining if k != chosen and k in faster]
        for kind in remaining:  # re-measured against the new file next round
            notes[kind].pop("why", None)
    return current, kept, list(notes.values())
