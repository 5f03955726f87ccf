import pytest

torch = pytest.importorskip("torch")

from edgepilot.errors import UnknownArchitectureError  # noqa: E402
from edgepilot.train.models import (  # noqa: E402
    count_parameters,
    create_model,
    deepen,
    list_models,
)


def test_registry_lists_the_architectures():
    assert {"stoplight_cnn", "mobilenet"} <= set(list_models())


def test_stoplight_cnn_is_compact_and_classifies_any_input_size():
    net = create_model("stoplight_cnn", num_classes=4).eval()
    assert count_parameters(net) < 150_000
    for size in (64, 96):
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 4)


def test_mobilenet_width_multiplier_scales_parameters():
    small = count_parameters(create_model("mobilenet", width=0.25, num_classes=10))
    full = count_parameters(create_model("mobilenet", width=1.0, num_classes=1000))
    assert 4_000_000 < full < 4_500_000  # MobileNet-v1 1.0 has 4.2M parameters
    assert small < full / 10
    net = create_model("mobilenet", width=0.25, num_classes=10).eval()
    assert net(torch.zeros(1, 3, 96, 96)).shape == (1, 10)


def test_unknown_architecture_suggests_and_lists():
    with pytest.raises(UnknownArchitectureError) as info:
        create_model("mobilnet")
    assert "Did you mean 'mobilenet'?" in str(info.value)
    assert "stoplight_cnn" in str(info.value)
    with pytest.raises(UnknownArchitectureError, match="Bad config"):
        create_model("mobilenet", depth=3)


def _trained_looking(width=8, seed=0):
    """A small stoplight_cnn whose batch norms hold statistics of real-looking activations."""
    torch.manual_seed(seed)
    net = create_model("stoplight_cnn", num_classes=4, width=width)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 3, 64, 64))
    return net.eval()


def test_deepen_adds_blocks_that_start_as_the_identity():
    net = _trained_looking()
    images = torch.randn(32, 3, 64, 64)
    grown = deepen(net, 1, images[:16]).eval()
    assert grown.extra_convs == 1 and len(grown.features) == len(net.features) + 1
    # one 3x3 conv of 3w -> 3w channels (no bias) and its batch norm's scale and shift
    assert count_parameters(grown) - count_parameters(net) == 24 * 24 * 9 + 2 * 24
    with torch.no_grad():
        # the same answers, also on images the calibration never saw
        torch.testing.assert_close(grown(images), net(images), rtol=0, atol=1e-5)
        twice = deepen(grown, 2, images[:16]).eval()
        assert twice.extra_convs == 3
        torch.testing.assert_close(twice(images[16:]), net(images[16:]), rtol=0, atol=1e-5)
    # the trained layers are copied, not shared: training the deeper model leaves `net` as is
    assert grown.features[0][0].weight.data_ptr() != net.features[0][0].weight.data_ptr()
    # in training mode batch norm uses each batch's statistics: close to, not exactly, identity
    grown.train()
    with torch.no_grad():
        assert (grown(images).argmax(1) == net(images).argmax(1)).float().mean() >= 0.9
    # and the deeper model does learn: its new block receives gradients
    grown(images).sum().backward()
    assert grown.features[-1][0].weight.grad.abs().sum() > 0


def test_deepen_refuses_other_models_and_empty_samples():
    with pytest.raises(TypeError, match="deepen grows a StoplightCNN, got MobileNet"):
        deepen(create_model("mobilenet", width=0.25, num_classes=4), 1,
               torch.zeros(4, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 2 normalised images"):
        deepen(_trained_looking(), 1, torch.zeros(1, 3, 64, 64))
    with pytest.raises(UnknownArchitectureError, match="extra_convs must be 0..8, got 9"):
        create_model("stoplight_cnn", extra_convs=9)


def test_deepen_past_eight_blocks_is_refused_before_any_work(tmp_path):
    from edgepilot.errors import InputError
    from edgepilot.train.checkpoint import save_checkpoint
    from edgepilot.train.recipes import stoplight_meta, train_stoplight

    config = {"num_classes": 4, "width": 8, "extra_convs": 7}
    start = save_checkpoint(tmp_path / "deep.pt", create_model("stoplight_cnn", **config),
                            arch="stoplight_cnn", config=config, meta=stoplight_meta(96))
    with pytest.raises(InputError, match="has 7 extra blocks already: deepen=2 would make"):
        train_stoplight(tmp_path / "out", init=start, deepen=2, train_size=64, val_size=16,
                        holdout_size=16)
    assert not (tmp_path / "out").exists()
