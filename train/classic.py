"""The two classic first networks, trained end to end like the stoplight models.

* The stoplight neuron: inputs green, yellow, red (1 = lit), one sigmoid neuron that says
  "go" exactly when green - red - 0.5 > 0.
* Nielsen's 784-15-10 digit network, trained with plain SGD on the quadratic cost as in his
  book (or a modern optimizer), and a small CNN for comparison.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from edgepilot.errors import InputError, require
from edgepilot.meta import ModelMeta
from edgepilot.runtime.image import mnist_style
from edgepilot.train.checkpoint import save_checkpoint
from edgepilot.train.digits import load_digits
from edgepilot.train.models import count_parameters, create_model
from edgepilot.train.trainer import TrainConfig, accuracy, fit

# torch comes with the export extra; say so instead of a bare ModuleNotFoundError.
torch = require("torch", "export", "Training the classic models")

__all__ = ["TRUTH_TABLE", "rule", "neuron_meta", "train_neuron", "digits_meta", "train_digits"]

#: Every combination of (green, yellow, red), 8 rows.
TRUTH_TABLE = np.array(list(itertools.product((0, 1), repeat=3)), np.float32)


def rule(inputs: np.ndarray) -> np.ndarray:
    """The decision the neuron must learn: go (1) when green - red - 0.5 > 0."""
    inputs = np.atleast_2d(inputs)
    return (inputs[:, 0] - inputs[:, 2] - 0.5 > 0).astype(np.int64)


def neuron_meta() -> ModelMeta:
    return ModelMeta(name="neuron", labels=("stop", "go"), input_size=(1, 3), layout="NC",
                     color="GRAY", mean=(0.0,), std=(1.0,), output="sigmoid",
                     preprocess="none",
                     extra={"inputs": ["green", "yellow", "red"], "dataset": "neuron"})


def train_neuron(out: str | Path = "runs/neuron", *, steps: int = 2000, lr: float = 1.0,
                 seed: int = 0) -> dict:
    """Learn the rule from the truth table with full-batch gradient descent on the
    cross-entropy of the sigmoid; save ``<out>/neuron.pt``."""
    torch.manual_seed(seed)
    model = create_model("neuron")
    x = torch.from_numpy(TRUTH_TABLE)
    y = torch.from_numpy(rule(TRUTH_TABLE)).float()[:, None]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        decisions = (model(x)[:, 0] > 0.5).long().numpy()
    weights = model.linear.weight.detach()[0].tolist()
    summary = {"weights": {"green": weights[0], "yellow": weights[1], "red": weights[2]},
               "bias": float(model.linear.bias.detach()[0]), "loss": float(loss.detach()),
               "decisions_match_rule": bool((decisions == rule(TRUTH_TABLE)).all())}
    path = save_checkpoint(Path(out) / "neuron.pt", model, arch="neuron", config={},
                           meta=neuron_meta(), metrics=summary)
    return {**summary, "checkpoint": str(path)}


def digits_meta(arch: str) -> ModelMeta:
    """Nielsen's network takes 0..1 pixels as a 784 vector; the CNN normalised 28x28 images."""
    common = dict(name="digits", labels=tuple("0123456789"), input_size=(28, 28),
                  color="GRAY", preprocess="mnist", extra={"dataset": "digits", "arch": arch})
    if arch == "nielsen":
        return ModelMeta(layout="NC", mean=(0.0,), std=(1.0,), **common)
    return ModelMeta(layout="NCHW", mean=(0.13,), std=(0.31,), **common)


#: (arch, optimizer) -> hyper-parameters. "sgd" on Nielsen's network is the book's recipe:
#: quadratic cost, mini-batches of 10, learning rate 3.0, 30 epochs.
DIGIT_RECIPES = {
    ("nielsen", "sgd"): TrainConfig(epochs=30, batch_size=10, lr=3.0, optimizer="sgd",
                                    loss="quadratic"),
    ("nielsen", "adamw"): TrainConfig(epochs=30, batch_size=32, lr=1e-2, weight_decay=1e-4),
    ("digit_cnn", "adamw"): TrainConfig(epochs=15, batch_size=64, lr=4e-3),
    ("digit_cnn", "sgd"): TrainConfig(epochs=15, batch_size=64, lr=0.1, optimizer="sgd"),
}


def _digit_images(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) MNIST -> (N, 28, 28, 1) through the same normalisation as inference."""
    return np.stack([mnist_style(img) for img in images])


def train_digits(out: str | Path = "runs/digits", *, arch: str = "nielsen",
                 optimizer: str = "sgd", seed: int = 0, progress: bool = True,
                 log=print) -> dict:
    """Train a digit classifier on MNIST (or the offline sample); save ``<out>/digits.pt``."""
    if (arch, optimizer) not in DIGIT_RECIPES:
        archs = sorted({a for a, _ in DIGIT_RECIPES})
        raise InputError(f"No digits recipe for arch={arch} with optimizer={optimizer}. "
                         f"Digits architectures: {', '.join(archs)}")
    torch.manual_seed(seed)
    started = time.perf_counter()
    train, val = load_digits("train"), load_digits("val")
    test = load_digits("test")
    log(f"data: {train.source}; {val.source}")
    meta = digits_meta(arch)
    model = create_model(arch)
    config = TrainConfig(**{**vars(DIGIT_RECIPES[arch, optimizer]), "seed": seed,
                            "progress": progress})
    train_x, val_x = _digit_images(train.images), _digit_images(val.images)
    history = fit(model, (train_x, train.labels), (val_x, val.labels), meta, config)
    summary = {
        "arch": arch, "optimizer": optimizer, "parameters": count_parameters(model),
        "val_accuracy": history["val_accuracy"], "n_val": len(val.labels),
        "test_accuracy": accuracy(model, _digit_images(test.images), test.labels, meta),
        "test_source": test.source, "train_source": train.source,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(out)
    path = save_checkpoint(out / "digits.pt", model, arch=arch, config={}, meta=meta,
                           metrics=summary)
    (out / "digits.metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "checkpoint": str(path)}
