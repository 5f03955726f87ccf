"""Quantization-aware fine-tuning that needs no labels: the int8 model learns to match the float
model's own outputs on the calibration images.

It starts where `export.rounding` ends (batch norms folded, per-channel int8 weights rounded by
output error, biases corrected) and fine-tunes that module with int8 simulated in its forward
pass:

- every Conv2d and Linear weight is trained in units of its channel's int8 step (the scale
  max |w| / 127 every exporter uses, fixed at the start; each channel's largest weight stays at
  ±127) and rounded onto that grid, the rounding's gradient passed straight through, so the
  weights written at the end are the very codes it trained with. Adam moves every parameter by
  about its rate per update whatever its size; steps differ by orders of magnitude between
  channels, so in weight units one rate flips the codes of small channels at once and barely
  moves large ones;
- every Conv2d and Linear input is fake-quantized to uint8 with the min/max range of the
  calibration images (re-measured each epoch): the ranges each format's `minmax` calibrator
  then measures on the same images for the same tensors.

The loss is distillation, not labels: KL divergence from the float model's class probabilities
(``meta.output == "logits"``), or, for other outputs (detectors, scores), the mean squared error
scaled by each output's variance. Images are mirrored and cropped at random (the float model
labels each view). An eighth of the calibration images is held out; the epoch whose int8
simulation is closest to the float model on them is kept, and the starting point (bias
correction alone) is an epoch like any other, so fine-tuning never returns a model worse on
the held-out images than the one it started from.

Measured on EfficientNet-Lite0 (benchmarks/real_int8.py, 256 calibration crops, 300 others):
sixteen epochs at 0.02 steps per update took 426 s on 2 cores and cut the held-out KL from
0.0040 to 0.0024; the int8 ONNX, TFLite and ExecuTorch files went from KL 0.0046-0.0055
(rounding and correction alone) to 0.0036-0.0037, top-5 overlap with PyTorch from 0.96 to
0.97. Training in weight units (Adam at 2e-5) reached only 0.0042-0.0046 in the files; twelve
epochs at 0.01 steps 0.0038-0.0042, at 0.02 0.0035-0.0038. Before the rounding by output
error, a warm-up epoch, a moving average of the weights, or also rounding the outputs no
activation reads (projections, logits) did no better than the plain recipe.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np

__all__ = ["finetune", "EPOCHS", "LEARNING_RATE", "STEP_RATE"]

#: Passes over the calibration images (fewer when the time budget runs out).
EPOCHS = 16
#: Adam's learning rate for biases, decayed to zero over the planned steps (cosine).
LEARNING_RATE = 2e-5
#: The same for weights, in units of their channel's int8 step: Adam moves every parameter by
#: about its rate each update, and steps differ by orders of magnitude from one channel to the
#: next, so one rate in weight units flips the codes of small channels at once.
STEP_RATE = 0.02
#: Images per step.
BATCH = 16
#: One calibration image in this many is held out to choose the epoch kept.
HOLD_OUT_EVERY = 8


def finetune(teacher, student, inputs: list[np.ndarray], *, classifier: bool,
             budget_s: float | None = None, epochs: int = EPOCHS,
             learning_rate: float = LEARNING_RATE, step_rate: float = STEP_RATE,
             progress: Callable[[str], None] | None = None, seed: int = 0) -> tuple[object, dict]:
    """Fine-tune `student` (a BN-folded copy of `teacher` with rounded weights, from
    `round_weights`) with simulated int8, distilling from `teacher`; returns the module with its
    weights on the int8 grid and the report's note.

    Args:
        teacher: the float model, in eval mode (not changed).
        student: the module to fine-tune (not changed: a copy is trained).
        inputs: calibration inputs of batch one, as the modules take them.
        classifier: the first output is class logits (KL divergence is the loss).
        budget_s: seconds it may spend (None: no limit); it stops before a step it cannot finish.
        epochs: passes over the training images.
        learning_rate: Adam's for biases, decayed to zero (cosine).
        step_rate: Adam's for weights, in int8 steps of their channel.
        progress: called with one line per epoch.
    """
    import torch

    with torch.enable_grad():  # export() runs under no_grad
        return _finetune(teacher, student, inputs, classifier, budget_s, epochs, learning_rate,
                         step_rate, progress, seed)


def _finetune(teacher, student, inputs, classifier, budget_s, epochs, learning_rate, step_rate,
              progress, seed):
    import torch

    started = time.perf_counter()
    say = progress or (lambda line: None)
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.concatenate(inputs))
    held = np.arange(len(x)) % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1
    if held.sum() == 0 or (~held).sum() < 2:
        return student, {"applied": False, "why": f"only {len(x)} calibration image(s); "
                         f"fine-tuning needs at least {HOLD_OUT_EVERY}"}
    train, check = x[torch.from_numpy(~held)], x[torch.from_numpy(held)]
    model = copy.deepcopy(student).eval()
    layers = [layer for layer in model.modules()
              if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))]
    if not layers:
        return student, {"applied": False, "why": "no Conv2d or Linear layer"}
    with torch.no_grad():
        target_train, target_check = _outputs(teacher, train), _outputs(teacher, check)
    loss_of = _kl if classifier else _scaled_mse(target_train)
    for layer in layers:
        torch.nn.utils.parametrize.register_parametrization(layer, "weight",
                                                            _in_steps(layer.weight))
    ranges = _Ranges(layers)
    steps_per_epoch = -(-len(train) // BATCH)
    weights = [layer.parametrizations.weight.original for layer in layers]
    chosen = {id(p) for p in weights}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    optimizer = torch.optim.Adam([{"params": weights, "lr": step_rate},
                                  {"params": others, "lr": learning_rate}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)

    def held_out_loss() -> float:
        ranges.measure(model, train)
        with ranges.quantizing(), torch.no_grad():
            return float(loss_of(_outputs(model, check), target_check))

    history = [round(held_out_loss(), 6)]
    best = (history[0], copy.deepcopy(model.state_dict()), 0)
    step_s, stopped = None, None
    done = 0
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()  # ranges: measured by the last held_out_loss()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        with ranges.quantizing():
            for start in range(0, len(train), BATCH):
                elapsed = time.perf_counter() - started
                if budget_s is not None and elapsed + (step_s or 0.0) > budget_s:
                    stopped = (f"stopped at its time budget ({budget_s:.0f} s) in epoch "
                               f"{epoch}")
                    break
                step_started = time.perf_counter()
                pick = order[start:start + BATCH]
                batch = train[pick]
                if batch.ndim == 4:  # images: a new view, labelled by the float model
                    batch = _augmented(batch, generator)
                    with torch.no_grad():
                        target = _outputs(teacher, batch)
                else:
                    target = [t[pick] for t in target_train]
                loss = loss_of(_outputs(model, batch, grad=True), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                step_s = time.perf_counter() - step_started
        if stopped is not None:
            break
        done = epoch
        history.append(round(held_out_loss(), 6))
        if history[-1] < best[0]:
            best = (history[-1], copy.deepcopy(model.state_dict()), epoch)
        say(f"int8 fine-tuning epoch {epoch}/{epochs}: distillation loss "
            f"{np.mean(losses):.5f}, on the {len(check)} held-out images {history[-1]:.5f} "
            f"(start {history[0]:.5f}; {time.perf_counter() - epoch_started:.0f} s)")
    model.load_state_dict(best[1])
    for layer in layers:  # the weights become the grid values they trained as
        torch.nn.utils.parametrize.remove_parametrizations(layer, "weight",
                                                           leave_parametrized=True)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    note = {"applied": True, "loss": "KL divergence" if classifier else "scaled MSE",
            "epochs": done, "epochs_planned": epochs, "kept_epoch": best[2],
            "images": len(train), "held_out": len(check),
            "held_out_loss": {"start": history[0], "kept": best[0], "per_epoch": history[1:]},
            "learning_rate": learning_rate, "step_rate": step_rate,
            "seconds": round(time.perf_counter() - started, 1)}
    if stopped is not None:
        note["stopped"] = stopped
    return model, note


def _augmented(batch, generator):
    """Each image mirrored at random and half of them cropped to 70-100% of their side and
    scaled back: the teacher labels whatever the student sees, so new views are free data."""
    import torch
    import torch.nn.functional as F

    height, width = batch.shape[-2:]
    mirror = torch.rand(len(batch), generator=generator) < 0.5
    batch = torch.where(mirror[:, None, None, None], batch.flip(-1), batch)
    if min(height, width) < 8:
        return batch
    out = []
    for image in batch:
        if float(torch.rand(1, generator=generator)) < 0.5:
            side = float(torch.empty(1).uniform_(0.7, 1.0, generator=generator))
            h, w = max(1, round(height * side)), max(1, round(width * side))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            image = F.interpolate(image[None, :, top:top + h, left:left + w],
                                  size=(height, width), mode="bilinear",
                                  align_corners=False)[0]
        out.append(image)
    return torch.stack(out)


def _in_steps(weight):
    """A parametrization that trains `weight` in units of its channel's int8 step (scale
    max |w| / 127, fixed at the start) and returns it rounded onto that grid, the rounding's
    gradient passed straight through; each channel's largest weight stays at ±127 steps, so the
    scale every exporter derives from the weights does not move."""
    import torch

    from edgepilot.export.rounding import _grid_scale

    class InSteps(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            flat = weight.detach().reshape(len(weight), -1)
            scale = _grid_scale(flat)
            shape = (-1,) + (1,) * (weight.ndim - 1)
            codes = torch.clamp(torch.round(flat / scale[:, None]), -127, 127)
            pinned = torch.zeros_like(flat, dtype=torch.bool)
            pinned.scatter_(1, flat.abs().argmax(dim=1, keepdim=True), True)
            self.register_buffer("scale", scale.reshape(shape))
            self.register_buffer("pinned", pinned.reshape(weight.shape))
            self.register_buffer("pinned_codes", (codes * pinned).reshape(weight.shape))

        def forward(self, steps):
            codes = steps + (torch.clamp(torch.round(steps), -127, 127) - steps).detach()
            return torch.where(self.pinned, self.pinned_codes, codes) * self.scale

        def right_inverse(self, weight):
            return weight / self.scale

    return InSteps(weight)


class _Ranges:
    """uint8 fake quantization of every layer's input, over the min/max range the calibration
    images give it (what a `minmax` calibrator measures for that tensor)."""

    def __init__(self, layers):
        self.layers = layers
        self.span: dict[int, tuple[float, float]] = {}

    def measure(self, model, x) -> None:
        import torch

        span: dict[int, tuple[float, float]] = {}

        def observe(index):
            def hook(_module, args):
                low, high = float(args[0].min()), float(args[0].max())
                old = span.get(index, (0.0, 0.0))  # a uint8 range always holds zero
                span[index] = (min(old[0], low), max(old[1], high))
            return hook

        handles = [layer.register_forward_pre_hook(observe(i))
                   for i, layer in enumerate(self.layers)]
        try:
            with torch.no_grad():
                _outputs(model, x)
        finally:
            for handle in handles:
                handle.remove()
        self.span = span

    def quantizing(self):
        import contextlib

        import torch

        @contextlib.contextmanager
        def active():
            def fake(index):
                def hook(_module, args):
                    low, high = self.span.get(index, (0.0, 0.0))
                    scale = max((high - low) / 255, 1e-8)
                    zero = int(min(255, max(0, round(-low / scale))))
                    return (torch.fake_quantize_per_tensor_affine(args[0], scale, zero, 0, 255),
                            *args[1:])
                return hook

            handles = [layer.register_forward_pre_hook(fake(i))
                       for i, layer in enumerate(self.layers)]
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()

        return active()


def _outputs(module, x, grad: bool = False, batch: int = 32):
    """The module's outputs on `x` as a list of (N, -1) float tensors, in batches."""
    from edgepilot.export.probe import flatten_outputs

    if grad:
        tensors, _ = flatten_outputs(module(x))
        return [t.reshape(len(x), -1).float() for t in tensors]
    parts = []
    for start in range(0, len(x), batch):
        tensors, _ = flatten_outputs(module(x[start:start + batch]))
        parts.append([t.reshape(len(t), -1).float() for t in tensors])
    import torch

    return [torch.cat(column) for column in zip(*parts)]


def _kl(student, teacher):
    """KL divergence from the teacher's class probabilities (first output: logits)."""
    import torch

    log_p = torch.log_softmax(teacher[0], dim=1)
    log_q = torch.log_softmax(student[0], dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def _scaled_mse(reference):
    """Mean squared error per output, each divided by the teacher's variance of it."""
    variances = [max(float(r.var()), 1e-12) for r in reference]

    def loss(student, teacher):
        return sum(((s - t) ** 2).mean() / v for s, t, v in zip(student, teacher, variances)) \
            / len(variances)
    return loss
