import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepilot.train.models import create_model  # noqa: E402
from edgepilot.train.trainer import TrainConfig, fit, to_tensor  # noqa: E402


def test_a_few_steps_learn_the_toy_task(trained_tiny):
    _, history = trained_tiny
    assert history["val_accuracy"] > 0.9
    assert len(history["epochs"]) > 1
    assert history["epochs"][-1]["loss"] < history["epochs"][0]["loss"]


def test_runs_are_reproducible_by_seed(colour_data, tiny_meta):
    def run():
        torch.manual_seed(123)
        net = create_model("stoplight_cnn", num_classes=4, width=8)
        fit(net, colour_data, colour_data, tiny_meta,
            TrainConfig(steps=5, batch_size=32, seed=3, progress=False))
        return torch.cat([p.flatten() for p in net.parameters()])

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_to_tensor_matches_the_runtime_preprocessing(colour_data, tiny_meta):
    from edgepilot.runtime import preprocess

    images, _ = colour_data
    ours = to_tensor(images[:3], tiny_meta).numpy()
    runtime = np.concatenate([preprocess(img, tiny_meta) for img in images[:3]])
    np.testing.assert_allclose(ours, runtime, atol=1e-6)
