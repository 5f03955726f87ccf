import pytest

torch = pytest.importorskip("torch")

from edgepilot.errors import UnknownArchitectureError  # noqa: E402
from edgepilot.train.models import count_parameters, create_model, list_models  # noqa: E402


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
