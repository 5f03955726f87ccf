"""The int8 accuracy guard: keep the layers that quantize worst in float until the accuracy
drop is within budget.

Silent accuracy collapse is the failure users hit most with int8. After each int8 export the
guard measures accuracy on validation images; while the drop exceeds `max_drop` points it asks
the format's exporter which layers lose the most signal-to-quantization-noise ratio (SQNR,
float vs quantized activations on calibration images), tries the worst few in float, and keeps
the one that recovers the most accuracy. Once within budget, it tries each kept layer back in
int8 and leaves it there if the budget still holds: a layer kept early can be made useless by
one kept later, and every float layer costs size and speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError

__all__ = ["Guard", "LayerError", "channel_sqnr", "rank_by_sqnr_loss"]

#: Ceiling of any one channel's SQNR, in dB.
EXACT_DB = 60.0
#: SQNR credited to the graph input: about what a well-used 8-bit quantizer keeps of a real
#: activation, so a layer is blamed only for what it loses beyond being 8-bit.
INPUT_DB = 40.0


@dataclass(frozen=True)
class LayerError:
    """One tensor's quantization error: its SQNR in dB (higher is better) and how many dB
    the layer producing it lost against its inputs (higher is worse)."""

    layer: str
    sqnr_db: float
    loss_db: float = 0.0
    label: str = ""  # the layer as the user's module names it (features.3.conv.0), if known

    @property
    def shown(self) -> str:
        return self.label or self.layer


def channel_sqnr(reference: np.ndarray, quantized: np.ndarray, channel_axis: int) -> float:
    """Median over channels of each channel's SQNR in dB.

    Per channel, because the classic int8 failure is one channel with a huge range: it
    dominates a whole-tensor SQNR (which then looks fine) while every other channel of the
    tensor is crushed to a few quantization steps; the median reports the typical channel.
    """
    axis = channel_axis % reference.ndim
    ref = np.moveaxis(reference.astype(np.float64), axis, 0).reshape(reference.shape[axis], -1)
    err = ref - np.moveaxis(quantized.astype(np.float64), axis, 0).reshape(ref.shape)
    power, noise = (ref ** 2).sum(1), (err ** 2).sum(1)
    live = power > 1e-12 * max(power.max(), 1e-30)  # channels that are never active say nothing
    if not live.any():
        return EXACT_DB
    db = 10 * np.log10(power[live] / np.maximum(noise[live], 1e-30))
    return float(np.median(np.clip(db, -20.0, EXACT_DB)))


def rank_by_sqnr_loss(order: list[str], inputs_of: dict[str, list[str]],
                      sqnr: dict[str, float]) -> list[LayerError]:
    """Tensors ranked by the SQNR their producing layer lost: the layer where accuracy is
    destroyed, not the downstream layers that merely inherit the damage.

    Args:
        order: activation tensors in execution order.
        inputs_of: tensor -> the activation tensors its producing layer reads.
        sqnr: tensor -> SQNR in dB of the quantized model against the float one.
    """
    # A tensor that was not measured (fused away, e.g. a conv output feeding a ReLU) carries
    # the SQNR of what it was computed from.
    effective: dict[str, float] = {}
    ranked = []
    for tensor in order:
        before = min((effective.get(t, INPUT_DB) for t in inputs_of.get(tensor, [])),
                     default=INPUT_DB)
        if tensor not in sqnr:
            effective[tensor] = before
            continue
        effective[tensor] = sqnr[tensor]
        ranked.append(LayerError(tensor, sqnr[tensor], before - sqnr[tensor]))
    return sorted(ranked, key=lambda e: -e.loss_db)


@dataclass
class Guard:
    """Accuracy budget for an int8 export.

    Args:
        evaluate: accuracy (0..1) of a model file on the validation images.
        baseline: accuracy of the float PyTorch model on the same images.
        max_drop: allowed drop in percentage points.
        max_steps: how many layers may be moved to float before giving up.
        candidates: how many of the worst-ranked layers are tried at each step.
        budget_s: seconds the guard may spend (None: no limit); it stops trying when the next
            step would not fit, and fails saying so.
        progress: called with one line per step (what was measured, what is tried next).
        clock: seconds, for the budget (tests pass a fake one).
        measure: what `evaluate` measures, as the progress lines and errors name it
            (without labels: the top-1 accuracy expected under PyTorch's probabilities).
        offer_qat: a refusal suggests int8 fine-tuning (the export was made without it).
    """

    evaluate: Callable[[Path], float]
    baseline: float
    max_drop: float = 1.0
    max_steps: int = 8
    candidates: int = 3
    budget_s: float | None = None
    progress: Callable[[str], None] | None = None
    clock: Callable[[], float] = time.monotonic
    measure: str = "accuracy"
    offer_qat: bool = False
    kept: list[dict] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)

    def run(self, quantize: Callable[[list[str]], Path],
            rank: Callable[[Path], list[LayerError]], fmt: str) -> Path:
        """Quantize, measure, and move layers to float until within budget.

        `quantize(keep_float)` writes a model keeping those tensors in float and returns it;
        `rank(model)` lists its tensors, worst first (`rank_by_sqnr_loss`). SQNR proposes the
        `candidates` worst layers, accuracy decides: each is tried and the best one kept.
        """
        started = self.clock()
        keep: list[str] = []
        shown: dict[str, str] = {}
        path = quantize(keep)
        accuracy = self.evaluate(path)
        self._attempt(keep, accuracy)
        trial_s = self.clock() - started  # one quantize + evaluate: the unit of the budget
        self._say(f"{fmt} int8: {self.measure} {100 * accuracy:.2f}% (drop "
                  f"{self._drop(accuracy):.2f} points, budget {self.max_drop})")
        out_of_time = False
        rank_s = trial_s  # the cost of ranking, until it is measured

        def over(next_s: float) -> bool:  # would the next piece of work end past the budget?
            return self.budget_s is not None and \
                self.clock() - started + next_s > self.budget_s

        while self._drop(accuracy) > self.max_drop and len(keep) < self.max_steps:
            if over(rank_s + self.candidates * trial_s):
                out_of_time = True
                break
            ranked_at = self.clock()
            proposals = [e for e in rank(path) if e.layer not in keep][: self.candidates]
            rank_s = self.clock() - ranked_at
            if not proposals:
                break
            if over(len(proposals) * trial_s):
                out_of_time = True
                break
            trials = []
            for number, proposal in enumerate(proposals, 1):
                shown[proposal.layer] = proposal.shown
                self._say(f"{fmt} int8 guard step {len(keep) + 1}/{self.max_steps}: trying "
                          f"{proposal.shown} in float ({number}/{len(proposals)}, it loses "
                          f"{proposal.loss_db:.1f} dB)")
                trial = quantize(keep + [proposal.layer])
                trials.append((self.evaluate(trial), proposal, trial))
                self._attempt(keep + [proposal.layer], trials[-1][0])
            # Best accuracy wins; on a tie, the layer SQNR ranked worse (listed first).
            accuracy, chosen, path = max(trials, key=lambda t: t[0])
            keep.append(chosen.layer)
            self._say(f"{fmt} int8: keeping {chosen.shown} in float: {self.measure} "
                      f"{100 * accuracy:.2f}% (drop {self._drop(accuracy):.2f} points)")
            self.kept.append({
                "layer": chosen.shown, "tensor": chosen.layer,
                "sqnr_db": round(chosen.sqnr_db, 2), "loss_db": round(chosen.loss_db, 2),
                "reason": f"its layer loses {chosen.loss_db:.1f} dB of SQNR (down to "
                          f"{chosen.sqnr_db:.1f} dB); in float the drop is "
                          f"{self._drop(accuracy):.2f} points (best of {len(trials)} tried)"})
        if self._drop(accuracy) <= self.max_drop:
            return self._prune(quantize, keep, path, accuracy, fmt, over, trial_s)
        names = ", ".join(shown.get(k, k) for k in keep) or "none could be"
        spent = self.clock() - started
        why = (f"the guard stopped at its time budget ({self.budget_s:.0f} s; {spent:.0f} s "
               f"spent, about {trial_s:.0f} s per trial)" if out_of_time else
               f"even with {len(keep)} layer(s) kept in float ({names})")
        raise EdgepilotError(
            f"{fmt} int8 loses {self._drop(accuracy):.2f} points of {self.measure} (budget "
            f"{self.max_drop}): {why}. Try more or more representative calibration images "
            "(calib=), another calibration method, a larger max_drop= or guard_budget=, "
            + ("int8 fine-tuning without labels (qat=True), " if self.offer_qat
               else "") + "or fp16 / dynamic precision."
        )

    def _prune(self, quantize: Callable[[list[str]], Path], keep: list[str], path: Path,
               accuracy: float, fmt: str, over: Callable[[float], bool], trial_s: float) -> Path:
        """Put kept layers back in int8, first kept first, while the budget still holds."""
        for layer in list(keep):
            if over(trial_s):
                break
            rest = [k for k in keep if k != layer]
            if not rest:  # all int8 was measured first, and it was over budget
                break
            trial = quantize(rest)
            trial_accuracy = self.evaluate(trial)
            self._attempt(rest, trial_accuracy)
            if self._drop(trial_accuracy) > self.max_drop:
                continue
            keep[:], path, accuracy = rest, trial, trial_accuracy
            entry = next(k for k in self.kept if k["tensor"] == layer)
            self.kept.remove(entry)
            self._say(f"{fmt} int8: {entry['layer']} is not needed in float after all: "
                      f"{self.measure} {100 * accuracy:.2f}% (drop {self._drop(accuracy):.2f} "
                      "points)")
        return path

    def holds(self, path: Path) -> bool:
        """Whether a file still meets the budget (one more evaluation)."""
        return self._drop(self.evaluate(path)) <= self.max_drop

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def _drop(self, accuracy: float) -> float:
        return 100 * (self.baseline - accuracy)

    def _attempt(self, keep: list[str], accuracy: float) -> None:
        self.attempts.append({"kept_float": list(keep), "accuracy": accuracy,
                              "drop_points": round(self._drop(accuracy), 3)})
