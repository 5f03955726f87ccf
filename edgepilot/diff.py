"""`edgepilot diff`: where an exported file departs from the model it came from, layer by layer.

The reference (a PyTorch module, or one exported file) and each file run on the same images,
each fed as its runtime feeds it. Every intermediate tensor a file exposes (its format's
``read_layers``) is matched with the reference's output of the PyTorch module that computed it:
ONNX records the module on each node, litert-torch in each tensor's name. A fused op (conv +
batch norm + ReLU as one node) carries one module's name but computes a later one's output, so
a tensor is compared with its module's output and those of the parameter-free modules right
after it (batch norm, activations), and matched with the closest.

Per tensor: SQNR in dB (median over channels, as the int8 guard measures it: one channel with a
huge range cannot hide the others being crushed) and cosine similarity. Layers are ranked by
the SQNR each loses against its inputs (`rank_by_sqnr_loss`): a layer that breaks ranks first,
not the layers after it that inherit the damage. A file *departs* at the first layer, in
execution order, that loses `DEPART_DB` or more. The outputs are also compared as the runtime
runs the file (fused kernels and delegates included), so the last row is what users get.

Formats whose runtime does not expose intermediate tensors (an ExecuTorch program's XNNPACK
delegate runs the graph as one call) are compared at their outputs only, and the report says so.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.formats import format_for_path
from edgepilot.meta import CHANNEL_SCALES, ModelMeta

__all__ = ["diff", "DiffReport", "FileDiff", "LayerDiff", "print_diff", "plot_diff",
           "DEPART_DB"]

#: A layer that loses this many dB of SQNR against its inputs is where a file departs.
DEPART_DB = 10.0
#: How many modules after a tensor's own one a fused op may have computed the output of.
FUSED_WINDOW = 3
#: Ops that only quantize or dequantize another tensor: not layers of the model.
_QUANTIZE_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QUANTIZE",
                 "DEQUANTIZE"}


@dataclass
class LayerDiff:
    """One tensor of a file against the reference module output it matched."""

    tensor: str
    module: str  # the reference module whose output it matched (a fused op: the last one)
    op: str
    sqnr_db: float
    loss_db: float  # SQNR lost against the layer's inputs: how much this layer broke
    cosine: float


@dataclass
class FileDiff:
    """One file against the reference."""

    path: str
    format: str
    layers: list[LayerDiff] = field(default_factory=list)  # execution order
    departs: LayerDiff | None = None  # first layer losing >= DEPART_DB
    outputs: dict = field(default_factory=dict)  # sqnr_db, top1_agreement, as the runtime runs
    note: str = ""  # what could not be compared, and why

    @property
    def ranked(self) -> list[LayerDiff]:
        """Layers, the one that loses the most SQNR against its inputs first."""
        return sorted(self.layers, key=lambda layer: -layer.loss_db)

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "note": self.note,
                "outputs": self.outputs,
                "departs": asdict(self.departs) if self.departs else None,
                "ranked": [f"{layer.module} ({layer.op})" for layer in self.ranked],
                "layers": [asdict(layer) for layer in self.layers]}


@dataclass
class DiffReport:
    """A reference and every file compared with it, on the same images."""

    reference: str
    measured_on: str  # what the images were: random images say little about real ones
    images: int
    depart_db: float
    files: list[FileDiff]

    def to_dict(self) -> dict:
        return {"reference": self.reference, "measured_on": self.measured_on,
                "images": self.images, "depart_db": self.depart_db,
                "files": [f.to_dict() for f in self.files]}


@dataclass
class _Reference:
    """Module outputs in the order they were computed, and what to compare outputs with."""

    name: str
    entries: list[tuple[str, np.ndarray]]
    owners: set[str]  # modules with conv/linear weights: a fused op never reaches past one
    outputs: list[np.ndarray]
    output_kind: str  # "logits", "probs" or "sigmoid"
    channels_last: bool
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # a file's, by tensor name


def diff(reference, files, *, images=None, meta: ModelMeta | None = None, count: int = 16,
         depart_db: float = DEPART_DB) -> DiffReport:
    """Compare `files` with `reference`, layer by layer, on the same images.

    Args:
        reference: a ``torch.nn.Module`` (then `meta` says how it takes images), or the path
            of an exported file (ONNX or TFLite) to compare the others with.
        files: paths of exported files.
        images: (N, H, W, 3) uint8 RGB images, a folder of images or an .npy file; None
            compares on `count` random images, and the report says so.
        meta: the PyTorch module's input (size, normalisation, layout) and labels.
        count: at most this many images.
        depart_db: SQNR a layer must lose to count as where a file departs.

    Example:
        >>> report = diff(net, ["runs/net_int8.onnx", "runs/net_int8.tflite"], meta=meta,
        ...               images="photos/")
        >>> report.files[0].ranked[0].module
        'features.3.0'
    """
    files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise InputError("diff needs at least one exported file to compare with the reference")
    if count < 1:
        raise InputError(f"count={count}: compare on at least one image")
    torch_reference = not isinstance(reference, (str, Path))
    if torch_reference:
        if meta is None:
            raise EdgepilotError("diff of a PyTorch module needs meta= (its input size and "
                                 "normalisation) to turn images into its input")
        ref_meta = meta
    else:
        ref_meta = _file_meta(Path(reference))
    pixels, measured_on = _images(images, ref_meta, count)
    if torch_reference:
        ref = _torch_reference(reference, pixels, ref_meta)
    else:
        ref = _file_reference(Path(reference), pixels)
    report = DiffReport(ref.name, measured_on, len(pixels), depart_db, [])
    for path in files:
        report.files.append(_compare(ref, path, pixels, depart_db))
    return report


def _images(images, meta: ModelMeta, count: int) -> tuple[np.ndarray, str]:
    from edgepilot.export.calibration import load_calibration

    if images is None and not meta.is_image:  # a feature vector
        generator = np.random.default_rng(0)
        values = generator.normal(size=(count, meta.input_size[1])).astype(np.float32)
        return values, "random inputs (a file can match on them and still depart on real data)"
    if images is None:
        height, width = meta.input_size
        generator = np.random.default_rng(0)
        pixels = generator.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
        return pixels, ("random images (a file can match on them and still depart on real "
                        "images: give images)")
    found = load_calibration(images, meta.input_size, limit=count, meta=meta)
    where = "an array" if isinstance(images, np.ndarray) else f"{found.source}"
    return found.images, f"{len(found.images)} images from {where}"


def _file_meta(path: Path) -> ModelMeta:
    from edgepilot.runtime import load

    meta = load(path).meta
    if meta is None:
        raise EdgepilotError(f"'{path}' carries no edgepilot metadata: diff cannot tell how "
                             "it takes images (export it with edgepilot, or compare it with "
                             "the PyTorch model it came from)")
    return meta


def _torch_reference(module, pixels: np.ndarray, meta: ModelMeta) -> _Reference:
    import torch

    from edgepilot.export.calibration import as_inputs
    from edgepilot.export.probe import flatten_outputs

    rows: list[list[tuple[str, np.ndarray]]] = []
    owners = set()

    def recorder(name: str):
        def record(_module, _args, out):
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                # A copy now: an in-place ReLU next would overwrite this module's output.
                rows[-1].append((name, out.detach().float().numpy().copy()))
        return record

    handles = []
    for name, child in module.named_modules():
        if not name:
            continue  # the whole model: its outputs are compared at the end
        handles.append(child.register_forward_hook(recorder(name)))
        if any(p.ndim >= 2 for p in child.parameters(recurse=False)):
            owners.add(name)
    module.eval()
    results = []
    try:
        with torch.no_grad():
            for x in as_inputs(pixels, meta):  # a batch of one, as every file runs
                rows.append([])
                results.append(flatten_outputs(module(torch.from_numpy(x)))[0])
    except EdgepilotError:
        raise
    except Exception as err:
        raise EdgepilotError(f"The model does not run on an image of its input size: "
                             f"{type(err).__name__}: {err}") from err
    finally:
        for handle in handles:
            handle.remove()
    entries = [(name, np.concatenate([row[i][1] for row in rows]))
               for i, (name, _) in enumerate(rows[0])]
    outputs = [np.concatenate([r[k].detach().float().numpy() for r in results])
               for k in range(len(results[0]))]
    return _Reference(f"PyTorch {type(module).__name__}", entries, owners, outputs,
                      meta.output, channels_last=False)


def _file_reference(path: Path, pixels: np.ndarray) -> _Reference:
    from edgepilot.runtime import load

    model = load(path)
    layers = _read_layers(path, _inputs(model, pixels))
    if layers is None:
        raise EdgepilotError(f"'{path}' does not expose its layers: give the PyTorch model, "
                             "an .onnx or a .tflite file as the reference")
    # An int8 file's equalized layers, put back in the float model's units (1 / scale).
    undo = {name: 1 / scale for name, scale in channel_scales(model.meta).items()}
    entries = [(layers.modules[t], _rescaled(layers.values[t], undo.get(layers.modules[t]),
                                             layers.channels_last))
               for t in layers.order if t in layers.modules and t in layers.values
               and layers.ops.get(t) not in _QUANTIZE_OPS]
    tensors = {t: _rescaled(layers.values[t], undo.get(layers.modules.get(t, "")),
                            layers.channels_last)
               for t in layers.order if t in layers.values and
               layers.ops.get(t) not in _QUANTIZE_OPS}
    return _Reference(path.name, entries, set(), _run(model, pixels), model.meta.output,
                      channels_last=layers.channels_last, tensors=tensors)


def _inputs(model, pixels: np.ndarray) -> list[np.ndarray]:
    from edgepilot.export.calibration import as_inputs

    if model.meta is None:
        raise EdgepilotError(f"'{model.path}' carries no edgepilot metadata: diff cannot tell "
                             "how it takes images")
    return as_inputs(pixels, model.meta)


def _run(model, pixels: np.ndarray) -> list[np.ndarray]:
    """The file's outputs as the runtime computes them (its fused kernels and delegates)."""
    rows = [model.run(x) for x in _inputs(model, pixels)]
    rows = [r if isinstance(r, tuple) else (r,) for r in rows]
    return [np.concatenate([np.asarray(r[k], np.float32) for r in rows])
            for k in range(len(rows[0]))]


def _read_layers(path: Path, inputs: list[np.ndarray]):
    """The file's layers, or None where its format's runtime does not expose them."""
    fmt = format_for_path(path)
    if not fmt.reader:
        return None
    reader = importlib.import_module(f"edgepilot.runtime.{fmt.reader}")
    read = getattr(reader, "read_layers", None)
    return None if read is None else read(path, inputs)


def _compare(ref: _Reference, path: Path, pixels: np.ndarray, depart_db: float) -> FileDiff:
    from edgepilot.export.guard import channel_sqnr, rank_by_sqnr_loss
    from edgepilot.runtime import load

    fmt = format_for_path(path)
    result = FileDiff(str(path), fmt.name)
    model = load(path)
    result.outputs = _outputs(ref, model.meta, _run(model, pixels))
    scales = channel_scales(model.meta)
    layers = _read_layers(path, _inputs(model, pixels))
    if layers is None:
        result.note = (f"{fmt.name} files do not expose their layers to edgepilot's runtime "
                       "(an ExecuTorch program's XNNPACK delegate runs the graph as one call): "
                       "compared at the outputs only")
        return result
    measured = [t for t in layers.order if t in layers.modules and t in layers.values
                and layers.ops.get(t) not in _QUANTIZE_OPS]
    resolve = _resolver([name for name, _ in ref.entries])
    labels = {resolve(layers.modules[t]) for t in measured}
    where: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(ref.entries):
        where.setdefault(name, []).append(index)
    sqnr, matched = {}, {}
    for tensor in measured:
        seen = [layers.values[tensor]]
        if tensor in layers.read_as:
            seen.append(layers.read_as[tensor])
        starts = [resolve(m) for m in [layers.modules[tensor],
                                       *layers.also_modules.get(tensor, [])]]
        axis = (-1 if layers.channels_last else 1) if seen[0].ndim >= 2 else 0
        best = None
        for start in sorted({i for m in starts if m for i in where.get(m, [])}):
            # an equalized layer's factors hold for what the file fused into it (its batch
            # norm, its ReLU)
            factor = scales.get(ref.entries[start][0])
            for index in range(start, min(start + FUSED_WINDOW + 1, len(ref.entries))):
                name, reference = ref.entries[index]
                if index > start and (name in labels or name in ref.owners):
                    break  # another layer of the file, or one with weights of its own
                reference = _rescaled(reference, factor, ref.channels_last)
                aligned = _align(reference, seen[0], layers.channels_last, ref.channels_last)
                if aligned is None:
                    continue
                for activation, expected in _activations(aligned):
                    for value in seen:
                        db = channel_sqnr(expected, value, axis)
                        if best is None or db > best[0]:
                            best = (db, name + activation, expected, value)
        if best is not None:
            sqnr[tensor] = best[0]
            matched[tensor] = (best[1], _cosine(best[2], best[3]))
    # Against a file of the same graph (an int8 file against its float one, files from tools
    # that record no modules), tensors the modules did not match are matched by their names.
    for tensor in layers.order:
        if tensor in sqnr or tensor not in ref.tensors or tensor not in layers.values or \
                layers.ops.get(tensor) in _QUANTIZE_OPS:
            continue
        value = layers.values[tensor]
        reference = _rescaled(ref.tensors[tensor],
                              scales.get(resolve(layers.modules.get(tensor, ""))),
                              ref.channels_last)
        aligned = _align(reference, value, layers.channels_last, ref.channels_last)
        if aligned is None:
            continue
        axis = (-1 if layers.channels_last else 1) if value.ndim >= 2 else 0
        seen = [value] + ([layers.read_as[tensor]] if tensor in layers.read_as else [])
        db, value = max(((channel_sqnr(aligned, v, axis), v) for v in seen),
                        key=lambda pair: pair[0])
        sqnr[tensor] = db
        matched[tensor] = (layers.modules.get(tensor) or tensor, _cosine(aligned, value))
    if not sqnr:
        result.note = ("no tensor of the file matched a module of the reference (module "
                       "names are lost in files from other tools, TorchScript and torch.export "
                       "programs): compared at the outputs only")
        return result
    # A layer can gain SQNR (an average pools noise away): it lost nothing, not a negative.
    loss = {e.layer: max(0.0, e.loss_db)
            for e in rank_by_sqnr_loss(layers.order, layers.inputs_of, sqnr)}
    result.layers = [LayerDiff(t, matched[t][0], layers.ops.get(t, ""), round(sqnr[t], 2),
                               round(loss[t], 2), round(matched[t][1], 5))
                     for t in layers.order if t in sqnr]
    result.departs = next((layer for layer in result.layers if layer.loss_db >= depart_db),
                          None)
    return result


def channel_scales(meta: ModelMeta | None) -> dict[str, np.ndarray]:
    """The per-channel factors an int8 export multiplied into layers' outputs
    (`export.equalization`), by module name, as the file's metadata records them; what is not
    a list of positive finite numbers per name is ignored (a file's metadata is its author's)."""
    recorded = (meta.extra.get(CHANNEL_SCALES) if meta is not None else None) or {}
    if not isinstance(recorded, dict):
        return {}
    scales = {}
    for name, values in recorded.items():
        if not isinstance(name, str) or not isinstance(values, list) or not values or \
                len(values) > 1 << 16 or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        array = np.asarray(values, np.float64)
        if np.all(np.isfinite(array)) and np.all(array > 0):
            scales[name] = array
    return scales


def _rescaled(value: np.ndarray, scale: np.ndarray | None, channels_last: bool) -> np.ndarray:
    """`value` with its channels multiplied by `scale` (unchanged without one, or when the
    channel count differs)."""
    if scale is None or value.ndim < 2:
        return value
    axis = value.ndim - 1 if channels_last or value.ndim == 2 else 1
    if value.shape[axis] != len(scale):
        return value
    shape = [1] * value.ndim
    shape[axis] = len(scale)
    return (value * scale.reshape(shape)).astype(value.dtype)


def _resolver(names: list[str]):
    """A file's module path -> the reference's name for it. litert-torch leaves containers
    out of its scopes (``0._bn2`` for ``_blocks.0._bn2``): a path matches the one name whose
    levels contain its own, in order, and end with its last."""
    known = set(names)
    by_last: dict[str, list[list[str]]] = {}
    for name in dict.fromkeys(names):
        parts = name.split(".")
        by_last.setdefault(parts[-1], []).append(parts)
    found: dict[str, str] = {}

    def resolve(path: str) -> str:
        if path in known or not path:
            return path
        if path not in found:
            want = path.split(".")
            fits = [".".join(p) for p in by_last.get(want[-1], []) if _contains(p, want)]
            found[path] = fits[0] if len(fits) == 1 else path
        return found[path]

    return resolve


def _contains(parts: list[str], want: list[str]) -> bool:
    """Whether `want` is a subsequence of `parts`."""
    rest = iter(parts)
    return all(any(p == w for p in rest) for w in want)


def _activations(reference: np.ndarray):
    """The reference as is, and after the activations an int8 op fuses: a functional ReLU
    (``F.relu6(x)`` in a forward) is no module, so no hook records its output."""
    yield "", reference
    yield " + ReLU", np.maximum(reference, 0)
    yield " + ReLU6", np.clip(reference, 0, 6)


def _align(reference: np.ndarray, value: np.ndarray, channels_last: bool,
           ref_channels_last: bool) -> np.ndarray | None:
    """The reference in the file's layout, or None when they are not the same tensor."""
    if reference.ndim == 4 and channels_last != ref_channels_last:
        order = (0, 2, 3, 1) if channels_last else (0, 3, 1, 2)
        reference = reference.transpose(order)
    return reference if reference.shape == value.shape else None


def _cosine(reference: np.ndarray, value: np.ndarray) -> float:
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = value.reshape(len(value), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = (a * b).sum(1) / np.maximum(norms, 1e-30)
    same[norms == 0] = 1.0 if np.array_equal(a, b) else 0.0
    return float(same.mean())


def _outputs(ref: _Reference, meta: ModelMeta | None, outputs: list[np.ndarray]) -> dict:
    """The file's outputs against the reference's: SQNR per output, and top-1 agreement for a
    classifier (logits against probabilities: the logits are softmaxed first)."""
    from edgepilot.export.guard import channel_sqnr

    expected = list(ref.outputs)
    kind = meta.output if meta is not None else ref.output_kind
    if len(expected) != len(outputs):
        return {"note": f"the file has {len(outputs)} outputs, the reference {len(expected)}"}
    if len(expected) == 1 and ref.output_kind != kind and "probs" in (ref.output_kind, kind):
        expected, outputs = [_softmax(expected[0]) if ref.output_kind == "logits" else
                             expected[0]], [_softmax(outputs[0]) if kind == "logits" else
                                            outputs[0]]
    found: dict = {"sqnr_db": []}
    for want, got in zip(expected, outputs):
        if want.shape != got.shape:
            return {"note": f"output shapes differ: {got.shape} against {want.shape}"}
        found["sqnr_db"].append(round(channel_sqnr(want, got, -1 if want.ndim == 2 else 1), 2))
    if len(expected) == 1 and expected[0].ndim == 2 and expected[0].shape[1] > 1 and \
            (meta is None or not meta.is_detector):
        agree = expected[0].argmax(1) == outputs[0].argmax(1)
        found["top1_agreement"] = round(float(agree.mean()), 4)
    return found


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def print_diff(report: DiffReport, top: int = 10, console=None) -> None:
    """The report as tables: per file, the layers that lose the most, where it departs, and
    its outputs as the runtime computes them."""
    from rich.table import Table

    from edgepilot.terminal import console as terminal_console
    from edgepilot.terminal import printable

    console = console or terminal_console(piped_width=140)
    console.print(f"reference: {printable(report.reference)}; measured on "
                  f"{printable(report.measured_on)}")
    for result in report.files:
        console.print()
        shown = [printable(result.path), result.format]
        outputs = result.outputs
        if "sqnr_db" in outputs:
            shown.append("outputs SQNR " + ", ".join(f"{db:.1f} dB" for db in
                                                   outputs["sqnr_db"]))
        if "top1_agreement" in outputs:
            shown.append(f"top-1 agreement {100 * outputs['top1_agreement']:.1f}%")
        if "note" in outputs:
            shown.append(printable(outputs["note"]))
        console.print(" | ".join(shown))
        if result.note:
            console.print(f"  {printable(result.note)}")
        if not result.layers:
            continue
        if result.departs is not None:
            d = result.departs
            console.print(f"  departs at {printable(d.module)} ({printable(d.op)}): it loses "
                          f"{d.loss_db:.1f} dB, down to {d.sqnr_db:.1f} dB")
        else:
            console.print(f"  no layer loses {report.depart_db:g} dB or more")
        table = Table(title=f"{min(top, len(result.layers))} of {len(result.layers)} layers, "
                            "the one that loses the most first")
        for column in ("#", "module", "op", "SQNR dB", "loses dB", "cosine"):
            table.add_column(column, justify="right" if column not in ("module", "op")
                             else "left", overflow="fold")
        position = {layer.tensor: i for i, layer in enumerate(result.layers, 1)}
        for layer in result.ranked[:top]:
            table.add_row(str(position[layer.tensor]), printable(layer.module),
                          printable(layer.op), f"{layer.sqnr_db:.1f}", f"{layer.loss_db:.1f}",
                          f"{layer.cosine:.4f}")
        console.print(table)


def plot_diff(report: DiffReport, path: str | Path) -> Path:
    """SQNR of every compared layer, in execution order, one line per file; a ring marks
    where each departs."""
    from edgepilot.errors import require

    matplotlib = require("matplotlib", "plot", "Plotting a diff")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.5))
    try:
        for result in report.files:
            if not result.layers:
                continue
            db = [layer.sqnr_db for layer in result.layers]
            line, = axes.plot(range(1, len(db) + 1), db, marker=".",
                              label=f"{Path(result.path).name} ({result.format})")
            if result.departs is not None:
                at = result.layers.index(result.departs) + 1
                axes.plot([at], [result.departs.sqnr_db], "o", markersize=12,
                          markerfacecolor="none", color=line.get_color())
        axes.set_xlabel("layer, in execution order")
        axes.set_ylabel("SQNR against the reference, dB")
        axes.set_title(f"against {report.reference}, on {report.measured_on.split(' (')[0]}",
                       fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path
