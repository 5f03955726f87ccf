"""`edgepilot info`'s tables at 80, 100 and 120 columns and piped: no line wider than the
console, every number (parameters, MACs, sizes, shapes, scales) whole on one line, long names
folded or clipped at their start (the innermost module stays), and nothing cut when piped.

Torch-free: the shipped files, and a model with long names built with `onnx`.
"""

import io
import re

import pytest
from rich.cells import cell_len
from rich.console import Console

from edgepilot.assets import shipped_model
from edgepilot.info import inspect_model, print_info

WIDTHS = [80, 100, 120]
PIPED_WIDTH = 150  # what `edgepilot info | less` gets (edgepilot.terminal.console)
LONG = "/backbone/stage_4/block_12/" + "very_long_module_name_" * 6


@pytest.fixture(scope="module")
def long_names(tmp_path_factory):
    """A conv net whose nodes, input and output have 150-odd character names."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x, y = LONG + "input_image", LONG + "class_logits"
    weights = [numpy_helper.from_array(np.zeros(shape, np.float32), name)
               for name, shape in ((LONG + "conv.weight", (64, 3, 3, 3)),
                                   (LONG + "conv.bias", (64,)),
                                   (LONG + "fc.weight", (1000, 64)),
                                   (LONG + "fc.bias", (1000,)))]
    nodes = [helper.make_node("Conv", [x, weights[0].name, weights[1].name], ["c"],
                              name=LONG + "conv_final", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name=LONG + "relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name=LONG + "pool"),
             helper.make_node("Flatten", ["p"], ["f"], name=LONG + "flatten"),
             helper.make_node("Gemm", ["f", weights[2].name, weights[3].name], [y],
                              name=LONG + "classifier_head", transB=1)]
    graph = helper.make_graph(
        nodes, "long", [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 1000])], weights)
    path = tmp_path_factory.mktemp("long") / "long_names.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


SHIPPED = {"stoplight.onnx": ("stoplight", ".onnx"),
           "stoplight_detector_int8.tflite": ("stoplight-detector", "_int8.tflite")}


def _path(name, long_names):
    return long_names if name == "long_names" else shipped_model(*SHIPPED[name])


def _render(info, width) -> str:
    console = Console(file=io.StringIO(), width=width, markup=False)
    print_info(info, console=console)
    return console.file.getvalue()


def _whole(token: str, lines: list[str]) -> bool:
    """`token` on one line, not as part of a longer number or word."""
    pattern = rf"(?<![\w.,=-]){re.escape(token)}(?![\w.,])"
    return any(re.search(pattern, line) for line in lines)


def _column(lines: list[str], index: int) -> str:
    """The text of one table column, top to bottom (a folded cell comes back whole)."""
    return "".join(line.split("│")[index].strip() for line in lines if line.count("│") > index)


def _check(text: str, info, width: int) -> None:
    lines = text.splitlines()
    too_wide = [line for line in lines if cell_len(line) > width]
    assert not too_wide, f"{len(too_wide)} lines wider than {width}: {too_wide[0]!r}"
    numbers = [f"{info.size_bytes:,}", f"{info.parameters:,}", f"{info.weights:,}",
               f"{info.biases:,}", f"{info.macs:,}"]
    for tensor in info.inputs + info.outputs:
        numbers.append("x".join("?" if d is None else str(d) for d in tensor.shape))
        numbers += (tensor.quantization or "").split()  # "scale=0.003906", "zp=-128"
    split = [n for n in numbers if not _whole(n, lines)]
    assert not split, f"not whole on one line at width {width}: {split}"
    for layer in info.layers:  # a layer's parameters and MACs, whole, on one row
        params, macs = f"{layer.parameters:,}", f"{layer.macs:,}"
        assert any(_whole(params, [line]) and _whole(macs, [line]) for line in lines), \
            (layer, width)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["stoplight.onnx", "stoplight_detector_int8.tflite",
                                  "long_names"])
def test_tables_fit_the_width_with_numbers_whole(name, width, long_names):
    info = inspect_model(_path(name, long_names))
    text = _render(info, width)
    _check(text, info, width)
    names = _column(text.splitlines(), 1)
    for layer in info.layers:  # folded, not cut: the name comes back whole
        assert layer.name in names, layer.name


@pytest.mark.parametrize("name", ["stoplight.onnx", "stoplight_detector_int8.tflite",
                                  "long_names"])
def test_piped_output_is_whole(name, long_names, capsys):
    info = inspect_model(_path(name, long_names))
    print_info(info)  # stdout is captured: not a terminal
    text = capsys.readouterr().out
    _check(text, info, PIPED_WIDTH)
    assert "…" not in text  # nothing clipped or cropped: every name is there for grep
    lines = text.splitlines()
    for tensor in info.inputs + info.outputs:
        assert tensor.name in _column(lines, 2)
    for layer in info.layers:
        assert layer.name in _column(lines, 1)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_terminal_clips_long_names_at_their_start(long_names, width):
    info = inspect_model(long_names)
    console = Console(file=io.StringIO(), width=width, markup=False, force_terminal=True,
                      color_system=None)
    print_info(info, console=console)
    text = console.file.getvalue()
    _check(text, info, width)
    names = _column(text.splitlines(), 1)
    for layer in info.layers:  # "…module_name_conv_final": the innermost module stays
        assert layer.name[-40:] in names and LONG[:20] not in names
    assert names.count("…") == len(info.layers)
    assert cell_len(names) < sum(cell_len(layer.name) for layer in info.layers)
