"""Training the stoplight detector: scenes on the fly, centre-heatmap targets, focal loss.

    edgepilot train stoplight-detector                       # one process, all cores
    torchrun --nproc_per_node 2 -m edgepilot.cli train stoplight-detector   # DDP, same result

Under torchrun every rank renders its own scenes (seeded by step and rank) and takes
batch_size / world_size of each global batch, so the optimisation is the same whatever the
number of processes; DistributedDataParallel averages the gradients (gloo on CPUs, NCCL on
GPUs). Rank 0 evaluates and writes the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepilot.draw.scenes import (
    HOLDOUT,
    STATES,
    StreetConfig,
    generate_streets,
    holdout_config,
    render_street,
    train_config,
)
from edgepilot.errors import InputError, require
from edgepilot.meta import ModelMeta
from edgepilot.renamed import renamed
from edgepilot.runtime.detection import DETECTION_TASK, DecodeParams, decode
from edgepilot.runtime.detection_metrics import evaluate
from edgepilot.train.checkpoint import save_checkpoint
from edgepilot.train.models import (
    CentreDetector,
    count_parameters,
    create_model,
    widen_detector,
)

torch = require("torch", "export", "Training")

__all__ = ["DetectorConfig", "detector_meta", "encode_targets", "train_detector",
           "detect_batch", "evaluate_model", "validation_scenes"]

STRIDE = 4
#: Seeds of the evaluation sets; training draws from (seed, step, rank, i), never these.
_SPLIT_SEEDS = {"val": 3_000_017, "holdout": 4_000_037}
#: Small lights are reported apart: below this height (pixels) a light is a few cells tall.
SMALL = 24.0
#: The kinds of scenes training can draw (DetectorConfig.scenes): each a tuple of generator
#: settings that training takes turns with, scene by scene ("mix": half classic, half wide,
#: so widening the scenes need not cost what the classic ones taught).
SCENES = {"wide": (StreetConfig(wide=True),), "classic": (StreetConfig(),),
          "mix": (StreetConfig(), StreetConfig(wide=True))}


@dataclass
class DetectorConfig:
    """Hyper-parameters; `steps` x `batch_size` scenes are rendered for training."""

    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    width: int | None = None  # first-layer channels; None: init's width, else 16
    seed: int = 0
    workers: int = 1  # scene-rendering processes beside the training one
    progress: bool = True
    init: str | None = None  # a detector checkpoint to start from (fine-tuning)
    # The scenes trained on: "wide" (StreetConfig.wide), "classic" (the scenes of the shipped
    # detector's first four runs) or "mix" (the two in turn). Validation uses each kind.
    scenes: str = "wide"

    def __post_init__(self) -> None:
        if self.scenes not in SCENES:
            raise InputError(f"scenes must be one of {', '.join(SCENES)}, got {self.scenes!r}")


def detector_meta(config: StreetConfig = StreetConfig()) -> ModelMeta:
    return ModelMeta(name="stoplight_detector", labels=STATES,
                     input_size=(config.height, config.width), layout="NCHW", color="RGB",
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), output="probs",
                     task=DETECTION_TASK,
                     extra={"dataset": "streets", "decode": DecodeParams(stride=STRIDE).to_dict()})


# ------------------------------------------------------------------------------- targets
def encode_targets(boxes: np.ndarray, labels: np.ndarray, shape: tuple[int, int],
                   num_classes: int = len(STATES), stride: int = STRIDE):
    """Training targets of one scene for maps of `shape` = (h, w) cells.

    Returns the heatmap (classes, h, w) with a Gaussian peak of exactly 1 at each light's
    centre cell, the box targets (4, h, w) (dx, dy, log(w/stride), log(h/stride)) and a mask
    (h, w) of the centre cells."""
    h, w = shape
    heat = np.zeros((num_classes, h, w), np.float32)
    reg = np.zeros((4, h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None]
    for (x0, y0, x1, y1), c in zip(boxes, labels):
        bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        j, i = min(int(cx), w - 1), min(int(cy), h - 1)
        sx, sy = max(0.5, bw / stride / 6), max(0.5, bh / stride / 6)
        g = np.exp(-((xs - j) ** 2 / (2 * sx * sx) + (ys - i) ** 2 / (2 * sy * sy)))
        np.maximum(heat[c], g, out=heat[c])
        reg[:, i, j] = (cx - j, cy - i, math.log(bw / stride), math.log(bh / stride))
        mask[i, j] = 1.0
    return heat, reg, mask


def _loss(logits, box, heat, reg, mask):
    """Focal loss on the heatmap (CornerNet's, alpha 2, beta 4) + L1 on the centre cells' box,
    both per light."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    n = pos.sum().clamp(min=1.0)
    focal = -(pos * (1 - p) ** 2 * torch.log(p)
              + (1 - pos) * (1 - heat) ** 4 * p ** 2 * torch.log(1 - p)).sum() / n
    l1 = (torch.abs(box - reg) * mask.unsqueeze(1)).sum() / n
    return focal + l1, focal.detach(), l1.detach()


class _Scenes(torch.utils.data.IterableDataset):
    """Endless training scenes with their targets; scene k of rank r is seeded (seed, r, k)
    and drawn with configs[k % len(configs)]."""

    def __init__(self, configs: tuple[StreetConfig, ...], seed: int, rank: int, start: int = 0):
        self.configs, self.seed, self.rank, self.start = configs, seed, rank, start
        self.config = configs[0]  # size and stride are the same for every kind

    def __iter__(self):
        import cv2

        cv2.setNumThreads(1)
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        shape = (self.config.height // STRIDE, self.config.width // STRIDE)
        k = self.start + worker
        while True:
            rng = np.random.default_rng((self.seed, self.rank, k))
            image, boxes, labels = render_street(rng, self.configs[k % len(self.configs)])
            if rng.random() < 0.5:  # mirror: traffic lights are left-right symmetric
                image = image[:, ::-1]
                boxes = boxes[:, [2, 1, 0, 3]] * (-1, 1, -1, 1) + (self.config.width, 0,
                                                                   self.config.width, 0)
            heat, reg, mask = encode_targets(boxes, labels, shape)
            yield np.ascontiguousarray(image), heat, reg, mask
            k += workers


def _to_input(images, meta: ModelMeta):
    x = torch.as_tensor(np.ascontiguousarray(images)).float().div_(255)
    x = (x - torch.tensor(meta.mean)) / torch.tensor(meta.std)
    return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- inference
def detect_batch(model, images: np.ndarray, meta: ModelMeta, *, score_threshold: float = 0.05,
                 batch: int = 32):
    """Detections of a PyTorch detector on (N, H, W, 3) uint8 images at its input size."""
    params = DecodeParams.from_meta(meta)
    model.eval()
    found = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out = model(_to_input(images[start:start + batch], meta))
            for heat, box in zip(out["heatmap"].numpy(), out["box"].numpy()):
                found.append(decode(heat, box, params, meta.labels,
                                    image_size=meta.input_size,  # clipped, as the runtime does
                                    score_threshold=score_threshold))
    return found


def summarise(detections, truths, labels) -> dict:
    """mAP@0.5 per state and mean, mAP@0.5:0.95, and the same for lights under SMALL px."""
    every = evaluate(detections, truths, labels)
    small = evaluate(detections, truths, labels, height_range=(0, SMALL))
    return {"map50": round(every["map50"], 4), "map50_95": round(every["map50_95"], 4),
            "ap50": {k: round(v, 4) for k, v in every["ap50"].items()},
            "small_map50": round(small["map50"], 4), "lights": every["n_truth"]}


def evaluate_model(model, meta: ModelMeta, images, truths) -> dict:
    return summarise(detect_batch(model, images, meta), truths, meta.labels)


def validation_scenes(split: str, n: int, config: StreetConfig = StreetConfig()):
    """Held-out scenes: "val" (training's families, other seeds) or "holdout" (only the
    families training never saw)."""
    if split not in _SPLIT_SEEDS:
        raise InputError(f"split must be one of {', '.join(_SPLIT_SEEDS)}, got {split!r}")
    chosen = holdout_config(config) if split == "holdout" else train_config(config)
    return generate_streets(n, seed=_SPLIT_SEEDS[split], config=chosen)


# ------------------------------------------------------------------------------ training
def _distributed():
    """(rank, world size, device), joining the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device("cpu")
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), world, device


def train_detector(out: str | Path = "runs/stoplight_detector", *,
                   config: DetectorConfig | None = None, val_size: int = 500,
                   holdout_size: int = 500, save_ranks: bool = False, log=print,
                   **old_names) -> dict:
    """Train the detector, evaluate it on held-out scenes, save ``<out>/stoplight_detector.pt``.

    `val_size`, `holdout_size`: scenes to evaluate on (old names ``n_val``, ``n_holdout``
    still work, with a DeprecationWarning).

    `save_ranks` also writes each rank's final weights (``weights.rank<N>.pt``), to check that
    a distributed run ends with the same model everywhere."""
    sizes = renamed(old_names, {"n_val": "val_size", "n_holdout": "holdout_size"},
                    "train_detector", val_size=val_size, holdout_size=holdout_size)
    n_val, n_holdout = sizes["val_size"], sizes["holdout_size"]
    config = config or DetectorConfig()
    rank, world, device = _distributed()
    if config.batch_size % world:
        raise InputError(f"batch_size={config.batch_size} must divide by the "
                         f"{world} processes")
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    started = time.perf_counter()
    scenes = SCENES[config.scenes]
    meta = detector_meta(scenes[0])
    start = None
    if config.init:
        from edgepilot.train.checkpoint import load_checkpoint

        start, start_meta, _ = load_checkpoint(config.init)
        if not start_meta.is_detector:
            raise InputError(f"init={config.init} is not a detector checkpoint")
        if not isinstance(start, CentreDetector):
            raise InputError(f"init={config.init} is a {type(start).__name__}: training "
                             "fine-tunes stoplight_detector checkpoints")
    width = config.width or (start.width if start is not None else 16)
    if start is not None:
        if start.width > width:
            raise InputError(f"init={config.init} is {start.width} wide: width= must be that "
                             f"or more (more grows it), got {width}")
        if start.width < width:  # grown so that it starts computing what init did
            log(f"widened init from {start.width} to {width} (Net2Wider: same outputs)")
            start = widen_detector(start, width, seed=config.seed)
    arch_config = {"num_classes": len(STATES), "width": width}
    model = create_model("stoplight_detector", **arch_config)
    if start is not None:
        model.load_state_dict(start.state_dict())
    model = model.to(device)
    model = model.to(memory_format=torch.channels_last)
    lead = rank == 0
    say = log if lead else (lambda message: None)
    say(f"stoplight_detector: {count_parameters(model):,} parameters; {config.steps} steps of "
        f"{config.batch_size} {config.scenes} scenes on {world} process(es), held out of "
        f"training: {HOLDOUT}")
    net = _Heads(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    data = torch.utils.data.DataLoader(
        _Scenes(tuple(map(train_config, scenes)), config.seed, rank),
        batch_size=config.batch_size // world,
        num_workers=config.workers, persistent_workers=False,
        prefetch_factor=4 if config.workers else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps,
                                                   pct_start=0.1)
    net.train()
    losses = []
    tick = time.perf_counter()
    for step, (images, heat, reg, mask) in enumerate(data):
        if step == config.steps:
            break
        x = _to_input(images.numpy(), meta).to(device)
        logits, box = net(x)
        loss, focal, l1 = _loss(logits, box, heat.to(device), reg.to(device), mask.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append((float(focal), float(l1)))
        if lead and config.progress and (step + 1) % 50 == 0:
            f, b = np.mean(losses[-50:], axis=0)
            rate = 50 * config.batch_size / (time.perf_counter() - tick)
            tick = time.perf_counter()
            log(f"step {step + 1}/{config.steps}: heatmap loss {f:.3f}, box loss {b:.3f}, "
                f"{rate:.0f} scenes/s")
    train_seconds = time.perf_counter() - started
    if world > 1:
        _average_buffers(model, world)
    model = model.cpu().to(memory_format=torch.contiguous_format)
    out = Path(out)
    if save_ranks:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / f"weights.rank{rank}.pt")
    summary = {}
    if lead:
        summary = _finish(model, meta, arch_config, config, out, n_val, n_holdout,
                          train_seconds, started, world, say, scenes)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return summary


def _average_buffers(model, world: int) -> None:
    """Batch-norm running statistics, averaged over the ranks. DDP syncs gradients, and
    broadcasts rank 0's buffers before each forward, but each rank's last forward updates
    its own statistics from its own scenes: without this the ranks end different."""
    import torch.distributed as dist

    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world


class _Heads(torch.nn.Module):
    """The detector's training outputs as forward(), the call DistributedDataParallel wraps."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.heads(x)


def _finish(model, meta, arch_config, config, out, n_val, n_holdout, train_seconds,
            started, world, say, scenes) -> dict:
    say(f"trained in {train_seconds:.0f} s; evaluating on {n_val} + {n_holdout} held-out "
        f"{config.scenes} scenes")
    summary = {"arch": "stoplight_detector", "parameters": count_parameters(model),
               "config": {**asdict(config), "width": arch_config["width"]}, "processes": world,
               "threads": torch.get_num_threads()}
    for kind in scenes:  # "val"/"holdout" on the first kind; "wide_val"... on a mix's wide
        prefix = "wide_" if kind.wide and len(scenes) > 1 else ""
        for split, n in (("val", n_val), ("holdout", n_holdout)):
            if n:
                summary[prefix + split] = evaluate_model(
                    model, meta, *validation_scenes(split, n, kind))
    summary["holdout_families"] = HOLDOUT
    summary["train_seconds"] = round(train_seconds, 1)
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    path = save_checkpoint(out / "stoplight_detector.pt", model, arch="stoplight_detector",
                           config=arch_config, meta=meta, metrics=summary)
    (out / "stoplight_detector.metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["checkpoint"] = str(path)
    return summary
