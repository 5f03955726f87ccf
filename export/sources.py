"""Every kind of PyTorch model a user may hold, as a module `edgepilot.export` can take.

- an edgepilot checkpoint (``edgepilot train`` wrote it: architecture, weights and metadata);
- a TorchScript file (``torch.jit.save``);
- a ``torch.export`` program (``torch.export.save``, ``.pt2``);
- a state_dict (``torch.save(model.state_dict())``) with its architecture: ``--arch
  package.module:factory``, ``torchvision:NAME`` or ``timm:NAME``;
- an architecture alone (``timm:NAME`` ...), with random weights unless ``--weights`` is given;
- a pickled module (``torch.save(model)``), only when the user says they trust the file:
  unpickling runs code from it.

Every file is first read with ``weights_only=True``, which runs no code from the file.
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgepilot.errors import EdgepilotError, InputError, ModelFileError, require
from edgepilot.export.noise import first_line, quiet_exporters
from edgepilot.meta import ModelMeta

__all__ = ["Source", "load_source", "build_arch", "IMAGENET_MEAN", "IMAGENET_STD"]

#: The normalisation torchvision's and most of timm's ImageNet models were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: timm and torchvision need a torch build that matches them, so no extra brings them.
_MATCHING_TORCH = ("pip install timm torchvision, at versions that match your torch (the "
                   "README's 'Any PyTorch model' names a set that works)")

#: Keys under which training scripts commonly nest a state_dict.
_NESTED = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class Source:
    """A model ready to export.

    Attributes:
        module: the torch.nn.Module (in eval mode).
        kind: what the file was, for messages (``"TorchScript"``, ``"state_dict"`` ...).
        meta: the metadata it carries (edgepilot checkpoints), else None.
        input_shape: the input shape it records (.pt2 programs), else None.
        mean, std: the normalisation its architecture declares (timm), else None.
    """

    module: object
    kind: str
    meta: ModelMeta | None = None
    input_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _exported_format(path: Path) -> str | None:
    """The format of a file an export writes (by suffix), or None for anything else."""
    from edgepilot.errors import UnsupportedFormatError
    from edgepilot.formats import format_for_path

    try:
        return format_for_path(path).name
    except UnsupportedFormatError:
        return None


def load_source(model: str, *, arch: str | None = None, weights: str | None = None,
                trust_pickle: bool = False) -> Source:
    """The model that `model` names: a file (see the module docstring) or an architecture
    name such as ``timm:mobilenetv4_conv_small``."""
    torch = require("torch", "export", "Exporting models")
    path = Path(model)
    if not path.exists() and _is_arch(model):
        if arch is not None:
            raise EdgepilotError(f"Give the architecture once: '{model}' is one, and so is "
                                 f"arch={arch}")
        source = build_arch(model)
        if weights:
            _load_weights(source.module, _read_state_dict(torch, Path(weights)), weights)
            source.kind += f" with weights from {weights}"
        else:
            source.kind += " (random weights: pass --weights FILE for trained ones)"
        return source
    exported = _exported_format(path)
    if exported:  # an .onnx or .tflite is an export's output, never its input
        raise InputError(f"'{path.name}' is already an exported {exported} file: export takes "
                         "the PyTorch model it came from (an edgepilot checkpoint, TorchScript, "
                         "a .pt2 program, or a state_dict with arch=). To run or measure this "
                         "file, use predict or bench")
    if not path.is_file():
        hint = "" if ":" not in model else \
            " (an architecture is written package.module:factory, torchvision:NAME or timm:NAME)"
        raise ModelFileError(f"Model not found: '{model}'{hint}")
    if zipfile.is_zipfile(path):
        names = _archive_names(path)
        if any(n.endswith("/code/") or "/code/__torch__" in n for n in names) or \
                any(n.endswith("constants.pkl") for n in names):
            return Source(_load_torchscript(torch, path), "TorchScript")
        if any(n.endswith("archive_format") or "/models/" in n for n in names) and \
                not any(n.endswith("/data.pkl") for n in names):
            return _load_program(torch, path)
    payload = _weights_only(torch, path, trust_pickle)
    if isinstance(payload, torch.nn.Module):  # trusted pickle
        if arch:
            raise EdgepilotError(f"'{path}' holds a whole module; arch= is for state_dicts")
        return Source(payload.eval(), "pickled module")
    if isinstance(payload, dict) and {"arch", "config", "meta", "state_dict"} <= set(payload):
        from edgepilot.train.checkpoint import load_checkpoint

        module, meta, _ = load_checkpoint(path)
        return Source(module, "edgepilot checkpoint", meta=meta)
    state = _state_dict_of(torch, payload)
    if state is None:
        raise ModelFileError(
            f"'{path}' is not a model edgepilot can export: it holds "
            f"{type(payload).__name__}, not a checkpoint, TorchScript, .pt2 program or "
            "state_dict")
    if arch is None:
        raise EdgepilotError(
            f"'{path}' is a state_dict (weights only, {len(state)} tensors): name its "
            "architecture with arch=package.module:factory (or torchvision:NAME, timm:NAME)")
    source = build_arch(arch)
    _load_weights(source.module, state, str(path))
    source.kind = f"state_dict with {arch}"
    return source


def _is_arch(text: str) -> bool:
    head, sep, tail = text.partition(":")
    return bool(sep and tail and head and "/" not in head and "\\" not in head)


def build_arch(spec: str) -> Source:
    """A module from ``package.module:factory``, ``torchvision:NAME`` or ``timm:NAME``."""
    head, _, name = spec.partition(":")
    if not name or not head:
        raise EdgepilotError(f"arch= takes package.module:factory, torchvision:NAME or "
                             f"timm:NAME, got '{spec}'")
    try:
        with quiet_exporters():
            if head == "timm":
                timm = require("timm", "", "Building timm models", install=_MATCHING_TORCH)
                module = timm.create_model(name, pretrained=False)
                config = getattr(module, "pretrained_cfg", None) or {}
                return Source(module.eval(), f"timm {name}",
                              input_shape=(1, *config["input_size"])
                              if "input_size" in config else None,
                              mean=tuple(config["mean"]) if "mean" in config else None,
                              std=tuple(config["std"]) if "std" in config else None)
            if head == "torchvision":
                models = require("torchvision.models", "", "Building torchvision models",
                                 install=_MATCHING_TORCH)
                return Source(models.get_model(name, weights=None).eval(),
                              f"torchvision {name}", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    except EdgepilotError:
        raise
    except Exception as err:
        raise EdgepilotError(f"Cannot build '{spec}': {first_line(err)}") from err
    try:
        factory = getattr(importlib.import_module(head), name)
    except ImportError as err:
        raise EdgepilotError(f"arch={spec}: cannot import '{head}' ({first_line(err)}); "
                             "is it installed, or on PYTHONPATH?") from err
    except AttributeError as err:
        raise EdgepilotError(f"arch={spec}: '{head}' has no '{name}'") from err
    try:
        module = factory()
    except Exception as err:
        raise EdgepilotError(f"arch={spec}: calling {name}() failed: {first_line(err)}") \
            from err
    torch = require("torch", "export", "Exporting models")
    if not isinstance(module, torch.nn.Module):
        raise EdgepilotError(f"arch={spec}: {name}() returned {type(module).__name__}, not "
                             "a torch.nn.Module")
    return Source(module.eval(), f"{spec}")


def _archive_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelFileError(f"Cannot read '{path}': {err}") from err


def _load_torchscript(torch, path: Path):
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:
        raise ModelFileError(f"Cannot load '{path}' as TorchScript: {first_line(err)}") from err


def _load_program(torch, path: Path) -> Source:
    try:
        with quiet_exporters():
            program = torch.export.load(str(path))
    except Exception as err:
        raise ModelFileError(f"Cannot load '{path}' as a torch.export program (.pt2): "
                             f"{first_line(err)}") from err
    shape = None
    try:
        args, _ = program.example_inputs
        shape = tuple(int(d) for d in args[0].shape)
    except Exception:  # programs saved without example inputs: the user gives the size
        for node in program.graph.nodes:
            value = node.meta.get("val") if node.op == "placeholder" else None
            if value is not None and node.name not in program.state_dict and \
                    hasattr(value, "shape"):
                try:
                    shape = tuple(int(d) for d in value.shape)
                except TypeError:  # symbolic dims
                    shape = None
                break
    return Source(_Program(torch, program.module()), "torch.export program", input_shape=shape)


def _Program(torch, graph_module):
    """A loaded program as a module: its train/eval mode was fixed when it was exported,
    and its graph module refuses `.eval()`, which every exporter calls."""

    class Program(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.program = inner

        def train(self, mode: bool = True):
            self.training = mode
            return self

        def forward(self, *args):
            return self.program(*args)

    return Program(graph_module).eval()


def _weights_only(torch, path: Path, trust_pickle: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        pickled = "Unsupported global" in text or "weights_only" in text
        if not pickled:
            raise ModelFileError(f"Cannot read '{path}' as a PyTorch file "
                                 f"({type(err).__name__}): {first_line(err, 200)}") from err
        if not trust_pickle:
            raise ModelFileError(
                f"'{path}' holds pickled Python objects (e.g. a whole module saved with "
                "torch.save(model)); loading it runs code from the file. If you trust it, "
                "pass trust_pickle=True; better, save model.state_dict() and pass arch=, or "
                "save TorchScript or a torch.export program") from err
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ModelFileError(f"Cannot unpickle '{path}': {first_line(err)} (the classes it "
                             "refers to must be importable)") from err
    if not isinstance(payload, torch.nn.Module):
        state = _state_dict_of(torch, payload)
        if state is None:
            raise ModelFileError(f"'{path}' holds {type(payload).__name__}, not a module or "
                                 "a state_dict")
        return state
    return payload


def _state_dict_of(torch, payload) -> dict | None:
    if not isinstance(payload, dict):
        return None
    for key in _NESTED:
        if isinstance(payload.get(key), dict) and _tensors(torch, payload[key]):
            return payload[key]
    return payload if _tensors(torch, payload) else None


def _tensors(torch, mapping: dict) -> bool:
    return bool(mapping) and all(isinstance(k, str) for k in mapping) and \
        all(isinstance(v, torch.Tensor) for v in mapping.values())


def _read_state_dict(torch, path: Path) -> dict:
    if not path.is_file():
        raise ModelFileError(f"Weights not found: '{path}'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelFileError(f"Cannot read '{path}' as a state_dict: {first_line(err)}") from err
    state = _state_dict_of(torch, payload)
    if state is None:
        raise ModelFileError(f"'{path}' is not a state_dict (a dict of tensors)")
    return state


def _load_weights(module, state: dict, origin: str) -> None:
    """Load `state` strictly, or say in one line which tensors do not fit."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    # BatchNorm's step counter is absent from older state_dicts and never used in eval.
    missing = sorted(k for k in expected.keys() - found.keys()
                     if not k.endswith("num_batches_tracked"))
    unexpected = sorted(found.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. '{k}' is {found[k]} in the "
                         f"file, {expected[k]} in the model)")
        raise ModelFileError(f"The weights in '{origin}' do not fit the architecture: "
                             f"{'; '.join(parts)} tensors")
    module.load_state_dict(state, strict=False)


def source_meta(source: Source, *, name: str, input_size: tuple[int, int] | None = None,
                labels: list[str] | None = None, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None) -> ModelMeta:
    """Metadata for an image classifier that carries none: what the user gave, else what
    the model records (a .pt2 program's input, timm's normalisation), else the ImageNet
    conventions; labels default to class_0 .. class_N-1 from the output size."""
    torch = require("torch", "export", "Exporting models")
    if source.meta is not None:  # an edgepilot checkpoint: what the user gives overrides it
        changes = {key: tuple(value) for key, value in (
            ("input_size", input_size), ("labels", labels), ("mean", mean), ("std", std))
            if value}
        try:
            return source.meta.replace(**changes)
        except (ValueError, TypeError) as err:
            raise EdgepilotError(f"Cannot describe the model's input: {err}") from err
    shape = source.input_shape
    if input_size is None:
        if shape is not None and len(shape) == 4:
            input_size = (shape[2], shape[3])
        else:
            input_size = (224, 224)
    channels = shape[1] if shape is not None and len(shape) == 4 else 3
    mean = mean or source.mean or IMAGENET_MEAN
    std = std or source.std or IMAGENET_STD
    if labels is None:
        from edgepilot.export import flatten_outputs

        sample = torch.zeros(1, channels, *input_size)
        try:
            with torch.no_grad(), quiet_exporters():
                first = flatten_outputs(source.module(sample))[0][0]
        except EdgepilotError:
            raise
        except Exception as err:
            raise EdgepilotError(
                f"The model does not run on a 1x{channels}x{input_size[0]}x{input_size[1]} "
                f"input: {first_line(err)}. Give its input size with input_size=") from err
        labels = [f"class_{i}" for i in range(int(first[0].numel()))]
    color = "GRAY" if channels == 1 else "RGB"
    try:
        return ModelMeta(name=name, labels=tuple(labels), input_size=tuple(input_size),
                         color=color, mean=tuple(mean)[:channels], std=tuple(std)[:channels])
    except (ValueError, TypeError) as err:
        raise EdgepilotError(f"Cannot describe the model's input: {err}") from err
