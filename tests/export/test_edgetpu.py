"""Edge TPU export: the int8 TFLite checked op by op, compiled when edgetpu_compiler exists."""

import os
import stat
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

import edgepilot  # noqa: E402
from edgepilot.errors import UnsupportedFormatError  # noqa: E402

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


def _export(trained_tiny, tiny_meta, colour_data, out):
    [report] = edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="edgetpu",
                                precision="int8", out=out, meta=tiny_meta,
                                val_data=colour_data, max_drop=None, quiet=True)
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
    from edgepilot.info import inspect_model

    assert inspect_model(report.path).details["edge TPU"] == check["summary"]


@pytest.mark.slow
def test_with_the_compiler_its_output_and_log_are_kept(trained_tiny, tiny_meta, colour_data,
                                                       tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "edgetpu_compiler"
    compiler.write_text(FAKE_COMPILER.format(python=sys.executable))
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    report = _export(trained_tiny, tiny_meta, colour_data, tmp_path / "out" / "tiny")
    log = report.notes["compiler"]
    assert log["version"] == "16.0.384591198" and log["on_chip_used"] == 12_800
    assert (log["ops_on_tpu"], log["ops_on_cpu"]) == (4, 1)
    assert log["operation_log"] == "operation log\n"


def test_only_int8(trained_tiny, tiny_meta, tmp_path):
    with pytest.raises(UnsupportedFormatError, match="Valid precisions: int8"):
        edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="edgetpu",
                         precision="fp32", out=tmp_path / "m", meta=tiny_meta, quiet=True)
