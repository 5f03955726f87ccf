"""The one table of model formats.

CLI choices, `edgepilot.export`, `edgepilot.load` (by longest file suffix), the benchmark loop and
test parametrisation all read `FORMATS`; nothing indexes formats by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepilot.errors import UnsupportedFormatError, did_you_mean

__all__ = ["Format", "FORMATS", "format_by_name", "format_for_path"]


@dataclass(frozen=True)
class Format:
    """One model file format.

    Attributes:
        name: what users type (``--format onnx``).
        suffix: file suffix; the longest matching suffix picks the format.
        backend: module under `edgepilot.runtime` that runs the file.
        exporter: module under `edgepilot.export` that writes it.
        precisions: precisions the exporter can write; the first is the default.
        runtime_extra: pip extra needed to run it ('' = the base install).
        description: one line for help texts and the README.
        backend_class: the `Backend` subclass in that module.
        reader: module under `edgepilot.runtime` whose ``read_info(path)`` serves
            ``edgepilot info`` (the tensors, layers and ops of a file of this format).
        folder: the "file" is a folder (a Core ML ``.mlpackage``).
        options: export options only this format takes (fields of
            `edgepilot.export.options.ExportOptions`), e.g. Core ML's ``compute_units``.
        load_options: `edgepilot.load` options only this format takes, e.g. the Edge TPU's
            ``accelerator`` (which Coral runs the file).
        runtime_requirements: what running a file of this format needs, as pip requirements
            with the lowest version edgepilot supports (pyproject.toml says the same; a test
            keeps them equal). Deploy bundles pin these; empty where no torch-free Python
            runtime exists (ExecuTorch's is a torch extension).
    """

    name: str
    suffix: str
    backend: str
    exporter: str
    precisions: tuple[str, ...]
    runtime_extra: str
    description: str
    backend_class: str = ""
    reader: str = ""
    folder: bool = False
    options: tuple[str, ...] = ()
    load_options: tuple[str, ...] = ()
    runtime_requirements: tuple[str, ...] = ()


_BASE = ("numpy>=1.24", "opencv-python-headless>=4.8")  # images in, pixels out
_LITERT = ("ai-edge-litert>=2.0", "flatbuffers>=24", *_BASE)

FORMATS: tuple[Format, ...] = (
    Format(
        name="onnx",
        suffix=".onnx",
        backend="onnx",
        exporter="onnx",
        precisions=("fp32", "fp16", "int8"),
        runtime_extra="",
        description="ONNX, run by onnxruntime (any OS, Raspberry Pi, x86)",
        backend_class="OnnxBackend",
        reader="onnx_info",
        runtime_requirements=("onnxruntime>=1.24.3", *_BASE),
    ),
    Format(
        name="tflite",
        suffix=".tflite",
        backend="litert",
        exporter="litert",
        precisions=("fp32", "fp16", "dynamic", "int8"),
        runtime_extra="tflite",
        description="TFLite/LiteRT, NHWC, with standard metadata (Android, iOS, Raspberry Pi)",
        backend_class="LiteRTBackend",
        reader="litert_info",
        runtime_requirements=_LITERT,
    ),
    Format(
        name="edgetpu",
        suffix="_edgetpu.tflite",
        backend="edgetpu",
        exporter="edgetpu",
        precisions=("int8",),
        runtime_extra="tflite",
        description="Coral Edge TPU: full-int8 TFLite checked op by op against the Edge TPU's "
                    "rules, compiled by edgetpu_compiler when it is on PATH (runs with "
                    "libedgetpu on a Coral USB/PCIe/Dev Board)",
        backend_class="EdgeTPUBackend",
        reader="edgetpu_check",
        load_options=("accelerator",),
        runtime_requirements=_LITERT,
    ),
    Format(
        name="coreml",
        suffix=".mlpackage",
        backend="coreml",
        exporter="coreml",
        precisions=("fp32", "fp16", "int8"),
        runtime_extra="coreml",
        description="Core ML image classifier (iPhone, iPad, Mac: CPU, GPU, Neural Engine); "
                    "converts on any OS, predicts on macOS",
        backend_class="CoreMLBackend",
        reader="coreml_info",
        folder=True,
        options=("compute_units",),
        runtime_requirements=("coremltools>=9.0", *_BASE),
    ),
    Format(
        name="executorch",
        suffix=".pte",
        backend="executorch",
        exporter="executorch",
        precisions=("fp32", "int8"),
        runtime_extra="executorch",
        description="ExecuTorch program with the XNNPACK delegate (Android, iOS, Linux; its "
                    "Python runtime needs torch)",
        backend_class="ExecuTorchBackend",
        reader="executorch_info",
    ),
)


def format_by_name(name: str) -> Format:
    """The format called `name`, or an error listing the known names."""
    for fmt in FORMATS:
        if fmt.name == name.lower():
            return fmt
    names = [f.name for f in FORMATS]
    raise UnsupportedFormatError(
        f"Unknown format '{name}'.{did_you_mean(name.lower(), names)} "
        f"Valid formats: {', '.join(names)}"
    )


def format_for_path(path: str | Path) -> Format:
    """The format of a model file, chosen by its longest matching suffix."""
    lower = Path(path).name.lower()
    matches = [f for f in FORMATS if lower.endswith(f.suffix)]
    if matches:
        return max(matches, key=lambda f: len(f.suffix))
    suffix = "".join(Path(lower).suffixes[-1:]) or "(none)"
    suffixes = [f.suffix for f in FORMATS]
    hint = did_you_mean(suffix, suffixes)
    if suffix in (".pt", ".pth"):
        hint = (
            " This looks like a PyTorch checkpoint: export it first with "
            "'edgepilot export CHECKPOINT --format onnx'."
        )
    raise UnsupportedFormatError(
        f"Cannot tell the model format of '{path}' from its suffix {suffix}.{hint} "
        f"Valid suffixes: {', '.join(suffixes)}"
    )
