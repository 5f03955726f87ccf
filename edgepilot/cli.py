"""The `edgepilot` command line. Each sub-command is a small function over the Python API.

Errors print one line and exit 1; ``--debug`` shows the traceback instead. A run stopped by
Ctrl-C exits 130, by SIGTERM 143 (128 + the signal number, as a shell reports it).

``--out`` means the same in every command: an existing folder, or a path ending in ``/``, is a
folder (export names the files after the checkpoint in it); otherwise export takes it as a
path stem (``runs/net`` -> ``runs/net.onnx``) and train, bench and demo as a folder to create.
Every output path is checked before any work starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
from pathlib import Path

from edgepilot.errors import EdgepilotError, InputError, ModelFileError
from edgepilot.formats import FORMATS
from edgepilot.terminal import printable

__all__ = ["main"]


def _number(kind: type, minimum: float, inclusive: bool):
    """An argparse type: a finite `kind` (int or float) of at least / more than `minimum`."""
    word = "a whole number" if kind is int else "a number"
    bound = f"{minimum:g} or more" if inclusive else f"more than {minimum:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {word}, got '{text}'") from None
        ok = value >= minimum if inclusive else value > minimum
        if not ok or value == float("inf"):  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


_positive_int = _number(int, 1, inclusive=True)
_non_negative_int = _number(int, 0, inclusive=True)
_positive_float = _number(float, 0, inclusive=False)


def _threads(text: str) -> int | str:
    """An argparse type for --threads: a whole number of 1 or more, or 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got '{text}'") \
            from None
    return _positive_int(text)


def _size(text: str) -> tuple[int, int]:
    """``224`` or ``224x160`` (height x width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(1 <= v <= 4096 for v in values):
        raise argparse.ArgumentTypeError(f"expected H or HxW in pixels (1..4096), got '{text}'")
    return (values[0], values[-1])


def _floats(text: str) -> tuple[float, ...]:
    """``0.485,0.456,0.406``: one value per channel."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or len(values) > 4 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected 1 to 4 comma-separated numbers, got "
                                         f"'{text}'")
    return values


def _is_folder_arg(text: str) -> bool:
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def check_output_folder(folder: str | Path, option: str) -> Path:
    """A folder that will be created if needed: its nearest existing ancestor must be a
    writable folder."""
    path = Path(folder)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} '{folder}': '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise InputError(f"{option} '{folder}': no permission to write in '{existing}'")
    return path


def check_output_file(target: str | Path, option: str) -> Path:
    """A file to be written: not a folder, in an existing writable folder."""
    path = Path(target)
    if path.is_dir() or str(target).endswith(("/", os.sep)):
        raise InputError(f"{option} '{target}' is a folder: give a file name")
    if not path.parent.is_dir():
        raise InputError(f"Folder does not exist for {option} '{target}': create it first")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{option} '{target}': no permission to write there")
    return path


class _Renamed(argparse.Action):
    """An old spelling of a flag, kept for one release: sets the new flag's value and says
    once, on stderr, what to type instead."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now {self.new}; the old spelling will be removed in "
              "the next release", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _renamed(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept `old` as a deprecated spelling of the flag `new` (same value, hidden in help)."""
    action = next(a for a in p._actions if new in a.option_strings)
    p.add_argument(old, action=_Renamed, new=new, dest=action.dest, type=action.type,
                   nargs=action.nargs, metavar=action.metavar, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def add_train(sub) -> None:
    """The `train` command's arguments."""
    p = sub.add_parser("train",
                       help="train a model: stoplight, stoplight-detector, neuron or digits")
    p.add_argument("task", choices=["stoplight", "stoplight-detector", "neuron", "digits"],
                   help="what to train")
    p.add_argument("--out", default=None, help="output folder (default: runs/TASK)")
    p.add_argument("--arch", default=None,
                   help="architecture (stoplight: stoplight_cnn, mobilenet; digits: nielsen, "
                        "digit_cnn)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                   help="digits: plain SGD as in Nielsen's book, or AdamW (default: "
                        "%(default)s)")
    p.add_argument("--input-size", type=_size, default=None, metavar="PIXELS",
                   help="stoplight: input size in pixels, square (default: 96)")
    p.add_argument("--epochs", type=_positive_int, default=6,
                   help="passes over the training images (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=None, help="stop after N steps")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="default 128 (classifiers), 16 (detector)")
    p.add_argument("--train-size", type=_positive_int, default=120_000, metavar="N",
                   help="training images generated (stoplight; default: %(default)s)")
    p.add_argument("--val-size", type=_positive_int, default=2_000, metavar="N",
                   help="validation images, and as many held-out ones (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fine-tune; stoplight: same "
                        "--arch and --size)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="peak learning rate (default: stoplight 4e-3, detector 3e-3)")
    p.add_argument("--light-size", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="stoplight: range of the light's long side in training images, as a "
                        "share of the frame (default 0.2 0.9; validation keeps the default)")
    p.add_argument("--glare", type=float, default=None, metavar="SHARE",
                   help="stoplight: share 0..1 of the non-signal lights in training images "
                        "drawn as bright as a lit lamp, with no housing (hard negatives; "
                        "default 0; validation keeps 0)")
    p.add_argument("--photo-share", type=float, default=None, metavar="SHARE",
                   help="stoplight: share 0..1 of training images drawn on a real photograph "
                        "(default: as often as each other background; validation keeps that)")
    p.add_argument("--interpolate", type=float, default=None, metavar="ALPHA",
                   help="stoplight, with --init: save init + ALPHA x (fine-tuned - init), "
                        "0..1 (weight-space interpolation, WiSE-FT; default: the fine-tune)")
    p.add_argument("--deepen", type=int, default=0, metavar="N",
                   help="stoplight_cnn: N more 3x3 conv blocks at the last resolution; with "
                        "--init they start as identities, so fine-tuning starts exactly where "
                        "the checkpoint was (Net2Net)")
    p.add_argument("--scenes", choices=["wide", "classic", "mix"], default=None,
                   help="stoplight-detector: the street scenes trained and validated on: wide "
                        "(small, cut-off, sectioned and arrow lights, low-resolution cameras), "
                        "classic (the shipped detector's first four runs) or mix (the two in "
                        "turn, validated on each) (default: wide)")
    p.add_argument("--width", type=_positive_int, default=None,
                   help="stoplight-detector: channels of the first layer (default: --init's, "
                        "else 16); wider than --init's grows it so that it starts computing "
                        "what init did (Net2Wider)")
    p.add_argument("--save-ranks", action="store_true",
                   help="detector under torchrun: also save each process's final weights")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _renamed(p, "--size", "--input-size")
    _renamed(p, "--n-train", "--train-size")
    _renamed(p, "--n-val", "--val-size")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    if args.out:
        check_output_folder(args.out, "--out")
    for flag, value in (("--init", args.init), ("--lr", args.lr)):
        if value is not None and args.task in ("neuron", "digits"):
            raise InputError(f"{flag} applies to 'train stoplight' and 'train stoplight-detector', "
                             f"not '{args.task}': leave it out")
    for flag, value in (("--light-size", args.light_size), ("--glare", args.glare),
                        ("--photo-share", args.photo_share), ("--interpolate", args.interpolate),
                        ("--deepen", args.deepen or None), ("--input-size", args.input_size)):
        if value is not None and args.task != "stoplight":
            raise InputError(f"{flag} applies to 'train stoplight', not '{args.task}': "
                             "leave it out")
    for flag, value in (("--scenes", args.scenes), ("--width", args.width)):
        if value is not None and args.task != "stoplight-detector":
            raise InputError(f"{flag} applies to 'train stoplight-detector', not '{args.task}': "
                             "leave it out")
    if args.task == "neuron":
        from edgepilot.train.classic import train_neuron

        _print_summary(train_neuron(args.out or "runs/neuron", seed=args.seed), args.json)
        return 0
    if args.task == "digits":
        from edgepilot.train.classic import train_digits

        summary = train_digits(args.out or "runs/digits", arch=args.arch or "nielsen",
                               optimizer=args.optimizer, seed=args.seed,
                               progress=not args.quiet, log=_log)
        _print_summary(summary, args.json)
        return 0
    if args.task == "stoplight-detector":
        from edgepilot.train.detector import DetectorConfig, train_detector

        config = DetectorConfig(steps=args.steps or DetectorConfig.steps, seed=args.seed,
                                batch_size=args.batch_size or DetectorConfig.batch_size,
                                lr=args.lr or DetectorConfig.lr, init=args.init,
                                scenes=args.scenes or DetectorConfig.scenes,
                                width=args.width,
                                progress=not args.quiet)
        summary = train_detector(args.out or "runs/stoplight_detector", config=config,
                                 val_size=args.val_size, holdout_size=args.val_size,
                                 save_ranks=args.save_ranks, log=_log)
        if summary:  # under torchrun only rank 0 evaluates and reports
            _print_summary(summary, args.json)
        return 0
    from edgepilot.train.recipes import train_stoplight
    from edgepilot.train.trainer import TrainConfig

    config = TrainConfig(epochs=args.epochs, steps=args.steps, seed=args.seed,
                         batch_size=args.batch_size or 128, lr=args.lr or TrainConfig.lr,
                         progress=not args.quiet)
    summary = train_stoplight(args.out or "runs/stoplight", arch=args.arch or "stoplight_cnn",
                              input_size=_square(args.input_size or (96, 96)),
                              train_size=args.train_size, val_size=args.val_size,
                              holdout_size=args.val_size, config=config,
                              init=args.init, light_size=args.light_size, glare=args.glare,
                              photo_share=args.photo_share, interpolate=args.interpolate,
                              deepen=args.deepen, log=_log)
    _print_summary(summary, args.json)
    return 0


def _square(size: tuple[int, int]) -> int:
    if size[0] != size[1]:
        raise InputError(f"train makes square images: give one number to --input-size, got "
                         f"{size[0]}x{size[1]}")
    return size[0]


def _print_summary(summary: dict, as_json: bool) -> None:
    """A training summary: JSON with --json, else one line per figure and the file written."""
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key != "checkpoint" and value is not None:
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            print(f"{key}: {shown}")
    if summary.get("checkpoint"):
        print(f"wrote {summary['checkpoint']}")


def add_export(sub) -> None:
    """The `export` command's arguments."""
    p = sub.add_parser("export", help="export any PyTorch model to deployable files")
    p.add_argument("checkpoint", metavar="model",
                   help="an edgepilot checkpoint, a TorchScript file, a torch.export program "
                        "(.pt2), a state_dict (with --arch), or an architecture name "
                        "(timm:NAME, torchvision:NAME, package.module:factory)")
    p.add_argument("--arch", default=None,
                   help="the architecture of a state_dict: package.module:factory (called "
                        "with no arguments), torchvision:NAME or timm:NAME")
    p.add_argument("--weights", default=None,
                   help="a state_dict to load into an architecture given as the model")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a file holding a pickled module (loading it runs its code)")
    p.add_argument("--input-size", type=_size, default=None,
                   help="input image size, H or HxW (default: what the model records, else "
                        "224)")
    p.add_argument("--labels", default=None, help="a text file of labels, one per line")
    p.add_argument("--mean", type=_floats, default=None,
                   help="per-channel mean of pixels scaled to 0..1 (default: ImageNet's)")
    p.add_argument("--std", type=_floats, default=None,
                   help="per-channel std of pixels scaled to 0..1 (default: ImageNet's)")
    p.add_argument("--data", default=None, metavar="FOLDER",
                   help="labelled images, one sub-folder per label: the accuracy columns and "
                        "the int8 guard (default: images generated for edgepilot's own models, "
                        "else random inputs)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="a dynamic batch dimension where the format and model allow it "
                        "(default: batch 1)")
    p.add_argument("--guard-budget", type=float, default=900.0, metavar="SECONDS",
                   help="seconds the int8 accuracy guard may spend per file (0: no limit; "
                        "default: %(default)g)")
    p.add_argument("--qat", action="store_true",
                   help="fine-tune the int8 weights without labels before writing int8 files: "
                        "simulated int8, distilled from the model's own outputs on the "
                        "calibration images (minutes on a CPU)")
    p.add_argument("--qat-budget", type=float, default=600.0, metavar="SECONDS",
                   help="seconds the --qat fine-tuning may spend (0: no limit; "
                        "default: %(default)g)")
    p.add_argument("--format", nargs="+", default=None, choices=[f.name for f in FORMATS],
                   help="default: onnx, or the --device profile's format")
    p.add_argument("--device", default=None,
                   help="a device profile (see 'edgepilot devices'): picks format and precision; "
                        "--format/--precision/--io-dtype given as well win")
    p.add_argument("--precision", nargs="+", default=None,
                   help="one or more of fp32, fp16, dynamic (tflite), int8 (default: fp32)")
    p.add_argument("--calib", default=None,
                   help="int8 calibration images: a folder or .npy (default: validation images)")
    p.add_argument("--calib-size", type=_positive_int, default=300, metavar="N",
                   help="calibration images used, at most (default: %(default)s)")
    p.add_argument("--calib-method", default="minmax",
                   help="minmax, entropy, percentile, distribution (onnx); minmax, moving_average "
                        "(tflite) (default: %(default)s)")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="int8 accuracy budget in points; worst layers stay float until met "
                        "(-1: off; default: %(default)g)")
    p.add_argument("--compute-units", default=None, type=str.upper,
                   choices=["ALL", "CPU_AND_NE", "CPU_ONLY", "CPU_AND_GPU"],
                   help="coreml: the compute units the model is loaded with (default ALL)")
    p.add_argument("--io-dtype", default=None, choices=["int8", "uint8", "float32"],
                   help="boundary type of int8 files (tflite: int8 or uint8 for MediaPipe and "
                        "mobile task libraries)")
    p.add_argument("--out", default=None,
                   help="output path stem, or a folder (existing, or ending in /) to write "
                        "files named after the checkpoint in (default: beside the checkpoint)")
    p.add_argument("--val-size", type=_non_negative_int, default=2_000, metavar="N",
                   help="validation images for the parity report (0: random inputs; default: "
                        "%(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print the export reports as JSON (default: one file name per line)")
    _renamed(p, "--val-data", "--data")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from edgepilot.export import export
    from edgepilot.export.sources import load_source, source_meta
    from edgepilot.train.datasets import validation_data

    given = Path(args.checkpoint)
    stem = given.stem if given.exists() or ":" not in args.checkpoint else \
        re.sub(r"\W+", "_", args.checkpoint.partition(":")[2]).strip("_") or "model"
    if args.out is None:
        out = given.with_suffix("") if given.exists() else Path("runs") / stem
    elif _is_folder_arg(args.out):  # a folder: the files are named after the model
        out = check_output_folder(args.out, "--out") / stem
    else:  # a path stem
        out = Path(args.out)
        check_output_folder(out.parent, "--out")
    from edgepilot.devices.plan import export_plan

    plan = export_plan(args.device, args.format, args.precision, args.io_dtype)
    for warning in plan.warnings:
        _log(f"warning: {warning}")
    source = load_source(args.checkpoint, arch=args.arch, weights=args.weights,
                         trust_pickle=args.trust_pickle)
    labels = _read_labels(args.labels) if args.labels else None
    meta = source_meta(source, name=stem, input_size=args.input_size, labels=labels,
                       mean=args.mean, std=args.std)
    _log(f"exporting {source.kind} ({meta.name}: input {'x'.join(map(str, meta.input_shape))},"
         f" {len(meta.labels)} labels)")
    val = _folder_data(args.data, meta, args.val_size) if args.data else \
        validation_data(meta, args.val_size)
    import torch

    reports = export(source.module, torch.zeros(meta.input_shape), formats=plan.formats,
                     out=out, meta=meta, precision=plan.precisions, data=val,
                     calib=args.calib, calib_size=args.calib_size,
                     calib_method=args.calib_method,
                     max_drop=None if args.max_drop < 0 else args.max_drop,
                     io_dtype=plan.io_dtype, dynamic_batch=args.dynamic_batch,
                     guard_budget=None if args.guard_budget <= 0 else args.guard_budget,
                     qat=args.qat, qat_budget=None if args.qat_budget <= 0 else args.qat_budget,
                     compute_units=args.compute_units)
    if args.json:
        print(json.dumps([report.to_dict() for report in reports], indent=2, default=str))
    else:
        for report in reports:
            print(report.path)
    return 0


def _read_labels(path: str) -> list[str]:
    """Labels from a text file, one per line (blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EdgepilotError(f"--labels: cannot read '{path}' as UTF-8 text: {err}") from err
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise EdgepilotError(f"--labels: '{path}' has no labels (one per line)")
    return labels


def _folder_data(folder: str, meta, limit: int):
    """Validation images from class sub-folders named after the labels: at most `limit`,
    spread evenly over the folders (held in memory at the model's input size)."""
    import numpy as np

    from edgepilot.datafolders import labelled_folder
    from edgepilot.runtime.image import read_image, resize

    files, names = labelled_folder(folder)
    if 0 < limit < len(files):
        keep = np.unique(np.linspace(0, len(files) - 1, limit).astype(int))
        files, names = [files[i] for i in keep], [names[i] for i in keep]
    unknown = sorted(set(names) - set(meta.labels))
    if unknown:
        raise EdgepilotError(f"--data: sub-folder(s) {', '.join(unknown[:5])} are not "
                             f"labels of the model ({', '.join(meta.labels[:5])} ...)")
    index = {label: i for i, label in enumerate(meta.labels)}
    images = np.stack([resize(read_image(f), meta.input_size) for f in files])
    return images, np.array([index[n] for n in names])


def add_predict(sub) -> None:
    """The `predict` command's arguments."""
    p = sub.add_parser("predict", help="classify images (or find lights) with a model file")
    p.add_argument("model", help=f"a model file ({_SUFFIXES}), or a shipped model: stoplight, "
                   "stoplight-detector")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--inputs", default=None,
                   help="a feature vector instead of images, e.g. 1,0,0 (green,yellow,red)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="detectors: write each image with its boxes (one image: a file such as "
                        "out.jpg; several: a folder)")
    _add_threads(p)
    _add_accelerator(p)
    _renamed(p, "--draw", "--out")
    p.set_defaults(func=cmd_predict)


def _add_threads(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    p.add_argument("--threads", type=_threads, nargs="+" if several else None,
                   default=["auto"] if several else "auto", metavar="N",
                   help=("thread counts to compare, e.g. --threads 1 2 auto; " if several else
                         "model threads: a number, or ") +
                   "auto (the default): the fewest within 10%% of the fastest, measured once "
                   "per file and host")


def _add_accelerator(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accelerator", default=None, metavar="NAME",
                   help="the accelerator that runs the model: a Coral Edge TPU as usb, usb:N, "
                        "pci:N (default: the first one found; other formats run on the CPU)")


def cmd_predict(args: argparse.Namespace) -> int:
    import edgepilot
    from edgepilot.assets import resolve_model

    model = edgepilot.load(resolve_model(args.model), threads=args.threads,
                           accelerator=args.accelerator)
    if args.inputs is not None:
        return _predict_inputs(model, args)
    if not args.images:
        raise InputError("Give image files to classify (or --inputs for a model that takes "
                         "a feature vector)")
    draw = None
    if args.out:
        if model.meta is None or not model.meta.is_detector:
            raise InputError("--out writes images with their boxes, for detectors; this model "
                             "classifies whole images (leave --out out)")
        draw = _draw_target(args.out, len(args.images))
    failures = 0
    results = []
    for image in args.images:
        try:
            prediction = model.predict(image)
        except InputError as err:  # one bad image does not stop the others
            failures += 1
            print(f"error: {_error_line(err)}", file=sys.stderr)
            continue
        if isinstance(prediction, list):  # a detector: the lights it found
            results.append({"image": image, "detections": [d.to_dict() for d in prediction]})
            if draw is not None:
                _draw(image, prediction, draw)
            if not args.json:
                _print_detections(image, prediction)
            continue
        results.append({"image": image, **prediction.to_dict()})
        if not args.json:
            print(f"{printable(image)}\t{printable(prediction.label)}\t"
                  f"{prediction.score:.3f}")
    if args.json:
        print(json.dumps({"model": str(model.path), "backend": model.backend,
                          "predictions": results}, indent=2))
    return 1 if failures else 0


def _print_detections(image: str, detections) -> None:
    if not detections:
        print(f"{printable(image)}\tnothing found")
    for d in detections:
        x0, y0, x1, y1 = (round(v) for v in d.box)
        print(f"{printable(image)}\t{printable(d.label)}\t{d.score:.3f}\t{x0},{y0},{x1},{y1}")


def _draw_target(target: str, count: int):
    """Where --out writes: a file for one image, a folder (created) for several. Refuses to
    overwrite an input."""
    path = Path(target)
    if count > 1 or path.is_dir() or target.endswith(("/", os.sep)):
        path.mkdir(parents=True, exist_ok=True)
        return path
    check_output_folder(path.parent, "--out")
    if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".webp"):
        raise InputError(f"--out {target}: give an image file name (.jpg, .png) or a folder")
    return path


def _draw(image: str, detections, target: Path) -> None:
    import cv2

    from edgepilot.live.overlay import draw_detections
    from edgepilot.runtime.image import read_image

    frame = draw_detections(read_image(image).copy(), detections)
    out = target / (Path(image).stem + ".jpg") if target.is_dir() else target
    if out.resolve() == Path(image).resolve():
        raise InputError(f"--out would overwrite the input {image}: choose another name")
    if not cv2.imwrite(str(out), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
        raise InputError(f"--out: could not write {out}")
    _log(f"wrote {out} ({len(detections)} light(s) drawn)")


def _predict_inputs(model, args: argparse.Namespace) -> int:
    try:
        values = [float(v) for v in args.inputs.split(",")]
    except ValueError:
        raise InputError(f"--inputs takes numbers separated by commas, e.g. 1,0,0; got "
                         f"'{args.inputs}'") from None
    prediction = model.predict_inputs(values)
    if args.json:
        print(json.dumps({"model": str(model.path), "backend": model.backend,
                          "inputs": values, **prediction.to_dict()}, indent=2))
    else:
        print(f"{printable(args.inputs)}\t{printable(prediction.label)}\t"
              f"{prediction.score:.3f}")
    return 0


def add_info(sub) -> None:
    """The `info` command's arguments."""
    p = sub.add_parser("info", help="inputs, outputs, metadata, layers, parameters, MACs")
    p.add_argument("model", help=f"a model file ({_SUFFIXES}), a checkpoint (.pt), or a "
                   "shipped model: stoplight, stoplight-detector")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from edgepilot.assets import resolve_model
    from edgepilot.info import inspect_model, print_info

    info = inspect_model(resolve_model(args.model))
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, default=str))
    else:
        print_info(info)
    return 0


def add_diff(sub) -> None:
    """The `diff` command's arguments."""
    p = sub.add_parser("diff", help="where exported files depart from their model, layer by "
                                    "layer")
    p.add_argument("reference", help="the PyTorch model (an edgepilot checkpoint, TorchScript, "
                   ".pt2, a state_dict with --arch) or one exported .onnx/.tflite file")
    p.add_argument("files", nargs="+", metavar="file",
                   help=f"exported files to compare with it ({_SUFFIXES})")
    p.add_argument("--data", default=None, metavar="FOLDER",
                   help="images to compare on: a folder (labels not needed) or an .npy file "
                        "(default: random images, which say little about real ones)")
    p.add_argument("--limit", type=_positive_int, default=16, metavar="N",
                   help="images used, at most (default: %(default)s)")
    p.add_argument("--top", type=_positive_int, default=10, metavar="K",
                   help="layers shown per file, the one that loses the most first (default: "
                        "%(default)s)")
    p.add_argument("--depart-db", type=float, default=None, metavar="DB",
                   help="SQNR a layer must lose to be where a file departs (default: 10)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw every file's SQNR per layer into this image")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--arch", default=None, help="the architecture of a state_dict")
    p.add_argument("--weights", default=None,
                   help="a state_dict to load into an architecture given as the reference")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a file holding a pickled module (loading it runs its code)")
    p.add_argument("--input-size", type=_size, default=None,
                   help="the PyTorch model's input size, H or HxW (default: what it records)")
    p.add_argument("--mean", type=_floats, default=None,
                   help="per-channel mean of pixels scaled to 0..1 (default: what the model "
                        "records, else ImageNet's)")
    p.add_argument("--std", type=_floats, default=None,
                   help="per-channel std of pixels scaled to 0..1 (default: what the model "
                        "records, else ImageNet's)")
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from edgepilot.diff import DEPART_DB, diff, plot_diff, print_diff
    from edgepilot.errors import UnsupportedFormatError
    from edgepilot.formats import format_for_path

    if args.plot:  # fail before measuring anything
        check_output_file(args.plot, "--plot")
    try:
        format_for_path(args.reference)
        reference, meta = args.reference, None
    except UnsupportedFormatError:  # not an exported file: the PyTorch model
        from edgepilot.export.sources import load_source, source_meta

        source = load_source(args.reference, arch=args.arch, weights=args.weights,
                             trust_pickle=args.trust_pickle)
        meta = source_meta(source, name=Path(args.reference).stem or "model",
                           input_size=args.input_size, mean=args.mean, std=args.std)
        reference = source.module
    report = diff(reference, args.files, images=args.data, meta=meta, count=args.limit,
                  depart_db=DEPART_DB if args.depart_db is None else args.depart_db)
    if args.plot:
        _log(f"wrote {plot_diff(report, args.plot)}")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_diff(report, top=args.top)
    return 0


def add_bench(sub) -> None:
    """The `bench` command's arguments."""
    p = sub.add_parser("bench", help="latency, throughput, memory and accuracy of model files")
    p.add_argument("models", nargs="*", help=f"model files ({_SUFFIXES}), .pt checkpoints, or "
                   "shipped models: stoplight, stoplight-detector")
    _add_threads(p, several=True)
    _add_accelerator(p)
    p.add_argument("--runs", type=_positive_int, default=200, metavar="N",
                   help="timed runs per model (default: %(default)s)")
    p.add_argument("--duration", type=_positive_float, default=None, metavar="SECONDS",
                   help="seconds of timed runs per model instead of --runs")
    p.add_argument("--warmup", type=_non_negative_int, default=10, metavar="N",
                   help="untimed runs first (default: %(default)s)")
    p.add_argument("--rounds", type=_positive_int, default=10, metavar="N",
                   help="the timed runs are split into this many rounds, the models taking "
                        "turns, so a busy moment hits them all alike (default: %(default)s)")
    p.add_argument("--data", default=None, metavar="FOLDER",
                   help="labelled images: a folder of label sub-folders (classifiers: "
                        "accuracy), or images with YOLO .txt boxes (detectors: mAP)")
    p.add_argument("--pipeline", action="store_true",
                   help="time decode / preprocess / inference / postprocess")
    p.add_argument("--export", default=None, metavar="CHECKPOINT",
                   help="export every format and precision first, then benchmark them all")
    p.add_argument("--out", default="runs/bench", metavar="FOLDER",
                   help="where --export writes the files (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also save the JSON here")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="append one row per result to this CSV")
    p.add_argument("--plot", default=None, metavar="FILE", help="save a PNG plot here")
    p.add_argument("--on", action="append", default=[], metavar="USER@HOST[:DIR]",
                   help="also benchmark on this ssh host (repeatable): ships the models, "
                        "installs their runtime in DIR/.venv there, runs, collects the results")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from edgepilot.assets import resolve_model
    from edgepilot.bench import bench_data, benchmark, export_matrix, verdict
    from edgepilot.bench_report import append_csv, dump_json, plot, print_table, to_json

    for target, option in ((args.plot, "--plot"), (args.csv, "--csv"),
                           (args.json_out, "--json-out")):  # fail before measuring anything
        if target:
            check_output_file(target, option)
    if args.export:
        check_output_folder(args.out, "--out")
    models = [resolve_model(m) for m in args.models]
    for model in models:  # a typo ends the run before anything is measured
        if not (model.is_file() or model.is_dir() and model.suffix == ".mlpackage"):
            from edgepilot.runtime.model import not_a_model

            raise ModelFileError(not_a_model(model))
    failed, data = [], None
    if args.export:
        files, failed, data = export_matrix(args.export, args.out)
        models = [Path(args.export), *files, *models]
    if args.data:
        data = bench_data(args.data)
    if not models and not failed:
        raise InputError("Give model files to benchmark, or --export CHECKPOINT")
    results = benchmark(models, threads=args.threads, runs=args.runs, duration=args.duration,
                        warmup=args.warmup, rounds=args.rounds, data=data,
                        pipeline=args.pipeline, accelerator=args.accelerator)
    results = failed + results
    if args.on:
        results += _bench_remote(args, models)
    if args.json:
        print(json.dumps(to_json(results), indent=2))
    else:
        print_table(results)
        for line in verdict(results):
            print(printable(line))
    if args.json_out:
        dump_json(results, args.json_out)
        _log(f"wrote {args.json_out}")
    if args.csv:
        append_csv(results, args.csv)
        _log(f"wrote {args.csv} ({len(results)} row(s) appended)")
    if args.plot:
        plot(results, args.plot)
        _log(f"wrote {args.plot}")
    if all(r.error for r in results):
        print("error: no model could be benchmarked (the table says why)", file=sys.stderr)
        return 1
    # A file you named, or a board, that failed is an error; a row of the --export matrix
    # that cannot run here (Core ML off macOS, int8 without calibration images) is not.
    named = {Path(m).name for m in args.models}
    errors = [r for r in results if r.error and (r.host or r.model in named)]
    if errors:
        print(f"error: {len(errors)} of {len(results)} runs could not be benchmarked (the table "
              f"says why): {', '.join(dict.fromkeys(r.host or r.model for r in errors))}",
              file=sys.stderr)
        return 1
    return 0


def _bench_remote(args: argparse.Namespace, models: list) -> list:
    import tempfile

    from edgepilot.remote import bench_on, parse_remote

    remotes = [parse_remote(spec) for spec in args.on]
    files = [m for m in models if m.suffix.lower() not in (".pt", ".pth")]
    with tempfile.TemporaryDirectory(prefix="edgepilot-bench-") as work:
        first = args.threads[0]  # "auto" is the bundle's own default on each host
        rows = bench_on(remotes, files, runs=args.runs, threads=None if first == "auto" else first,
                        workdir=Path(work), log=_log)
    for row in dict((r.host, r) for r in rows).values():
        _log(f"{row.host}: {row.host_description or 'failed: ' + str(row.error)}")
    return rows


def add_devices(sub) -> None:
    """The `devices` command's arguments."""
    p = sub.add_parser("devices", help="device profiles, and what this host is and can run")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_devices)


def cmd_devices(args: argparse.Namespace) -> int:
    from edgepilot.devices import detect_host
    from edgepilot.devices.show import devices_json, print_devices

    host = detect_host()
    if args.json:
        print(json.dumps(devices_json(host), indent=2))
    else:
        print_devices(host)
    return 0


def add_deploy(sub) -> None:
    """The `deploy` command's arguments."""
    p = sub.add_parser("deploy", help="a self-contained bundle of a model for one device")
    p.add_argument("model", help="a model file, or a .pt checkpoint to export for the device")
    p.add_argument("--device", required=True, help="a device profile (see 'edgepilot devices')")
    p.add_argument("--out", required=True, help="the bundle folder (new, empty or a bundle)")
    p.add_argument("--to", default=None, metavar="USER@HOST:DIR",
                   help="copy the bundle there over ssh and install it in DIR/.venv")
    p.add_argument("--threads", type=_threads, default="auto", metavar="N",
                   help="the bundle's model threads: a number, or auto (the default): "
                        "measured on the board at first load and cached there")
    p.add_argument("--json", action="store_true",
                   help="print what was bundled as JSON (default: the bundle folder)")
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    from edgepilot.deploy import deploy

    bundle = deploy(args.model, args.device, check_output_folder(args.out, "--out"),
                    threads=args.threads, log=_log)
    where = None
    if args.to:
        from edgepilot.remote import deploy_to

        deploy_to(bundle, args.to, log=_log)
        where = args.to
    info = json.loads((bundle / "bundle.json").read_text())
    if args.json:
        print(json.dumps({"bundle": str(bundle), "to": where, **info}, indent=2))
    else:
        print(bundle)
    _log(_next_steps(bundle, info, where))
    return 0


def _next_steps(bundle: Path, info: dict, remote: str | None) -> str:
    """What to type next, on the board."""
    model = info["models"][0]
    if remote:  # USER@HOST:DIR, checked by deploy_to; installed there already
        host, _, folder = remote.rpartition(":")
        there = f"ssh {host or remote} and, in {folder if host else 'the folder'}:"
        setup = ""
    else:
        there = f"copy {bundle}/ to the board (or deploy again with --to USER@HOST:DIR), then " \
                "there:"
        setup = "\n  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
    return (f"next: {there}{setup}\n  .venv/bin/python run.py photo.jpg              # "
            f"{model} on an image\n  .venv/bin/python run.py --source 0 --frames 100   # the "
            "camera, headless\n  .venv/bin/python run.py --bench --json          # its speed "
            "there (edgepilot bench --on does this over ssh)")


def add_webcam(sub) -> None:
    """The `webcam` command's arguments."""
    p = sub.add_parser("webcam", help="live demo: camera, video, stream or synthetic scene")
    p.add_argument("model", nargs="?", default="stoplight",
                   help=f"a model file ({_SUFFIXES}), or a shipped model: stoplight (the "
                        "default), stoplight-detector")
    p.add_argument("--source", default="synthetic",
                   help="camera index (0: the first camera), video file, rtsp:// or http:// "
                        "URL, or synthetic: a drawn street, no camera needed (default: "
                        "%(default)s)")
    p.add_argument("--roi", default=None, help="x,y,w,h: classify only this part of the frame")
    p.add_argument("--smooth", type=_positive_int, default=5,
                   metavar="K", help="average scores over the last K frames so the label "
                   "does not flicker (default: %(default)s)")
    p.add_argument("--serve", default=None, metavar="HOST:PORT",
                   help="serve a web page with the live stream (default host 127.0.0.1; "
                        "0.0.0.0 to open it to the network)")
    p.add_argument("--token", default=os.environ.get("EDGEPILOT_TOKEN"), metavar="TEXT",
                   help="with --serve: the page answers only requests that carry this token "
                        "(?token=TEXT, printed in the page's address; default: "
                        "$EDGEPILOT_TOKEN, else none)")
    p.add_argument("--headless", action="store_true",
                   help="no window: use with --frames and/or --record")
    p.add_argument("--window-setup", action="store_true",
                   help="print the pip commands that swap the headless OpenCV for the one with "
                        "windows, and exit")
    p.add_argument("--frames", type=_positive_int, default=None, metavar="N",
                   help="stop after N frames reached the output")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="record the annotated video (.mp4; .mkv or .avi stay playable if the "
                        "process is killed)")
    _add_threads(p)
    _add_accelerator(p)
    p.add_argument("--json", action="store_true",
                   help="at the end, print the run's summary as JSON (frames, decisions, FPS, "
                        "latency, cores busy)")
    _renamed(p, "--save", "--record")
    p.set_defaults(func=cmd_webcam)


def cmd_webcam(args: argparse.Namespace) -> int:
    from edgepilot.live.window import check_opencv, window_setup

    if args.window_setup:
        print(window_setup())
        return 0
    check_opencv(log=_log)  # before cv2 is imported: it may be the broken half of two
    from edgepilot.live.webcam import run_webcam

    state = run_webcam(args.model, source=args.source, roi=args.roi, smooth=args.smooth,
                       serve=args.serve, headless=args.headless, frames=args.frames,
                       record=args.record, threads=args.threads, token=args.token,
                       accelerator=args.accelerator, log=_log)
    if args.json:
        print(json.dumps({"model": args.model, "source": args.source, "shown": state.shown,
                          "decisions": state.decisions, **state.public()}, indent=2))
    return 0


def add_demo(sub) -> None:
    """The `demo` command's arguments."""
    p = sub.add_parser("demo", help="the end-to-end stoplight demo")
    p.add_argument("--train", action="store_true",
                   help="train instead of reusing the shipped model")
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--images", type=_positive_int, default=8,
                   help="sample images to save (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the demo's summary as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from edgepilot.demo import run_demo

    check_output_folder(args.out, "--out")
    summary = run_demo(Path(args.out), train=args.train, n_images=args.images, log=_log)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def add_samples(sub) -> None:
    """The `samples` command's arguments."""
    p = sub.add_parser("samples", help="write sample images (class folders, street scenes with "
                       "YOLO boxes) that the README's examples read")
    p.add_argument("--out", default=".",
                   help="the folder to write them in (default: the current folder); nothing "
                        "there is overwritten")
    p.add_argument("--json", action="store_true", help="print the files written as JSON")
    p.set_defaults(func=cmd_samples)


def cmd_samples(args: argparse.Namespace) -> int:
    from edgepilot.samples import write_samples

    written = write_samples(check_output_folder(args.out, "--out"), log=_log)
    if args.json:
        print(json.dumps([str(p) for p in written], indent=2))
    return 0


def _log(message: str) -> None:
    print(printable(message), file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 1, like every other edgepilot error."""

    def error(self, message: str):
        self.exit(1, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgepilot", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"edgepilot {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for add in (add_train, add_export, add_predict, add_bench, add_devices, add_deploy,
                add_webcam, add_info, add_diff, add_demo, add_samples):
        add(sub)
    for command in sub.choices.values():  # --debug after the command works as well
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks on errors")
    return parser


def _version() -> str:
    import edgepilot

    return edgepilot.__version__


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Python parameter -> the flag that sets it, read from the parser itself (dest ``calib``
    -> ``--calib``, ``batch_size`` -> ``--batch-size``). The library's errors name parameters
    as Python callers pass them (``calib=PATH``); `in_flags` turns them into flags here."""
    names = {"formats": "--format"}  # export(formats=...) is --format on the command line
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.dest != "help":
                names.setdefault(action.dest, max(action.option_strings, key=len))
    return names


# ``name=``, ``name=VALUE`` or ``name=True`` where a word starts (not ``ModelMeta(labels=``).
_PARAMETER = re.compile(r"""(?:(?<![^\s'"])|(?<=\s\())([a-z][a-z_]*)=(True\b)?""")


def in_flags(message: str, names: dict[str, str]) -> str:
    """`message` with the parameters it names spelled as flags: ``calib=PATH`` -> ``--calib
    PATH``, ``headless=True`` -> ``--headless``, ``roi= takes`` -> ``--roi takes``."""
    def flag(match: re.Match) -> str:
        name = names.get(match.group(1))
        if name is None:
            return match.group(0)
        after = message[match.end():match.end() + 1]
        value_follows = not match.group(2) and after and not after.isspace() and \
            after not in ",;:).'\""
        return name + (" " if value_follows else "")

    return _PARAMETER.sub(flag, message)


def _error_line(err: BaseException) -> str:
    return printable(in_flags(str(err), _FLAGS))


class _Terminated(KeyboardInterrupt):
    signum = signal.SIGTERM


def _on_sigterm(signum, frame):
    # SIGTERM (systemd, docker stop) unwinds like Ctrl-C, so files in progress are finalised.
    raise _Terminated


_FLAGS: dict[str, str] = {}
#: What a model argument may be, from the format table.
_SUFFIXES = ", ".join(dict.fromkeys(f.suffix for f in FORMATS))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _FLAGS.update(flag_names(parser))
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except BrokenPipeError:  # `edgepilot bench | head`: the reader has gone, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would fail again
        return 128 + getattr(signal, "SIGPIPE", 13)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        if not getattr(err, "reported", False):
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"interrupted ({name})", file=sys.stderr)
        return 128 + signum
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, EdgepilotError):
            print(f"error: {_error_line(err)}", file=sys.stderr)
        else:  # a bug or an unexpected library failure: still one line, and how to see more
            print(f"error: {type(err).__name__}: {printable(err)} (run with --debug for the "
                  "traceback)",
                  file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
