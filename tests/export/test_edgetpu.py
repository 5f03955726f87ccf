"""Edge TPU export: the int8 TFLite checked op by op, compiled when edgetpu_compiler exists."""

import os
import shutil
import stat
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

import edgepilot  # noqa: E402
from edgepilot.errors import EdgepilotError, UnsupportedFormatError  # noqa: E402

FAKE_COMPILER = """#!{python}
# Stands in for Google's edgetpu_compiler: same arguments, output name and log format.
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("-o") + 1])
source = Path(args[-1])
shutil.copyfile(source, out / (source.stem + "_edgetpu.tflite"))
(out / (source.stem + "_edgetpu.log")).write_text("operation log\\n")
print("Edge TPU Compiler version 16.0.384591198")
print("Output model: " + source.stem + "_edgetpu.tflite")
print("On-chip memory used for caching model parameters: 12.50KiB")
print("Number of Edge TPU subgraphs: 1")
print("Operator                       Count      Status")
print("")
print("CONV_2D                        4          Mapped to Edge TPU")
print("SOFTMAX                        1          More than one subgraph is not supported")
"""


def _put_compiler(tmp_path, monkeypatch, script: str) -> None:
    """`script` as the edgetpu_compiler first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "edgetpu_compiler"
    compiler.write_text(script.format(python=sys.executable))
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])


def _export(trained_tiny, tiny_meta, colour_data, out):
    [report] = edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="edgetpu",
                                precision="int8", out=out, meta=tiny_meta,
                                data=colour_data, max_drop=None, quiet=True)
    return report


@pytest.mark.slow
def test_without_the_compiler_the_checked_input_is_written(trained_tiny, tiny_meta, colour_data,
                                                           tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    report = _export(trained_tiny, tiny_meta, colour_data, tmp_path / "tiny")
    assert report.path.endswith("tiny_int8_edgetpu.tflite")
    check = report.notes["edgetpu_check"]
    assert "map to the Edge TPU" in check["summary"]
    assert any("DEQUANTIZE" in line for line in check["on_cpu"])
    assert "not on PATH" in report.notes["compiler"]
    assert "libedgetpu" in report.notes["unchecked"]  # no Edge TPU here to run it on
    # Said on the console, not only in the JSON (issue 35): the name promises a compiled file.
    [warning] = report.notes["warnings"]
    assert warning.startswith("NOT COMPILED")
    from io import StringIO

    from rich.console import Console

    from edgepilot.export.report import print_reports

    out = StringIO()
    print_reports([report], console=Console(file=out, width=200))
    assert "tiny_int8_edgetpu.tflite: NOT COMPILED" in out.getvalue()
    from edgepilot.info import inspect_model

    assert inspect_model(report.path).details["edge TPU"] == check["summary"]


@pytest.mark.slow
def test_with_the_compiler_its_output_and_log_are_kept(trained_tiny, tiny_meta, colour_data,
                                                       tmp_path, monkeypatch):
    _put_compiler(tmp_path, monkeypatch, FAKE_COMPILER)
    report = _export(trained_tiny, tiny_meta, colour_data, tmp_path / "out" / "tiny")
    log = report.notes["compiler"]
    assert log["version"] == "16.0.384591198" and log["on_chip_used"] == 12_800
    assert (log["ops_on_tpu"], log["ops_on_cpu"]) == (4, 1)
    assert log["operation_log"] == "operation log\n"


def test_only_int8(trained_tiny, tiny_meta, tmp_path):
    with pytest.raises(UnsupportedFormatError, match="Valid precisions: int8"):
        edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="edgetpu",
                         precision="fp32", out=tmp_path / "m", meta=tiny_meta, quiet=True)


# ------------------------------------------------- compilers that misbehave, fast: the int8
# file is the tiny model's (built once per session), and only the compiler step runs.
COMPILER_HEAD = """#!{python}
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
out, source = Path(args[args.index("-o") + 1]), Path(args[-1])
"""
WRITES_OUTPUT = 'shutil.copyfile(source, out / (source.stem + "_edgetpu.tflite"))\n'

# Numbers too big for int(), a size float() makes inf, inf itself, a unit nobody knows, table
# rows with missing or non-numeric columns, a 60,000-space row, and bytes that are not UTF-8.
HOSTILE_LOG = [
    b"Edge TPU Compiler version 16.0.384591198",
    b"On-chip memory used for caching model parameters: " + b"9" * 400 + b"KiB",
    b"On-chip memory remaining for caching model parameters: infMiB",
    b"Off-chip memory used for streaming uncached model parameters: 5 furlongs",
    b"Number of Edge TPU subgraphs: " + b"9" * 5000,
    b"Total number of operations: \xff\xfe",
    b"Operator                       Count      Status",
    b"",
    b"CONV_2D                        4          Mapped to Edge TPU",
    b"SOFTMAX",
    b"MEAN                           nan        Mapped to Edge TPU",
    b"PAD                            1          Mapped" + b" " * 60_000 + b"to Edge TPU",
    b"Compilation succeeded!",
]
HOSTILE_PRINT = "sys.stdout.buffer.write(" + repr(b"\n".join(HOSTILE_LOG)) + ")\n"


@pytest.fixture
def compile_tiny(tiny_tflite, tmp_path, monkeypatch):
    """Run export/edgetpu.py's export() with whatever edgetpu_compiler is on PATH, its int8
    input being a copy of the tiny model (litert's export stubbed out)."""
    from edgepilot.export import edgetpu, litert
    from edgepilot.export.options import ExportOptions

    def int8_file(module, sample_input, path, options):
        shutil.copyfile(tiny_tflite["int8"], path)
        return {}

    monkeypatch.setattr(litert, "export", int8_file)
    path = tmp_path / "out" / "tiny_int8_edgetpu.tflite"
    path.parent.mkdir()
    return lambda: (edgetpu.export(None, None, path, ExportOptions(precision="int8")), path)


def test_a_compiler_that_writes_no_file_is_named(compile_tiny, tmp_path, monkeypatch):
    _put_compiler(tmp_path, monkeypatch,
                  COMPILER_HEAD + 'print("Edge TPU Compiler version 16.0.384591198")\n')
    with pytest.raises(EdgepilotError) as info:
        compile_tiny()
    message = str(info.value)
    assert "\n" not in message
    assert "edgetpu_compiler" in message and "tiny_int8_edgetpu.tflite" in message
    assert str(tmp_path / "bin" / "edgetpu_compiler") in message
    assert list((tmp_path / "out").iterdir()) == []  # nothing left behind


def test_a_hostile_compiler_log_leaves_a_good_export_standing(compile_tiny, tiny_tflite,
                                                              tmp_path, monkeypatch):
    _put_compiler(tmp_path, monkeypatch, COMPILER_HEAD + WRITES_OUTPUT + HOSTILE_PRINT)
    notes, path = compile_tiny()
    assert path.read_bytes() == open(tiny_tflite["int8"], "rb").read()  # the compiler's file
    log = notes["compiler"]
    assert log["version"] == "16.0.384591198"
    for key in ("on_chip_used", "on_chip_remaining", "off_chip_used", "subgraphs",
                "total_ops", "ops_on_tpu", "ops_on_cpu"):
        assert key not in log, key  # never claimed from a line it could not read
    assert [(r["op"], r["count"], r["status"]) for r in log["ops"]] == [
        ("CONV_2D", 4, "Mapped to Edge TPU"), ("PAD", 1, "Mapped to Edge TPU")]
    assert len(log["unread"]) == 7
    [warning] = notes["warnings"]
    assert "compiler.unread" in warning and "[" not in warning  # no log text in printed lines


def test_a_flooding_compiler_is_read_up_to_the_limit(compile_tiny, tmp_path, monkeypatch):
    from edgepilot.runtime.edgetpu_check import LOG_LIMIT

    _put_compiler(tmp_path, monkeypatch, COMPILER_HEAD + WRITES_OUTPUT +
                  'print("Edge TPU Compiler version 16.0.384591198")\n'
                  f'sys.stdout.write("junk\\n" * {LOG_LIMIT // 2})\n')
    notes, path = compile_tiny()
    assert path.is_file() and notes["compiler"]["version"] == "16.0.384591198"
    assert "not read" in notes["compiler"]["unread"][0]


def test_a_failing_compiler_is_reported_in_one_short_line(compile_tiny, tmp_path, monkeypatch):
    _put_compiler(tmp_path, monkeypatch, COMPILER_HEAD +
                  'sys.stderr.write("first\\n" + "E" * 100_000 + "\\n"); sys.exit(3)\n')
    with pytest.raises(EdgepilotError, match="edgetpu_compiler failed on 'tiny_int8.tflite': "
                                             "E+") as info:
        compile_tiny()
    assert "\n" not in str(info.value) and len(str(info.value)) < 500


def test_a_compiler_that_cannot_start_is_named(compile_tiny, tmp_path, monkeypatch):
    _put_compiler(tmp_path, monkeypatch, "no interpreter line: exec() refuses this file\n")
    with pytest.raises(EdgepilotError, match="edgetpu_compiler at '.*' could not be started: "
                                             "Exec format error"):
        compile_tiny()


@pytest.mark.slow
def test_the_shipped_stoplight_model_maps_as_the_readme_says(tmp_path, monkeypatch):
    # README: "The shipped stoplight model maps all its convolutions, the mean and the fully
    # connected layer; the last two ops (DEQUANTIZE and the float softmax) run on the CPU."
    # Checked on the shipped model itself, exported as a user would (no compiler here: the
    # op-by-op check decides), and counted against the PyTorch model's own layers.
    from edgepilot.assets import shipped_model
    from edgepilot.runtime.edgetpu_check import check_file
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.datasets import load_dataset

    monkeypatch.setenv("PATH", str(tmp_path / "empty") + os.pathsep + os.path.dirname(
        sys.executable))
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    val = load_dataset("stoplight", "val", 200, meta.input_size, seed=31)
    [report] = edgepilot.export(net, torch.zeros(meta.input_shape), formats="edgetpu",
                                precision="int8", out=tmp_path / "stoplight", meta=meta,
                                data=val, quiet=True)
    verdict = check_file(report.path)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in net.modules())
    on_tpu = [op.op for op in verdict.ops if op.where == "edgetpu"]
    assert on_tpu.count("CONV_2D") + on_tpu.count("DEPTHWISE_CONV_2D") == convs
    assert on_tpu.count("FULLY_CONNECTED") == linears == 1
    assert on_tpu.count("MEAN") == 1
    assert [op.op for op in verdict.on_cpu] == ["DEQUANTIZE", "SOFTMAX"]
    assert verdict.cut is not None and verdict.cut.index == len(verdict.ops) - 2
    assert report.notes["edgetpu_check"]["summary"] == verdict.summary()
