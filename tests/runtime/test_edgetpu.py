"""The Edge TPU: op-by-op checker, compiler log parser, device selectors, missing runtime."""

import json
import shutil
import subprocess
import sys

import pytest

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.runtime.edgetpu import parse_device
from edgepilot.runtime.edgetpu_check import check_file, check_model, parse_compiler_log

# The compiler prints its CPU-fallback warning as one long line.
WARNING = ("Model successfully compiled but not all operations are supported by the Edge TPU. "
           "A percentage of the model will instead run on the CPU, which is slower. If "
           "possible, consider updating your model to use only operations supported by the "
           "Edge TPU. For details, visit g.co/coral/model-reqs.")

# What edgetpu_compiler 16 prints (format as in Coral's docs and its users' reports).
COMPILER_LOG = f"""Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 642 ms.

Input model: stoplight_int8.tflite
Input size: 149.41KiB
Output model: stoplight_int8_edgetpu.tflite
Output size: 221.50KiB
On-chip memory used for caching model parameters: 150.25KiB
On-chip memory remaining for caching model parameters: 7.62MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 16
Operation log: stoplight_int8_edgetpu.log

{WARNING}
Number of operations that will run on Edge TPU: 14
Number of operations that will run on CPU: 2

Operator                       Count      Status

CONV_2D                        6          Mapped to Edge TPU
PAD                            4          Mapped to Edge TPU
SUB                            1          Mapped to Edge TPU
MUL                            1          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
DEQUANTIZE                     1          Operation is working on an unsupported data type
SOFTMAX                        1          More than one subgraph is not supported
Compilation child process completed within timeout period.
Compilation succeeded!
"""


def test_compiler_log_is_parsed():
    log = parse_compiler_log(COMPILER_LOG)
    assert log["version"] == "16.0.384591198"
    assert log["on_chip_used"] == round(150.25 * 1024)
    assert log["on_chip_remaining"] == round(7.62 * 1024 * 1024)
    assert log["off_chip_used"] == 0
    assert (log["subgraphs"], log["total_ops"], log["ops_on_tpu"], log["ops_on_cpu"]) == \
        (1, 16, 14, 2)
    assert log["output_model"] == "stoplight_int8_edgetpu.tflite"
    rows = {r["op"]: r for r in log["ops"]}
    assert rows["CONV_2D"]["count"] == 6 and rows["CONV_2D"]["on_tpu"]
    assert not rows["SOFTMAX"]["on_tpu"]
    assert rows["SOFTMAX"]["status"] == "More than one subgraph is not supported"
    assert sum(r["count"] for r in log["ops"]) == 16


def test_compiler_log_without_per_op_totals_derives_them():
    text = COMPILER_LOG.split("Model successfully compiled but")[0] + \
        "Operator                       Count      Status\n\nCONV_2D  3  Mapped to Edge TPU\n"
    log = parse_compiler_log(text)
    assert (log["ops_on_tpu"], log["ops_on_cpu"]) == (3, 0)


@pytest.mark.parametrize("given,expected", [
    (None, None), ("", None), ("usb", "usb"), ("USB:1", "usb:1"), ("pci:0", "pci:0"),
    ("pci", "pci"), (":2", ":2"), (" usb:01 ", "usb:1")])
def test_device_selectors(given, expected):
    assert parse_device(given) == expected


@pytest.mark.parametrize("bad", ["usb1", "tpu:0", "usb:-1", "pci:x", ":", "usb:1:2"])
def test_bad_device_selector_lists_the_valid_forms(bad):
    with pytest.raises(InputError, match="usb, usb:N, pci, pci:N, :N"):
        parse_device(bad)


@pytest.fixture(scope="module")
def int8_file(tiny_tflite):
    return tiny_tflite["int8"]


def test_checker_maps_the_convolutions_and_names_the_cut(int8_file):
    verdict = check_file(int8_file)
    ops = [op.op for op in verdict.ops]
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    for op in verdict.ops:
        if op.op in ("CONV_2D", "FULLY_CONNECTED", "MEAN", "PAD"):
            assert op.where == "edgetpu", op
    # The classifier's float tail (DEQUANTIZE, then a float SOFTMAX) is what stays on the CPU.
    assert verdict.cut is not None and verdict.cut.op == "DEQUANTIZE"
    assert "supported-operations table" in verdict.cut.reason
    assert [op.op for op in verdict.on_cpu] == ["DEQUANTIZE", "SOFTMAX"]
    assert f"cut at op {verdict.cut.index} DEQUANTIZE" in verdict.summary()


def _with_op_replaced(data: bytes, old: str, new: str) -> bytes:
    """The same model with every `old` operator recoded as `new` (never run, only checked)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    code_old, code_new = (getattr(schema.BuiltinOperator, n) for n in (old, new))
    for code in tree.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == code_old:
            code.builtinCode, code.deprecatedBuiltinCode = code_new, min(code_new, 127)
    builder = flatbuffers.Builder(len(data))
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_checker_names_an_unsupported_op_and_cuts_the_graph_there(int8_file):
    data = _with_op_replaced(open(int8_file, "rb").read(), "MEAN", "ABS")
    verdict = check_model(data, "abs.tflite")
    assert verdict.cut.op == "ABS"
    assert verdict.cut.reason == "ABS is not in Coral's supported-operations table"
    after = [op for op in verdict.ops if op.index > verdict.cut.index]
    assert after and all(op.where == "cpu" for op in after)
    # FULLY_CONNECTED is supported, yet after the cut it runs on the CPU, and the check says so.
    fc = next(op for op in after if op.op == "FULLY_CONNECTED")
    assert fc.reason.startswith(f"after the cut at op {verdict.cut.index}")
    before = [op for op in verdict.ops if op.index < verdict.cut.index]
    assert before and all(op.where == "edgetpu" for op in before)


def test_float_model_is_cut_at_its_first_op(tiny_tflite):
    verdict = check_file(tiny_tflite["fp32"])
    assert verdict.cut.index == 0 and "float32" in verdict.cut.reason
    assert verdict.on_tpu == 0


def test_missing_libedgetpu_says_what_to_install_and_what_runs_instead(int8_file, tmp_path,
                                                                       monkeypatch):
    import edgepilot
    import edgepilot.runtime.edgetpu as backend

    path = tmp_path / "tiny_int8_edgetpu.tflite"
    shutil.copyfile(int8_file, path)
    monkeypatch.setattr(backend, "delegate_library", lambda: "libedgetpu-absent.so.1")
    with pytest.raises(EdgepilotError) as info:
        edgepilot.load(path, accelerator="usb:1")
    message = str(info.value)
    assert "\n" not in message
    assert "libedgetpu1-std" in message and "_int8.tflite" in message
    assert "libedgetpu-absent.so.1" in message


def test_bad_device_fails_before_the_runtime_is_looked_for(int8_file, tmp_path):
    import edgepilot

    path = tmp_path / "tiny_int8_edgetpu.tflite"
    shutil.copyfile(int8_file, path)
    with pytest.raises(InputError, match="not a device selector"):
        edgepilot.load(path, accelerator="usb-1")


def test_info_reports_the_edge_tpu_verdict(int8_file, tmp_path):
    from edgepilot.info import inspect_model

    path = tmp_path / "tiny_int8_edgetpu.tflite"
    shutil.copyfile(int8_file, path)
    info = inspect_model(path)
    assert info.format == "edgetpu"
    assert info.details["edge TPU"] == check_file(path).summary()
    assert info.parameters > 0


# ---------------------------------------------------------------- hostile compiler logs
SIZE = "On-chip memory used for caching model parameters: "


@pytest.mark.parametrize("old,new,key", [
    ("Number of Edge TPU subgraphs: 1", "Number of Edge TPU subgraphs: " + "9" * 5000,
     "subgraphs"),  # int() refuses more than 4,300 digits: ValueError
    ("Total number of operations: 16", "Total number of operations: many", "total_ops"),
    (SIZE + "150.25KiB", SIZE + "9" * 400 + "KiB", "on_chip_used"),  # inf: OverflowError
    (SIZE + "150.25KiB", SIZE + "1.2.3KiB", "on_chip_used"),  # float(): ValueError
    (SIZE + "150.25KiB", SIZE + ".KiB", "on_chip_used"),
    (SIZE + "150.25KiB", SIZE + "infKiB", "on_chip_used"),
    (SIZE + "150.25KiB", SIZE + "nan MiB", "on_chip_used"),
    (SIZE + "150.25KiB", SIZE + "5 furlongs", "on_chip_used"),  # was read as 5 bytes
    ("Output model: stoplight_int8_edgetpu.tflite", "Output model: " + "x" * 100_000,
     "output_model"),
], ids=["5000-digit count", "word for a count", "400-digit size", "1.2.3", "dot", "inf",
        "nan", "unknown unit", "100000-character name"])
def test_an_unreadable_log_line_is_noted_and_the_rest_still_read(old, new, key):
    assert old in COMPILER_LOG
    log = parse_compiler_log(COMPILER_LOG.replace(old, new))
    assert key not in log  # never a value it did not read
    [note] = log["unread"]
    assert note.startswith(f"line {COMPILER_LOG.splitlines().index(old) + 1}: ")
    assert len(note) < 300
    assert log["version"] == "16.0.384591198" and log["ops_on_tpu"] == 14
    assert sum(r["count"] for r in log["ops"]) == 16


def test_table_rows_it_cannot_read_are_noted_and_no_totals_derived_from_the_rest():
    text = COMPILER_LOG.split("Model successfully compiled but")[0] + (
        "Operator                       Count      Status\n\n"
        "CONV_2D                        3          Mapped to Edge TPU\n"
        "SOFTMAX\n"  # missing columns
        "MEAN                           2\n"
        "PAD                            x          Mapped to Edge TPU\n"
        "ADD                            " + "9" * 5000 + "  Mapped to Edge TPU\n"
        "Compilation succeeded!\n")
    log = parse_compiler_log(text)
    assert [(r["op"], r["count"]) for r in log["ops"]] == [("CONV_2D", 3)]
    assert len(log["unread"]) == 4
    assert all(note.startswith("line ") for note in log["unread"])
    # Three ops are missing from the table: totals derived from it would be false.
    assert "ops_on_tpu" not in log and "ops_on_cpu" not in log


def test_parse_is_linear_on_a_table_line_of_60000_spaces():
    """A status with 60,000 spaces inside took 19-36 s in a backtracking regex. Run in a child
    process, as a regex holds the GIL: a time-out there is a clear failure, not a slow run."""
    rows = ["CONV_2D  1  a" + " " * 60_000 + "b", "PAD  2  Mapped" + " " * 60_000 + "x",
            "MUL  3  " + " " * 60_000 + "y", " " * 60_000, "SUB" + " " * 60_000 + "4"]
    log = "Operator  Count  Status\n\n" + "\n".join(rows) + "\n"
    code = ("import json, sys\n"
            "from edgepilot.runtime.edgetpu_check import parse_compiler_log\n"
            "print(json.dumps(parse_compiler_log(sys.stdin.read())))")
    try:
        done = subprocess.run([sys.executable, "-I", "-c", code], input=log, capture_output=True,
                              text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("parse_compiler_log ran for more than 10 s on 60,000-space table lines")
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = json.loads(done.stdout)
    assert [(r["op"], r["count"], r["status"]) for r in parsed["ops"]] == [
        ("CONV_2D", 1, "a b"), ("PAD", 2, "Mapped x"), ("MUL", 3, "y")]
    assert len(parsed["unread"]) == 1 and "ops_on_tpu" not in parsed  # "SUB <spaces> 4"


ROW = "CONV_2D                        1          Mapped to Edge TPU\n"


def test_a_log_cut_inside_its_table_reads_whole_rows_and_derives_no_totals():
    from edgepilot.runtime.edgetpu_check import LOG_LIMIT

    text = "Operator  Count  Status\n\n" + ROW * 3 + "CONV_2D  1  " + "x" * LOG_LIMIT
    for log in (parse_compiler_log(text), parse_compiler_log(text.encode())):
        assert [r["count"] for r in log["ops"]] == [1, 1, 1]  # not the cut row
        assert log["unread"] == [f"the log is longer than {LOG_LIMIT:,} "
                                 f"{'bytes' if 'bytes' in log['unread'][0] else 'characters'}"
                                 ": what follows line 5 was not read"]
        assert "ops_on_tpu" not in log  # the table may go on past the cut


def test_a_log_cut_after_its_table_keeps_the_totals():
    from edgepilot.runtime.edgetpu_check import LOG_LIMIT

    text = ("Operator  Count  Status\n\n" + ROW * 3 + "Compilation succeeded!\n" +
            "junk\n" * (LOG_LIMIT // 5 + 1))
    log = parse_compiler_log(text)
    assert (log["ops_on_tpu"], log["ops_on_cpu"]) == (3, 0)
    assert "not read" in log["unread"][0]


def test_a_table_longer_than_any_model_has_is_capped():
    from edgepilot.runtime.edgetpu_check import _MAX_ROWS

    log = parse_compiler_log("Operator  Count  Status\n\n" + ROW * (_MAX_ROWS + 50))
    assert len(log["ops"]) == _MAX_ROWS and "ops_on_tpu" not in log
    assert log["unread"][0].endswith(f"more than {_MAX_ROWS} rows")
    assert log["unread"][-1] == f"and {50 - 20} more line(s)"  # 20 named, the rest counted


def test_undecodable_bytes_are_replaced_not_raised():
    log = parse_compiler_log(b"Edge TPU Compiler version 16.0\xff\xfe\n"
                             b"Number of Edge TPU subgraphs: 1\n")
    assert log["version"] == "16.0\ufffd\ufffd" and log["subgraphs"] == 1
