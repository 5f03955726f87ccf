"""A small, seeded training loop for image classifiers, with a rich progress bar."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from edgepilot.errors import require
from edgepilot.meta import ModelMeta

# torch comes with the export extra; say so instead of a bare ModuleNotFoundError.
torch = require("torch", "export", "Training")
nn = torch.nn

__all__ = ["TrainConfig", "fit", "to_tensor", "predict_logits", "accuracy"]


@dataclass
class TrainConfig:
    """Hyper-parameters of `fit`. `steps` overrides `epochs` when set (for quick runs)."""

    epochs: int = 8
    steps: int | None = None
    batch_size: int = 128
    lr: float = 4e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    seed: int = 0
    progress: bool = True
    #: "adamw" with a one-cycle schedule, or "sgd": plain mini-batch SGD at a constant rate.
    optimizer: str = "adamw"
    #: "cross_entropy", or "quadratic": mean squared error of sigmoid outputs against one-hot
    #: targets, the cost Nielsen's book starts with.
    loss: str = "cross_entropy"


def to_tensor(images: np.ndarray, meta: ModelMeta) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB at the model's input size -> normalised float tensor, layout of
    `meta`. The same arithmetic as `edgepilot.runtime.preprocess`, batched in torch."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
    if meta.color == "BGR":
        x = x.flip(-1)
    mean = torch.tensor(meta.mean, dtype=torch.float32)
    std = torch.tensor(meta.std, dtype=torch.float32)
    x = (x - mean) / std  # (N, H, W, C)
    if meta.layout == "NC":
        return x.reshape(len(x), -1)
    return x.permute(0, 3, 1, 2).contiguous() if meta.layout == "NCHW" else x


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, meta: ModelMeta,
                   batch_size: int = 512) -> np.ndarray:
    """Logits (N, classes) of `model` on uint8 images."""
    model.eval()
    out = [model(to_tensor(images[i:i + batch_size], meta)).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, meta: ModelMeta) -> float:
    return float((predict_logits(model, images, meta).argmax(1) == labels).mean())


def fit(model: nn.Module, train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray], meta: ModelMeta,
        config: TrainConfig | None = None) -> dict:
    """Train `model` on uint8 images with AdamW and a one-cycle schedule.

    Args:
        train, val: ``(images (N, H, W, 3) uint8 RGB, labels (N,) int)``.
        meta: gives the normalisation and layout (the same the exported file will use).

    Returns:
        history: per-epoch loss, accuracies, images/s, and the final ``val_accuracy``.
    """
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    images, labels = train
    n = len(images)
    steps_per_epoch = max(1, n // config.batch_size)
    total = config.steps or config.epochs * steps_per_epoch
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        schedule = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=total,
                                                       pct_start=0.15)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
    loss_fn = _loss(config)
    order = np.random.default_rng(config.seed)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    history: dict = {"epochs": []}

    with _progress(config.progress) as bar:
        task = bar.add_task("training", total=total, loss=math.nan, acc=math.nan, ips=0.0)
        step, started = 0, time.perf_counter()
        while step < total:
            model.train()
            perm = order.permutation(n)
            seen = correct = 0
            loss_sum = 0.0
            for i in range(steps_per_epoch):
                if step >= total:
                    break
                idx = perm[i * config.batch_size:(i + 1) * config.batch_size]
                x, y = to_tensor(images[idx], meta), y_all[idx]
                logits = model(x)
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                seen += len(idx)
                correct += int((logits.argmax(1) == y).sum())
                loss_sum += float(loss.detach()) * len(idx)
                ips = step * config.batch_size / (time.perf_counter() - started)
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen, ips=ips)
            val_acc = accuracy(model, *val, meta)
            history["epochs"].append({"loss": loss_sum / max(seen, 1),
                                      "train_accuracy": correct / max(seen, 1),
                                      "val_accuracy": val_acc, "step": step})
            bar.console.print(f"  step {step:5d}  loss {loss_sum / max(seen, 1):.4f}  "
                              f"train acc {correct / max(seen, 1):.4f}  val acc {val_acc:.4f}")
    history["val_accuracy"] = history["epochs"][-1]["val_accuracy"]
    seconds = time.perf_counter() - started
    history["seconds"] = round(seconds, 1)
    history["images_per_second"] = round(total * config.batch_size / seconds, 1)
    model.eval()
    return history


def _loss(config: TrainConfig):
    if config.loss == "quadratic":
        def quadratic(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = nn.functional.one_hot(y, logits.shape[1]).float()
            # Nielsen's C = 1/2n sum ||y - a||^2, summed over outputs, averaged over the batch.
            return 0.5 * ((torch.sigmoid(logits) - target) ** 2).sum(1).mean()
        return quadratic
    if config.loss == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    raise ValueError(f"loss must be 'cross_entropy' or 'quadratic', got {config.loss!r}")


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  "
                   "{task.fields[ips]:.0f} img/s"),
        TimeRemainingColumn(), disable=not enabled, transient=False,
    )
