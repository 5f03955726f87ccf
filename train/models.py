"""Model architectures by name: a registry filled by `@register_model`, built by `create_model`.

    >>> net = create_model("stoplight_cnn", num_classes=4)
    >>> net = create_model("mobilenet", width=0.5, num_classes=4)
"""

from __future__ import annotations

from collections.abc import Callable

from edgepilot.errors import UnknownArchitectureError, did_you_mean, require

# torch comes with the export extra; say so instead of a bare ModuleNotFoundError.
torch = require("torch", "export", "Building models")
nn = torch.nn

__all__ = ["register_model", "create_model", "list_models", "count_parameters"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a model factory to the registry under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **config) -> nn.Module:
    """Build a registered architecture; `config` goes to its factory (e.g. ``num_classes``)."""
    if name not in _REGISTRY:
        raise UnknownArchitectureError(
            f"Unknown architecture '{name}'.{did_you_mean(name, _REGISTRY)} "
            f"Known architectures: {', '.join(list_models())}"
        )
    try:
        return _REGISTRY[name](**config)
    except TypeError as err:
        raise UnknownArchitectureError(f"Bad config for architecture '{name}': {err}") from err


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_bn(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU: the unit every small vision CNN is made of."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class StoplightCNN(nn.Module):
    """A compact CNN for small images: strided 3x3 convs, global average pooling, one linear.

    About 100k parameters for width 32; ~7M multiply-accumulates at 64x64.
    """

    def __init__(self, num_classes: int = 4, width: int = 32, in_channels: int = 3):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w // 2, stride=2),  # 1/2
            _conv_bn(w // 2, w, stride=2),  # 1/4
            _conv_bn(w, w),
            _conv_bn(w, 2 * w, stride=2),  # 1/8
            _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 3 * w, stride=2),  # 1/16
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class MobileNet(nn.Module):
    """MobileNet-v1 style: depthwise 3x3 + pointwise 1x1 blocks, scaled by `width`."""

    # (output channels, stride) of each depthwise-separable block at width 1.0
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 1000, width: float = 1.0, in_channels: int = 3):
        super().__init__()

        def ch(c: int) -> int:  # keep channel counts multiples of 8, as mobile kernels like
            return max(8, int(c * width + 4) // 8 * 8)

        layers = [_conv_bn(in_channels, ch(32), stride=2)]
        c_in = ch(32)
        for c_out, stride in self.BLOCKS:
            layers += [
                _conv_bn(c_in, c_in, stride=stride, groups=c_in),  # depthwise
                nn.Sequential(nn.Conv2d(c_in, ch(c_out), 1, bias=False),
                              nn.BatchNorm2d(ch(c_out)), nn.ReLU(inplace=True)),  # pointwise
            ]
            c_in = ch(c_out)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def stoplight_cnn(num_classes: int = 4, width: int = 32, in_channels: int = 3) -> nn.Module:
    return StoplightCNN(num_classes=num_classes, width=width, in_channels=in_channels)


@register_model
def mobilenet(num_classes: int = 1000, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return MobileNet(num_classes=num_classes, width=width, in_channels=in_channels)


class Neuron(nn.Module):
    """One sigmoid neuron: inputs (green, yellow, red) in {0, 1} -> P(go)."""

    def __init__(self, inputs: int = 3):
        super().__init__()
        self.linear = nn.Linear(inputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3) -> (N, 1)
        return torch.sigmoid(self.linear(x))


class Nielsen(nn.Module):
    """The 784-15-10 network of Nielsen's "Neural Networks and Deep Learning": sigmoid
    hidden layer; outputs are the pre-sigmoid activations (the argmax is the same)."""

    def __init__(self, hidden: int = 15, num_classes: int = 10):
        super().__init__()
        self.hidden = nn.Linear(784, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 784) -> (N, 10)
        return self.out(torch.sigmoid(self.hidden(x)))


@register_model
def neuron(inputs: int = 3) -> nn.Module:
    return Neuron(inputs)


@register_model
def nielsen(hidden: int = 15, num_classes: int = 10) -> nn.Module:
    return Nielsen(hidden, num_classes)


@register_model
def digit_cnn(num_classes: int = 10, width: int = 16) -> nn.Module:
    """A small CNN for 28x28 grey digits, for comparison with the fully connected network."""
    return nn.Sequential(
        _conv_bn(1, width), nn.MaxPool2d(2),  # 14x14
        _conv_bn(width, 2 * width), nn.MaxPool2d(2),  # 7x7
        _conv_bn(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4 * width, num_classes),
    )
