"""`edgepilot info MODEL`: what a model file holds — tensors, layers, parameters, MACs.

    >>> info = inspect_model("runs/digits.onnx")
    >>> info.parameters, info.weights, info.biases, info.macs
    (11935, 11910, 25, 11910)
    >>> print_info(info)

Each format's reader lives beside its backend (`edgepilot.runtime.<reader>`, named by the
format table's ``reader``; ONNX is read with `onnx`, TFLite with the flatbuffer schema
ai-edge-litert ships, Core ML with coremltools, ExecuTorch with its program deserializer) and
checkpoints with torch; each is imported only when a file of its kind is inspected. This
module holds what they share: the summary, the layer counting and the printing. The rules,
alike for every format:

* A layer is an op with constants in a weight or bias slot (Conv, Gemm, CONV_2D, ...) or with
  multiply-accumulates. Parameters are element counts whatever the dtype, so an int8 or fp16
  file counts as many as its float original; scales and zero points are not parameters. A
  constant shared by two layers (converters merge identical tensors such as zero biases) counts
  once per layer.
* Exporters fold BatchNorm into the convolution before it, so a file counts fewer parameters
  than its checkpoint, where torch counts BatchNorm's weight and bias (torch's ONNX exporter
  even drops a folded bias that is all zeros, as in an untrained model). `info` on a checkpoint
  says so, with the count its exported files will show (``details["batch norm"]``).
* MACs are those of convolutions, fully connected layers and matrix products, for batch 1.
* Where the file cannot say (a .pte whose layers are in a delegate only its backend can read),
  the totals are None and ``details["counts"]`` says why: unknown, never 0.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepilot.errors import ModelFileError, UnsupportedFormatError, require
from edgepilot.formats import FORMATS, format_for_path
from edgepilot.runtime.backend import file_errors
from edgepilot.runtime.mlpackage import model_size
from edgepilot.runtime.reading import Layer, Reading, TensorSummary

__all__ = ["TensorSummary", "LayerSummary", "ModelInfo", "inspect_model", "print_info"]

CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass
class LayerSummary:
    """An op with parameters or multiply-accumulates."""

    name: str
    op: str  # "Gemm", "FULLY_CONNECTED", "Linear", ...
    parameters: int  # weight + bias elements
    macs: int  # multiply-accumulates for a batch of one


@dataclass
class ModelInfo:
    """What `inspect_model` found in a file. Totals are sums over `layers`."""

    path: str
    format: str  # "onnx" | "tflite" | "checkpoint"
    size_bytes: int
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    meta: dict | None  # the edgepilot ModelMeta as a dict, when the file carries one
    layers: list[LayerSummary]
    op_histogram: dict[str, int]  # op type -> count, most frequent first
    # None when the file cannot say (layers inside an opaque delegate): details["counts"] says
    # why. Never 0 for "unknown".
    parameters: int | None
    weights: int | None
    biases: int | None
    macs: int | None
    details: dict = field(default_factory=dict)  # format-specific facts (see each reader)

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_model(path: str | Path) -> ModelInfo:
    """Summarise a model file: tensors, metadata, layers, parameters and MACs.

    Args:
        path: a model file of a format with a reader (``.onnx``, ``.tflite``, ``.pte``,
            ``.mlpackage``), or an edgepilot ``.pt``/``.pth`` checkpoint.

    Returns:
        A `ModelInfo`; its `to_dict()` is JSON-ready.

    Raises:
        UnsupportedFormatError: the suffix is none of the above.
        ModelFileError: the file is missing or is not a readable model.
        MissingDependencyError: the package that reads this format is not installed.

    Example:
        >>> inspect_model("runs/digits_int8.tflite").op_histogram
        {'FULLY_CONNECTED': 2, 'LOGISTIC': 1}
    """
    path = Path(path)
    name, reader = _reader_for(path)  # an unknown suffix fails before the file is touched
    if not (path.is_file() or path.is_dir() and name != "checkpoint" and
            format_for_path(path).folder):
        from edgepilot.runtime.model import not_a_model

        raise ModelFileError(not_a_model(path))
    # The one place where what a parser raises on a corrupt or hostile file (IndexError,
    # KeyError, UnicodeDecodeError, struct.error, RecursionError...) becomes ModelFileError.
    with file_errors("edgepilot info", path):
        reading = Reading(*reader(path))
    inputs, outputs, meta, layers, ops = reading[:5]
    # onnx hands back names that are not UTF-8 as bytes rather than failing: they would
    # break the JSON output and the tables later.
    names = [x.name for x in (*inputs, *outputs, *layers)] + [x.op for x in layers] + ops
    if not all(isinstance(name, str) for name in names):
        raise ModelFileError(f"'{path}' holds tensor, layer or op names that are not UTF-8 "
                             "text: a corrupt or hostile file")
    details = dict(reading.details)
    known = not reading.uncounted
    if not known:
        details["counts"] = f"unknown ({reading.uncounted})"

    def total(values) -> int | None:
        return sum(values) if known else None

    return ModelInfo(
        path=str(path), format=name, size_bytes=model_size(path), inputs=inputs,
        outputs=outputs, meta=meta,
        layers=[LayerSummary(x.name, x.op, x.weights + x.biases, x.macs) for x in layers],
        op_histogram=dict(Counter(ops).most_common()),
        parameters=total(x.weights + x.biases for x in layers),
        weights=total(x.weights for x in layers), biases=total(x.biases for x in layers),
        macs=total(x.macs for x in layers), details=details,
    )


def _reader_for(path: Path):
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "checkpoint", _read_checkpoint
    readable = ", ".join([*(f.suffix for f in FORMATS if f.reader), *CHECKPOINT_SUFFIXES])
    try:
        fmt = format_for_path(path)
    except UnsupportedFormatError as err:
        raise UnsupportedFormatError(f"{err}. edgepilot info reads {readable}") from err
    if not fmt.reader:
        raise UnsupportedFormatError(f"edgepilot info cannot read {fmt.name} files; it reads "
                                     f"{readable}")
    module = importlib.import_module(f"edgepilot.runtime.{fmt.reader}")
    return fmt.name, module.read_info


def _read_checkpoint(path: Path):
    torch = require("torch", "export", "Inspecting PyTorch checkpoints")
    from edgepilot.train.checkpoint import load_checkpoint

    model, meta, _ = load_checkpoint(path)
    zero_bias = _zero_folded_biases(model, torch)  # the values: before the move to "meta"
    macs: dict[str, int] = {}
    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    made_by: dict[int, tuple] = {}  # id(output) -> (conv name, output kept so ids stay unique)
    after: dict[str, str] = {}  # batch norm -> the convolution whose output it normalises

    def hook(name: str):
        def record(module, inputs, output) -> None:  # batch-one outputs x their fan-in
            macs[name] = output[:1].numel() * module.weight[0].numel()  # Cin/groups x kernel
            if isinstance(module, convs):
                made_by[id(output)] = name, output

        return record

    def norm_hook(name: str):
        def record(module, inputs, output) -> None:
            if inputs and id(inputs[0]) in made_by:
                after[name] = made_by[id(inputs[0])][0]

        return record

    kinds = (torch.nn.Linear, *convs)
    norms = torch.nn.modules.batchnorm._BatchNorm
    hooks = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
             if isinstance(m, kinds)]
    hooks += [m.register_forward_hook(norm_hook(name)) for name, m in model.named_modules()
              if isinstance(m, norms)]
    # Shapes are all that counting needs: torch's "meta" device runs the model on the
    # metadata's input without allocating activations (a 4096x4096 input would take GBs).
    model = model.to("meta")
    x = torch.zeros(meta.input_shape, device="meta")
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as err:  # the metadata and the architecture disagree on the input
        raise ModelFileError(f"'{path}': the model does not run on its metadata's input "
                             f"{tuple(x.shape)}: {str(err).splitlines()[0]}") from err
    finally:
        for handle in hooks:
            handle.remove()
    layers = []
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if own or name in macs:
            biases = sum(p.numel() for key, p in own.items() if "bias" in key)
            layers.append(Layer(name or "(model)", type(module).__name__,
                                 sum(p.numel() for p in own.values()) - biases, biases,
                                 macs.get(name, 0)))
    ops = [type(m).__name__ for m in model.modules() if not list(m.children())]
    inputs = [TensorSummary("input", tuple(x.shape), "float32")]
    from edgepilot.export.probe import flatten_outputs  # a detector returns a dict of maps

    tensors, names = flatten_outputs(y)
    outputs = [TensorSummary(name, tuple(t.shape), str(t.dtype).split(".")[-1])
               for name, t in zip(names, tensors)]
    parameters = sum(x.weights + x.biases for x in layers)
    modules = dict(model.named_modules())
    norms_found = {name: m for name, m in modules.items() if isinstance(m, norms)}
    details = _batch_norm_note(norms_found, after, modules, zero_bias, parameters)
    return Reading(inputs, outputs, meta.to_dict(), layers, ops, details)


def _zero_folded_biases(model, torch) -> set[str]:
    """Batch norms whose folded bias, beta - mean x gamma / sqrt(var + eps), is all zeros (an
    untrained model's): torch's ONNX exporter drops such a bias from a conv that had none."""
    zero = set()
    with torch.no_grad():
        for name, m in model.named_modules():
            if (isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine
                    and m.running_mean is not None and not bool(torch.count_nonzero(
                        m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)))):
                zero.add(name)
    return zero


def _batch_norm_note(norms: dict, after: dict, modules: dict, zero_bias: set,
                     parameters: int) -> dict:
    """What a checkpoint's batch norms become on export, for `details`: those right after a
    convolution are folded into it (its weight scaled, their shift its bias), so an exported
    file counts fewer parameters than the checkpoint."""
    if not norms:
        return {}

    def own(m) -> int:
        return sum(p.numel() for p in m.parameters(recurse=False))

    total = sum(own(m) for m in norms.values())
    folded = {name: m for name, m in norms.items()
              if name in after and m.track_running_stats and m.running_mean is not None}
    fewer = onnx_fewer = 0
    for name, m in folded.items():
        conv_bias = modules[after[name]].bias is not None
        # The folded file keeps one bias per channel: the conv's own, or a new one.
        gone = own(m) - (0 if conv_bias else m.num_features)
        fewer += gone
        onnx_fewer += gone + (m.num_features if name in zero_bias and not conv_bias else 0)
    layers = "layer" if len(norms) == 1 else "layers"
    note = f"{total:,} parameters in {len(norms)} {layers}"
    if folded:
        some = "" if len(folded) == len(norms) else f"{len(folded)} of them "
        note += (f", {some}folded into the convolutions before them on export: exported files "
                 f"count {fewer:,} {'fewer' if fewer >= 0 else 'more'}")
        if onnx_fewer != fewer:
            note += (f" (ONNX: {onnx_fewer:,} fewer, {parameters - onnx_fewer:,}: torch drops "
                     "folded biases that are all zero)")
    if len(folded) < len(norms):
        note += (f"; {len(norms) - len(folded)} not right after a convolution, which this "
                 "count assumes exporters keep")
    details = {"batch norm": note}
    if folded:
        details["parameters when exported"] = parameters - fewer
    return details


def print_info(info: ModelInfo, console=None) -> None:
    """Print a `ModelInfo` as tables: summary, inputs and outputs, layers, op histogram.

    Every table fits the console's width: numbers (parameters, MACs, sizes, shapes) are never
    wrapped, long names fold. A terminal shows long names clipped to their end (the innermost
    module); piped output (a log, grep) shows them whole.

    Args:
        info: what `inspect_model` returned.
        console: a `rich.console.Console` (default: stdout, 150 columns when piped).

    Example:
        >>> print_info(inspect_model("runs/digits.tflite"))
    """
    from rich.table import Table

    from edgepilot.terminal import console as terminal_console
    from edgepilot.terminal import printable

    console = console or terminal_console(piped_width=150)
    # Names come from the file: shown as text (escapes for controls) whatever the console.
    if console.is_terminal:
        def name(text) -> str:
            return _clip(printable(text))
    else:
        name = printable

    def table(*columns, **options) -> Table:
        """A table of columns of text (wrapped, a long word folded), numbers (right-aligned)
        and keys: numbers and keys are never wrapped."""
        out = Table(**options)
        for header, kind in columns:
            out.add_column(header, no_wrap=kind != "text",
                           justify="right" if kind == "number" else "left",
                           overflow="fold" if kind == "text" else "ellipsis")
        return out

    summary = table(("", "key"), ("", "text"), show_header=False,
                    title=f"{printable(Path(info.path).name)} ({info.format})")
    summary.add_row("size", f"{info.size_bytes:,} bytes")
    unknown = printable(info.details.get("counts", "unknown"))
    if info.parameters is None:
        summary.add_row("parameters", unknown)
    else:
        summary.add_row("parameters", f"{info.parameters:,} ({info.weights:,} weights, "
                                      f"{info.biases:,} biases)")
    summary.add_row("MACs", "unknown" if info.macs is None else f"{info.macs:,} (batch 1)")
    if info.meta:
        size = "x".join(str(d) for d in info.meta.get("input_size", ()))
        summary.add_row("model", printable(
            f"{info.meta.get('name')}: {len(info.meta.get('labels', []))} labels, input {size} "
            f"{info.meta.get('layout')}"))
    for key, value in info.details.items():
        if not (key == "counts" and info.parameters is None):  # shown as the parameters
            summary.add_row(printable(key), printable(_detail(value)))
    tensors = table(("", "key"), ("name", "text"), ("shape", "number"), ("dtype", "text"),
                    ("quantization", "text"), title="inputs and outputs")
    for kind, items in (("input", info.inputs), ("output", info.outputs)):
        for t in items:
            shape = "x".join("?" if d is None else str(d) for d in t.shape)
            tensors.add_row(kind, name(t.name), shape, printable(t.dtype),
                            printable(t.quantization or "-"))
    title = f"{len(info.layers)} layers"
    if info.parameters is None:  # the rest are in a delegate that cannot be read
        title += " outside the delegate"
    layers = table(("name", "text"), ("op", "text"), ("params", "number"), ("MACs", "number"),
                   title=title)
    for layer in info.layers:
        layers.add_row(name(layer.name), printable(layer.op), f"{layer.parameters:,}",
                       f"{layer.macs:,}")
    ops = table(("op", "text"), ("count", "number"), title="ops")
    for op, n in info.op_histogram.items():
        ops.add_row(printable(op), f"{n:,}")
    for out in (summary, tensors, layers, ops):
        console.print(out)


def _detail(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if type(value) is int:
        return f"{value:,}"
    return str(value)


def _clip(name: str, width: int = 60) -> str:
    # Converters name tensors after the whole module scope; the innermost module is at the end.
    return name if len(name) <= width else "…" + name[-(width - 1):]
