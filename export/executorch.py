"""ExecuTorch exporter: torch.export -> (int8: PT2E with XNNPACK's quantizer) -> XNNPACK
delegate -> one .pte program with the edgepilot metadata as a constant method.

The file takes what the module takes (NCHW, normalised float) and returns its logits, so the
report compares it with PyTorch directly. int8 is static: per-channel int8 weights, int8
activations calibrated on the same images as the other formats, and the same accuracy guard,
whose layers kept in float are the graph nodes the quantizer leaves alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, UnsupportedFormatError, require
from edgepilot.export.calibration import as_inputs
from edgepilot.export.guard import Guard, LayerError, channel_sqnr, rank_by_sqnr_loss
from edgepilot.export.noise import first_line, quiet_exporters
from edgepilot.export.options import ExportOptions
from edgepilot.meta import ModelMeta
from edgepilot.runtime.backend import quiet_native_stderr
from edgepilot.runtime.executorch import META_METHOD

#: How activation ranges are gathered: "minmax" is the absolute range (as the other formats'
#: minmax); "histogram" is XNNPACK's default (HistogramObserver, which minimises the L2
#: quantization error and so may clip outliers).
CALIBRATION_METHODS = ("minmax", "histogram")
#: ExecuTorch programs keep float inputs and outputs; int8 lives inside the delegate.
IO_DTYPES = (None, "float32")
_QUIET_LOGGERS = ("torchao", "executorch")


def export(module, sample_input, path: Path, options: ExportOptions) -> dict:
    """Write `module` as an ExecuTorch program (.pte) to `path`; returns notes for the report.

    The batch is one, as on a device (`dynamic_batch` is noted, not applied: XNNPACK plans
    its memory for static shapes); `Model` runs a batch row by row.
    """
    meta, precision, calibration = options.meta, options.precision, options.calibration
    method, guard, io_dtype = options.method, options.guard, options.io_dtype
    dynamic_batch = options.dynamic_batch
    if method not in CALIBRATION_METHODS:
        raise UnsupportedFormatError(f"Calibration method '{method}' is not available for "
                                     f"executorch. Valid: {', '.join(CALIBRATION_METHODS)}")
    if io_dtype not in IO_DTYPES:
        raise UnsupportedFormatError(f"io_dtype '{io_dtype}' is not available for executorch: "
                                     "its programs take and return float32 (int8 is inside the "
                                     "XNNPACK delegate). Valid: float32")
    with _quiet():  # importing torchao prints its optional CUDA kernels that fail to load
        require("executorch.exir", "executorch", "Exporting to ExecuTorch")
        require("torchao.quantization.pt2e.quantize_pt2e", "executorch",
                "Quantizing for ExecuTorch")
        require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch",
                "Quantizing for ExecuTorch")
    float_program = _exported(module, sample_input)
    notes: dict = {"delegate": "XNNPACK",
                   "batch": "1" + (" (ExecuTorch programs have a fixed batch)"
                                   if dynamic_batch else "")}
    if precision == "fp32":
        path.write_bytes(_lower(float_program, meta))
        notes["fp32_bytes"] = path.stat().st_size
        return notes
    if calibration is None or not len(calibration):
        raise EdgepilotError("Full int8 needs calibration images: pass calib=PATH or a model "
                             "whose dataset edgepilot can generate")
    if meta is None:
        raise EdgepilotError("int8 calibration of images needs the model's ModelMeta (meta=)")
    inputs = as_inputs(calibration, meta)
    notes["calibration"] = {"method": method, "images": len(inputs)}
    _int8(float_program, sample_input, inputs, path, meta, method, guard)
    if guard is not None:
        notes["kept_float"] = guard.kept
        notes["guard_attempts"] = guard.attempts
    return notes


@contextlib.contextmanager
def _quiet():
    """torch.export, torchao and the lowering warn and log at length about what does not
    affect the file; native code prints cpuinfo notices. Replayed if the block fails."""
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    with quiet_native_stderr(), quiet_exporters():
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _exported(module, sample_input):
    import torch

    try:
        with _quiet():
            return torch.export.export(module, (sample_input,))  # export() set eval mode
    except Exception as err:
        raise EdgepilotError(_failure("torch.export could not capture", module, err)) from err


def _failure(what: str, module, err: Exception) -> str:
    return (f"{what} {type(module).__name__} for ExecuTorch: {first_line(err)}. Check that "
            "the model exports with torch.export.export(), or try --format onnx.")


def _lower(program, meta: ModelMeta | None) -> bytes:
    """An exported program lowered to XNNPACK and serialised, with the metadata method."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    constants = {META_METHOD: meta.to_json()} if meta is not None else None
    try:
        with _quiet():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               constant_methods=constants)
            return bytes(edge.to_executorch().buffer)
    except Exception as err:
        raise EdgepilotError(_failure("ExecuTorch could not lower", program.module(), err)) \
            from err


def _quantizer(method: str, keep: list[str], graph):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True)
    if method == "minmax":
        from torchao.quantization.pt2e import MinMaxObserver

        spec = config.input_activation
        spec = dataclasses.replace(spec, observer_or_fake_quant_ctr=MinMaxObserver.with_args(
            eps=2 ** -12))
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    quantizer = _clamp_fusing_quantizer()().set_global(config)
    if keep:
        # A tensor stays float only if both sides of it run in float: the op producing it,
        # the op it is computed from within the same pattern (a conv before its ReLU), and
        # the ops reading it, which would otherwise quantize it as their input.
        nodes = {n.name: n for n in graph.nodes}
        skip = set(keep)
        for name in keep:
            if name in nodes:
                near = [*nodes[name].all_input_nodes, *nodes[name].users]
                skip |= {n.name for n in near if n.op == "call_function"}
        quantizer.set_filter_function(lambda n: n.name not in skip)
    return quantizer


def _clamp_fusing_quantizer():
    """XNNPACK's quantizer, taught that a conv (or linear) followed by ReLU6 is one pattern,
    as it already knows conv + ReLU. Left to itself it quantizes the conv's output over its
    whole pre-activation range and runs ReLU6 in float: with ranges like [-40, 40] the 0..6
    that matters gets a tenth of the 256 levels. That alone took EfficientNet-Lite0 (33
    ReLU6s) from 0.85 top-1 agreement in ONNX and TFLite, which fuse the clamp, to 0.49.
    Here the conv's output is left unobserved and the clamp's output is what gets a scale."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        get_bias_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
        get_weight_qspec,
    )
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    aten = torch.ops.aten
    producers = {aten.conv1d.default, aten.conv2d.default, aten.linear.default}

    def clamps_to_six(node) -> bool:
        if node.op != "call_function":
            return False
        if node.target in (aten.relu6.default, aten.relu6_.default):
            return True
        return node.target in (aten.hardtanh.default, aten.hardtanh_.default) and \
            tuple(node.args[1:3]) == (0.0, 6.0)

    class ClampFusing(XNNPACKQuantizer):
        def annotate(self, model):
            config = self.global_config
            for clamp in model.graph.nodes:
                if not clamps_to_six(clamp):
                    continue
                producer = clamp.args[0]
                if producer.op != "call_function" or producer.target not in producers or \
                        len(producer.users) != 1:
                    continue
                weight = producer.args[1]
                bias = producer.args[2] if len(producer.args) > 2 else None
                if not all(isinstance(n, torch.fx.Node) for n in (producer.args[0], weight)) \
                        or not (bias is None or isinstance(bias, torch.fx.Node)):
                    continue  # a constant operand: leave the pattern to XNNPACK's own rules
                pattern = [producer, clamp, weight, *([bias] if bias is not None else [])]
                if self.filter_fn and not all(self.filter_fn(n) for n in pattern):
                    continue  # kept in float by the guard
                if any(Q_ANNOTATION_KEY in n.meta for n in pattern):
                    continue
                inputs = {producer.args[0]: get_input_act_qspec(config),
                          weight: get_weight_qspec(config)}
                if bias is not None:
                    inputs[bias] = get_bias_qspec(config)
                producer.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    input_qspec_map=inputs, _annotated=True)
                clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    output_qspec=get_output_act_qspec(config), _annotated=True)
                for n in (weight, bias):
                    if n is not None:
                        n.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
            return super().annotate(model)

    return ClampFusing


def _int8(float_program, sample_input, inputs: list[np.ndarray], path: Path,
          meta: ModelMeta, method: str, guard: Guard | None) -> None:
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    counter = itertools.count()
    converted: dict[Path, object] = {}  # trial file -> its quantized graph, for ranking

    def quantize(keep: list[str]) -> Path:
        graph = float_program.module()
        try:
            with _quiet():
                prepared = prepare_pt2e(graph, _quantizer(method, keep, graph.graph))
                for x in inputs:
                    prepared(torch.from_numpy(x))
                quantized = convert_pt2e(prepared)
                program = torch.export.export(quantized, (sample_input,))
        except Exception as err:
            raise EdgepilotError(_failure("PT2E could not quantize", float_program.module(),
                                          err)) from err
        trial = path.with_name(f"{path.stem}.try{next(counter)}{path.suffix}")
        trial.write_bytes(_lower(program, meta))
        converted[trial] = quantized
        return trial

    def rank(trial: Path) -> list[LayerError]:
        return _rank_nodes(_folded(float_program), converted[trial], inputs[:32])

    try:
        trial = quantize([]) if guard is None else guard.run(quantize, rank, "executorch")
        path.write_bytes(trial.read_bytes())
    finally:  # also when a trial fails: no half-made files left beside the user's
        for leftover in path.parent.glob(f"{path.stem}.try*{path.suffix}"):
            leftover.unlink()


def _folded(float_program):
    """The float graph with batch norm folded into the convs before it, as prepare_pt2e
    folds the graph it quantizes: the two then name the same tensor the same."""
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    graph = float_program.module()
    _fuse_conv_bn_(graph)
    return graph


def _rank_nodes(float_graph, quantized_graph, inputs) -> list[LayerError]:
    """Activations ranked by the SQNR their op loses in the int8 graph (see guard): each
    quantized tensor is read after its dequantize, the float one at the same node name."""
    import torch

    float_acts = _record(float_graph, inputs, lambda n: n.op == "call_function" and n.name)
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    dequantize = torch.ops.quantized_decomposed.dequantize_per_tensor.default

    def source(n):  # dequantize(quantize(x)) -> x's name: where x's int8 error shows
        if n.target != dequantize or n.args[0].target != quantize:
            return None
        origin = n.args[0].args[0]
        return origin.name if origin.op == "call_function" else None

    quant_acts = _record(quantized_graph, inputs, source)
    sqnr = {name: channel_sqnr(ref, quant_acts[name], 1 if ref.ndim > 1 else 0)
            for name, ref in float_acts.items()
            if name in quant_acts and quant_acts[name].shape == ref.shape}
    order, inputs_of = [], {}
    for node in float_graph.graph.nodes:
        if node.op == "call_function":
            order.append(node.name)
            inputs_of[node.name] = [a.name for a in node.all_input_nodes
                                    if a.op in ("call_function", "placeholder")]
    return rank_by_sqnr_loss(order, inputs_of, sqnr)


def _record(graph, inputs, key) -> dict[str, np.ndarray]:
    """Run an fx graph on each input; the tensors of the nodes `key` names, concatenated."""
    import torch

    seen: dict[str, list[np.ndarray]] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            name = key(n) if n.op == "call_function" else None
            if name and isinstance(out, torch.Tensor) and out.is_floating_point():
                seen.setdefault(name, []).append(out.detach().numpy().copy())
            return out

    with _quiet(), torch.no_grad():
        for x in inputs:
            Recorder(graph).run(torch.from_numpy(x))
    return {name: np.concatenate(parts) for name, parts in seen.items()}
