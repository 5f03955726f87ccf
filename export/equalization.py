"""Activation ranges equalized across channels before int8, for every format.

Every int8 format quantizes a layer's input with one scale for the whole tensor, while its
channels can differ in range by orders of magnitude: a channel whose values stay under a
hundredth of the tensor's largest gets two or three of the 256 levels. Where one layer feeds
the next through operations that commute with a positive per-channel scale (ReLU, identity,
max or average pooling), channel c of the first layer's output can be multiplied by s_c (its
weights and bias) and the second layer's weights that read channel c divided by s_c: the
model computes the same function (Nagel et al., "Data-Free Quantization", 2019, scale the
weights this way to equalize their ranges). Here s_c is chosen from the activations: each
channel is brought up to the largest channel's range on the calibration images, so every
channel of the tensor between the two layers uses all 256 levels. The second layer's
per-channel weight quantization absorbs the division (a depthwise convolution's exactly).

Measured on the stoplight detector (depthwise-separable, ReLU, 200 validation scenes, int8
simulated in PyTorch): output SQNR of the heatmap 20.8 dB -> 24.7 dB, boxes 24.6 -> 28.1 dB;
equalizing the weights' ranges instead (the paper's choice, made for per-tensor weights) did
nothing with per-channel weights (20.7-21.3 dB). ReLU6, as EfficientNet-Lite uses, clips at
a fixed 6 and does not commute with a scale: such pairs are left alone.
"""

from __future__ import annotations

import numpy as np

__all__ = ["equalize", "MAX_SCALE"]

#: A channel is scaled up by at most this much (one that stays below 1/1000 of the largest
#: matters little either way, and its weights in the next layer shrink by as much).
MAX_SCALE = 1000.0
#: Images per forward pass while the ranges are measured.
_BATCH = 16


def equalize(model, x) -> tuple[dict, dict[str, list[float]]]:
    """Equalize, in place, the input ranges of every layer that reads another layer's output
    through scale-commuting operations only; returns the report's note and the factors each
    scaled layer's output channels were multiplied by, by module name (a file records them,
    `edgepilot.meta.CHANNEL_SCALES`, so `edgepilot diff` compares in the float model's units).

    Args:
        model: a float module in eval mode (batch norms already folded).
        x: calibration inputs, one batch tensor.
    """
    import torch

    try:
        pairs = _pairs(model)
    except Exception as error:  # noqa: BLE001 - not traceable: nothing is changed
        return {"pairs": 0, "why": f"the model could not be traced ({type(error).__name__})"}, {}
    if not pairs:
        return {"pairs": 0, "why": "no layer reads another's output through ReLU or pooling "
                                   "alone"}, {}
    modules = dict(model.named_modules())
    ranges = _input_ranges(model, [modules[second] for _, second in pairs], x)
    spread, scaled = [], {}
    with torch.no_grad():
        for (first, second), r in zip(pairs, ranges):
            scale = _scales(r)
            if scale is None:
                continue
            _scale_outputs(modules[first], scale)
            _scale_inputs(modules[second], 1 / scale)
            scaled[first] = [float(f"{v:.7g}") for v in scale.tolist()]
            live = r[r > 0]
            spread.append(float(live.max() / live.min()))
    if not spread:
        return {"pairs": 0, "why": "every channel already spans its tensor's range"}, {}
    return {"pairs": len(spread),
            "range_spread_before": {"median": round(float(np.median(spread)), 1),
                                    "worst": round(float(np.max(spread)), 1)}}, scaled


def _pairs(model) -> list[tuple[str, str]]:
    """(first, second) layer names where the second's only input is the first's output through
    a ReLU and identity, dropout or pooling, and nothing else reads the first's output. Layers
    with no activation between (a projection feeding the next expansion, as in EfficientNet)
    would scale the same way; it was not measured, and they are left alone."""
    import torch
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    through_modules = (torch.nn.ReLU, torch.nn.Identity, torch.nn.Dropout, torch.nn.MaxPool2d,
                       torch.nn.AvgPool2d)
    through_functions = {torch.relu, torch.nn.functional.relu, torch.nn.functional.max_pool2d,
                         torch.nn.functional.avg_pool2d, torch.nn.functional.dropout}

    def layer(node):
        if node.op != "call_module":
            return None
        module = modules[node.target]
        return module if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) else None

    def passes(node) -> bool:
        if node.op == "call_module":
            return type(modules[node.target]) in through_modules
        if node.op == "call_function":
            return node.target in through_functions
        return node.op == "call_method" and node.target in ("relu", "relu_")

    def rectifies(node) -> bool:
        return (node.op == "call_module" and type(modules[node.target]) is torch.nn.ReLU) or \
            (node.op == "call_function" and node.target in (torch.relu,
                                                            torch.nn.functional.relu)) or \
            (node.op == "call_method" and node.target in ("relu", "relu_"))

    pairs = []
    for node in graph.nodes:
        first = layer(node)
        if first is None:
            continue
        current, rectified = node, False
        while len(current.users) == 1:
            (user,) = current.users
            if user.args[:1] != (current,) or any(
                    a is current for a in list(user.args[1:]) + list(user.kwargs.values())):
                break
            second = layer(user)
            if second is not None:
                if rectified and type(first) is type(second) and \
                        _channels_out(first) == _channels_in(second):
                    pairs.append((node.target, user.target))
                break
            if not passes(user):
                break
            rectified = rectified or rectifies(user)
            current = user
    return pairs


def _channels_out(layer) -> int:
    return layer.weight.shape[0]


def _channels_in(layer) -> int:
    import torch

    if isinstance(layer, torch.nn.Conv2d):
        return layer.in_channels
    return layer.in_features


def _input_ranges(model, layers, x) -> list:
    """The largest |value| per channel of each layer's input on `x`."""
    import torch

    found: list = [None] * len(layers)

    def observe(index, layer):
        def hook(_module, args):
            value = args[0].detach()
            dims = [d for d in range(value.ndim)
                    if d != (1 if isinstance(layer, torch.nn.Conv2d) else value.ndim - 1)]
            peak = value.abs().amax(dim=dims).double()
            found[index] = peak if found[index] is None else torch.maximum(found[index], peak)
        return hook

    handles = [layer.register_forward_pre_hook(observe(i, layer))
               for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for start in range(0, len(x), _BATCH):
                model(x[start:start + _BATCH])
    finally:
        for handle in handles:
            handle.remove()
    return found


def _scales(peaks):
    """Per-channel factors that bring every channel up to the largest one's range (channels
    that never move keep 1); None where nothing would change."""
    import torch

    if peaks is None or not bool((peaks > 0).any()):
        return None
    top = peaks.max()
    scale = torch.where(peaks > 0, top / peaks.clamp(min=1e-30), torch.ones_like(peaks))
    scale = scale.clamp(max=MAX_SCALE)
    if bool((scale <= 1.0001).all()):
        return None
    return scale


def _scale_outputs(layer, scale) -> None:
    weight = layer.weight
    shape = (-1,) + (1,) * (weight.ndim - 1)
    weight.mul_(scale.to(weight.dtype).reshape(shape))
    if layer.bias is not None:
        layer.bias.mul_(scale.to(layer.bias.dtype))


def _scale_inputs(layer, factor) -> None:
    import torch

    weight = layer.weight
    factor = factor.to(weight.dtype)
    if isinstance(layer, torch.nn.Linear):
        weight.mul_(factor.reshape(1, -1))
        return
    groups = layer.groups
    per_group_in = weight.shape[1]
    grouped = weight.view(groups, weight.shape[0] // groups, per_group_in, *weight.shape[2:])
    grouped.mul_(factor.reshape(groups, 1, per_group_in, *(1,) * (weight.ndim - 2)))
