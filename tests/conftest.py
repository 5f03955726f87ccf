"""Shared fixtures: tiny models built and trained here, never committed."""

from __future__ import annotations

import numpy as np
import pytest

from edgepilot.meta import ModelMeta

LABELS = ("red", "yellow", "green", "none")


@pytest.fixture(scope="session")
def tiny_meta() -> ModelMeta:
    return ModelMeta(name="tiny", labels=LABELS, input_size=(32, 32), layout="NCHW",
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="session")
def colour_data():
    """A learnable toy task: the label is which of R, G, B (or none) dominates a blob.

    Returns (images (N, 32, 32, 3) uint8 RGB, labels (N,)).
    """
    rng = np.random.default_rng(0)
    n = 512
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, size=(n, 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        if label < 3:
            y, x = rng.integers(4, 20, size=2)
            images[i, y:y + 10, x:x + 10, (0, 1, 2)[label]] = 230
    return images, labels


@pytest.fixture(scope="session")
def trained_tiny(tiny_meta, colour_data):
    """A stoplight_cnn at width 8 trained for a few steps on `colour_data`."""
    pytest.importorskip("torch")
    import torch

    from edgepilot.train.models import create_model
    from edgepilot.train.trainer import TrainConfig, fit

    torch.manual_seed(0)
    net = create_model("stoplight_cnn", num_classes=4, width=8)
    history = fit(net, colour_data, colour_data, tiny_meta,
                  TrainConfig(steps=150, batch_size=64, lr=1e-2, progress=False))
    return net.eval(), history


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, trained_tiny, tiny_meta, colour_data):
    """`trained_tiny` exported to ONNX with its report."""
    import torch

    import edgepilot

    net, _ = trained_tiny
    out = tmp_path_factory.mktemp("export") / "tiny"
    [report] = edgepilot.export(net, torch.zeros(1, 3, 32, 32), formats="onnx", out=out,
                                meta=tiny_meta, val_data=colour_data, quiet=True)
    return report
