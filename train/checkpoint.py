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
    try:
        model = create_model(payload["arch"], **payload["config"])
    except UnknownArchitectureError as err:
        raise UnknownArchitectureError(f"Checkpoint '{path}': {err}") from err
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ModelFileError(
            f"Weights in '{path}' do not fit architecture '{payload['arch']}' "
            f"with config {payload['config']}: {str(err).splitlines()[0]}"
        ) from err
    return model.eval(), ModelMeta.from_dict(payload["meta"]), payload
