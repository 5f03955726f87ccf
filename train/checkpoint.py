"""Checkpoints: state dict + architecture name + its config + `ModelMeta`, loadable with
``torch.load(path, weights_only=True)`` (plain tensors, dicts, lists and strings only)."""

from __future__ import annotations

from pathlib import Path

from edgepilot.errors import ModelFileError, UnknownArchitectureError, require
from edgepilot.meta import ModelMeta
from edgepilot.train.models import create_model

# torch comes with the export extra; say so instead of a bare ModuleNotFoundError.
torch = require("torch", "export", "Loading and saving checkpoints")
nn = torch.nn

__all__ = ["save_checkpoint", "load_checkpoint"]

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: nn.Module, *, arch: str, config: dict,
                    meta: ModelMeta, metrics: dict | None = None) -> Path:
    """Save `model` so that `load_checkpoint` can rebuild it from the file alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "config": dict(config),
        "meta": meta.to_dict(),
        "metrics": dict(metrics or {}),
        "state_dict": model.state_dict(),
    }
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelMeta, dict]:
    """Rebuild the model of a checkpoint, in eval mode. Returns (model, meta, payload)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Checkpoint not found: '{path}'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ModelFileError(
            f"Cannot read '{path}' as a PyTorch checkpoint ({type(err).__name__}). "
            "Is it a .pt file written by edgepilot train?"
        ) from err
    missing = [k for k in ("arch", "config", "meta", "state_dict") if k not in payload] \
        if isinstance(payload, dict) else ["arch", "config", "meta", "state_dict"]
    if missing:
        raise ModelFileError(
            f"'{path}' is not an edgepilot checkpoint: it lacks {', '.join(missing)}. "
            "Plain state dicts need their architecture: build the model and use edgepilot.export."
        )
    arch, config, weights = payload["arch"], payload["config"], payload["state_dict"]
    if not isinstance(arch, str) or not isinstance(config, dict) or \
            not isinstance(weights, dict) or \
            not all(isinstance(k, str) and isinstance(v, (bool, int, float, str))
                    for k, v in config.items()):
        raise ModelFileError(f"'{path}' is a malformed edgepilot checkpoint: arch must be a "
                             "name, config a dict of plain values, state_dict a dict")
    try:
        meta = ModelMeta.from_dict(payload["meta"])
    except (ValueError, TypeError) as err:
        raise ModelFileError(f"'{path}' carries malformed metadata: {err}") from err
    # The config must describe the weights the file holds, checked on torch's "meta" device
    # (shapes without memory) before anything is allocated: a config of width 4000 would
    # otherwise build a multi-GB model only to find that the weights do not fit.
    try:
        with torch.device("meta"):
            skeleton = create_model(arch, **config)
    except UnknownArchitectureError as err:
        raise UnknownArchitectureError(f"Checkpoint '{path}': {err}") from err
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise ModelFileError(f"'{path}': architecture '{arch}' cannot be built with config "
                             f"{config}: {str(err).splitlines()[0] if str(err) else err!r}") \
            from err
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None
             for k, v in weights.items()}
    if expected != found:
        differ = sorted(k for k in expected.keys() | found.keys()
                        if expected.get(k) != found.get(k))
        first = differ[0]
        raise ModelFileError(
            f"Weights in '{path}' do not fit architecture '{arch}' with config {config}: "
            f"{len(differ)} tensor(s) differ, e.g. '{first}' is {found.get(first)} in the "
            f"file, {expected.get(first)} in the architecture"
        )
    # Now the model is no larger than the weights in the file.
    model = create_model(arch, **config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ModelFileError(
            f"Weights in '{path}' do not fit architecture '{arch}' "
            f"with config {config}: {str(err).splitlines()[0]}"
        ) from err
    return model.eval(), meta, payload
