"""The Edge TPU: op-by-op checker, compiler log parser, device selectors, missing runtime."""

import shutil

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
        edgepilot.load(path, device="usb:1")
    message = str(info.value)
    assert "\n" not in message
    assert "libedgetpu1-std" in message and "_int8.tflite" in message
    assert "libedgetpu-absent.so.1" in message


def test_bad_device_fails_before_the_runtime_is_looked_for(int8_file, tmp_path):
    import edgepilot

    path = tmp_path / "tiny_int8_edgetpu.tflite"
    shutil.copyfile(int8_file, path)
    with pytest.raises(InputError, match="not a device selector"):
        edgepilot.load(path, device="usb-1")


def test_info_reports_the_edge_tpu_verdict(int8_file, tmp_path):
    from edgepilot.info import inspect_model

    path = tmp_path / "tiny_int8_edgetpu.tflite"
    shutil.copyfile(int8_file, path)
    info = inspect_model(path)
    assert info.format == "edgetpu"
    assert info.details["edge TPU"] == check_file(path).summary()
    assert info.parameters > 0
