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
    except (TypeError, ValueError) as err:
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


#: Most 3x3 blocks `stoplight_cnn` appends at 1/16 (a checkpoint's config cannot ask for more).
MAX_EXTRA_CONVS = 8


class StoplightCNN(nn.Module):
    """A compact CNN for small images: strided 3x3 convs, global average pooling, one linear.

    About 126k parameters for width 32; ~8.4M multiply-accumulates at 64x64, ~19M at 96x96.
    `extra_convs` appends that many 3x3 blocks at the last (1/16) resolution: 83k parameters
    and ~3M multiply-accumulates each at width 32 and 96x96 (`deepen` grows a trained model).
    """

    def __init__(self, num_classes: int = 4, width: int = 32, in_channels: int = 3,
                 extra_convs: int = 0):
        super().__init__()
        if not 0 <= extra_convs <= MAX_EXTRA_CONVS:
            raise ValueError(f"extra_convs must be 0..{MAX_EXTRA_CONVS}, got {extra_convs!r}")
        w = self.width = width
        self.extra_convs = extra_convs
        self.features = nn.Sequential(
            _conv_bn(in_channels, w // 2, stride=2),  # 1/2
            _conv_bn(w // 2, w, stride=2),  # 1/4
            _conv_bn(w, w),
            _conv_bn(w, 2 * w, stride=2),  # 1/8
            _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 3 * w, stride=2),  # 1/16
            *(_conv_bn(3 * w, 3 * w) for _ in range(extra_convs)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def deepen(model: StoplightCNN, blocks: int, sample: torch.Tensor) -> StoplightCNN:
    """A copy of `model` with `blocks` more 3x3 blocks at its last resolution, each starting as
    the identity, so that the deeper model computes exactly what `model` did (Net2DeeperNet,
    Chen et al. 2016) and fine-tuning starts from the trained model instead of from scratch.

    A new block's convolution is a Dirac kernel; its batch norm is calibrated on `sample`
    (normalised input images, N >= 2): running statistics = the mean and variance its input
    has there, scale and shift = their inverse. In eval mode the block is then the identity on
    every input (ReLU keeps the non-negative features it is fed); in training mode, where batch
    norm uses each batch's own statistics, it starts close to it.
    """
    if not isinstance(model, StoplightCNN):
        raise TypeError(f"deepen grows a StoplightCNN, got {type(model).__name__}")
    if sample.ndim != 4 or len(sample) < 2:
        raise ValueError("deepen needs a sample of at least 2 normalised images (N, C, H, W)")
    first = model.features[0][0]
    grown = StoplightCNN(num_classes=model.head.out_features, width=model.width,
                         in_channels=first.in_channels, extra_convs=model.extra_convs + blocks)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    new = len(model.features)
    added = tuple(f"features.{i}." for i in range(new, len(grown.features)))
    if unexpected or not all(k.startswith(added) for k in missing):
        raise RuntimeError(f"deepen: weights do not carry over ({missing} {unexpected})")
    grown.eval()
    with torch.no_grad():
        features = grown.features[:new](sample)  # what each identity block is fed
        mean, var = features.mean((0, 2, 3)), features.var((0, 2, 3), unbiased=False)
        for block in grown.features[new:]:
            conv, norm = block[0], block[1]
            nn.init.dirac_(conv.weight)  # zeros but the centre tap of channel i -> i
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(torch.sqrt(var + norm.eps))
            norm.bias.copy_(mean)
    return grown


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
def stoplight_cnn(num_classes: int = 4, width: int = 32, in_channels: int = 3,
                  extra_convs: int = 0) -> nn.Module:
    return StoplightCNN(num_classes=num_classes, width=width, in_channels=in_channels,
                        extra_convs=extra_convs)


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


def _separable(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """Depthwise kxk + pointwise 1x1, each with a bias and ReLU (MobileNet's block).

    No batch norm: on CPUs, channels-last batch norm took over half of each training step
    (measured), and export would fold it away anyway."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, kernel, stride, kernel // 2, groups=c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1), nn.ReLU(inplace=True),
    )


def _pointwise(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1)


class CentreDetector(nn.Module):
    """A single-stage detector: a centre heatmap per label and a box at stride 4.

    Built only from ops every edge target runs well: (depthwise) convolutions, ReLU, bilinear
    upsampling and addition. The backbone goes down to
    stride 16 for context (a 150-px light), and two upsampling steps bring it back to stride
    4 for 12-px lights. Outputs are channels last, (N, H/4, W/4, C), the layout TFLite keeps:
    ``heatmap`` holds probabilities (sigmoid in the graph), ``box`` the centre offset in the
    cell and log(size / 4). Decoding is the runtime's (runtime/detection.py)."""

    stride = 4

    def __init__(self, num_classes: int = 3, width: int = 16):
        super().__init__()
        self.width = w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1), nn.ReLU(inplace=True))  # /2
        self.s4 = nn.Sequential(_separable(w, 2 * w, 2), _separable(2 * w, 2 * w))  # /4
        self.s8 = nn.Sequential(_separable(2 * w, 4 * w, 2), _separable(4 * w, 4 * w))  # /8
        self.s16 = nn.Sequential(_separable(4 * w, 6 * w, 2), _separable(6 * w, 6 * w, kernel=5),
                                 _separable(6 * w, 6 * w, kernel=5))  # /16
        # Feature pyramid: 1x1 projections to a common width, summed after upsampling. A sum,
        # not a concatenation: int8 concatenation of differently scaled inputs needs requantize
        # ops that XNNPACK leaves to the CPU kernels (measured: 3 partitions, int8 slower).
        self.lat16, self.lat8 = _pointwise(6 * w, 3 * w), _pointwise(4 * w, 3 * w)
        self.up8 = _separable(3 * w, 3 * w)
        self.top8, self.lat4 = _pointwise(3 * w, 2 * w), _pointwise(2 * w, 2 * w)
        self.up4 = _separable(2 * w, 2 * w)
        self.heatmap = nn.Conv2d(2 * w, num_classes, 1)
        self.box = nn.Conv2d(2 * w, 4, 1)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.heatmap.weight, std=0.01)
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.constant_(self.heatmap.bias, -4.6)  # prior 1%: most cells hold no centre

    def heads(self, x):
        """Heatmap logits and box map, channels first (training uses these)."""
        s4 = self.s4(self.stem(x))
        s8 = self.s8(s4)
        s16 = self.s16(s8)
        # Bilinear, not nearest: XNNPACK delegates RESIZE_BILINEAR but leaves nearest to the
        # CPU kernels, which splits the graph in three.
        y = self.up8(self._up(self.lat16(s16), s8) + self.lat8(s8))
        y = self.up4(self._up(self.top8(y), s4) + self.lat4(s4))
        return self.heatmap(y), self.box(y)

    @staticmethod
    def _up(x, like):
        return nn.functional.interpolate(x, size=like.shape[2:], mode="bilinear")

    def forward(self, x):
        logits, box = self.heads(x)
        return {"heatmap": torch.sigmoid(logits).permute(0, 2, 3, 1),
                "box": box.permute(0, 2, 3, 1)}


@register_model
def stoplight_detector(num_classes: int = 3, width: int = 16) -> nn.Module:
    return CentreDetector(num_classes, width)


# CentreDetector's convolutions for widening: (module path, kind, input space, output space).
# A "dw" (depthwise) convolution keeps its space; a "conv" maps one space to another. Two
# convolutions whose outputs are summed write the same space. The RGB input and the two
# heads' outputs keep their sizes at any width.
_DETECTOR_CONVS = (
    ("stem.0", "conv", "rgb", "stem"),
    ("s4.0.0", "dw", "stem", "stem"), ("s4.0.2", "conv", "stem", "a4"),
    ("s4.1.0", "dw", "a4", "a4"), ("s4.1.2", "conv", "a4", "s4"),
    ("s8.0.0", "dw", "s4", "s4"), ("s8.0.2", "conv", "s4", "a8"),
    ("s8.1.0", "dw", "a8", "a8"), ("s8.1.2", "conv", "a8", "s8"),
    ("s16.0.0", "dw", "s8", "s8"), ("s16.0.2", "conv", "s8", "a16"),
    ("s16.1.0", "dw", "a16", "a16"), ("s16.1.2", "conv", "a16", "b16"),
    ("s16.2.0", "dw", "b16", "b16"), ("s16.2.2", "conv", "b16", "s16"),
    ("lat16", "conv", "s16", "f8"), ("lat8", "conv", "s8", "f8"),  # summed: one space
    ("up8.0", "dw", "f8", "f8"), ("up8.2", "conv", "f8", "u8"),
    ("top8", "conv", "u8", "f4"), ("lat4", "conv", "s4", "f4"),  # summed: one space
    ("up4.0", "dw", "f4", "f4"), ("up4.2", "conv", "f4", "u4"),
    ("heatmap", "conv", "u4", "heat"), ("box", "conv", "u4", "boxes"),
)


def widen_detector(model: CentreDetector, width: int, *, seed: int = 0,
                   noise: float = 1e-3) -> CentreDetector:
    """A wider CentreDetector computing what `model` computes (Net2Net's Net2WiderNet).

    Each new channel copies a randomly chosen old one of its layer; the layers reading a copied
    channel share its weight among the copies (divided by the count), so every sum is the same.
    ReLU and bilinear upsampling act per channel, so the output is unchanged up to `noise`: a
    relative perturbation of the copies' incoming weights that lets them drift apart in
    training (exact copies would get equal gradients forever). `noise=0` is exact."""
    if not isinstance(model, CentreDetector):
        raise TypeError(f"widen_detector grows a CentreDetector, got {type(model).__name__}")
    if width < model.width:
        raise ValueError(f"widen_detector widens: width {width} < the model's {model.width}")
    gen = torch.Generator().manual_seed(seed)
    wide = CentreDetector(model.heatmap.out_channels, width)
    old_mods, new_mods = dict(model.named_modules()), dict(wide.named_modules())
    maps = {}  # space -> index of the old channel each new channel copies
    for space in dict.fromkeys(s for _, _, a, b in _DETECTOR_CONVS for s in (a, b)):
        n_old, n_new = _channels(old_mods, space), _channels(new_mods, space)
        extra = torch.randint(0, n_old, (n_new - n_old,), generator=gen)
        maps[space] = torch.cat([torch.arange(n_old), extra])
    counts = {s: torch.bincount(m).float() for s, m in maps.items()}
    with torch.no_grad():
        for name, kind, a, b in _DETECTOR_CONVS:
            src, dst = old_mods[name], new_mods[name]
            out_map = maps[b]
            weight = src.weight[out_map]
            if kind == "conv":
                weight = weight[:, maps[a]] / counts[a][maps[a]].view(1, -1, 1, 1)
            copies = torch.arange(len(out_map)) >= src.weight.shape[0]
            if noise and copies.any():
                scale = noise * weight[copies].abs().mean()
                weight[copies] += scale * torch.randn(weight[copies].shape, generator=gen)
            dst.weight.copy_(weight)
            dst.bias.copy_(src.bias[out_map])
    return wide


def _channels(modules: dict, space: str) -> int:
    """Channels of `space`: the output of the first convolution writing it, else the input
    of the first reading it (the RGB input)."""
    for name, _, a, b in _DETECTOR_CONVS:
        if b == space:
            return modules[name].out_channels
        if a == space:
            return modules[name].in_channels
    raise KeyError(space)
