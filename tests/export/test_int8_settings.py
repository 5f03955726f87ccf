"""The ONNX int8 layout chosen by timing on this CPU: ranking on fake timings, the threshold
below which the default stays, the file really written in the chosen layout, and the fall back
to the next layout when the accuracy guard rejects one."""

import shutil

import numpy as np
import pytest

import edgepilot
from edgepilot.export import onnx as onnx_export
from edgepilot.export.calibration import as_inputs
from edgepilot.export.guard import Guard
from edgepilot.export.onnx import DEFAULT_INT8, INT8_SETTINGS, Int8Settings

QOP_U8_PT = Int8Settings("QOperator", "uint8", False)
QDQ_U8_PC = Int8Settings("QDQ", "uint8", True)


def fake_timings(monkeypatch, fp32_ms: float, layouts: dict, sqnr: dict | None = None):
    """Timings (ms) and SQNR (dB; 40 unless given) of each layout, injected."""
    calls = []
    monkeypatch.setattr(onnx_export, "_fidelity", lambda paths, inputs: {
        k: (sqnr or {}).get(k, 40.0) for k in paths if k != "fp32"})

    def time_ms(paths, x, seconds):
        calls.append(list(paths))
        if list(paths) == ["fp32"]:
            return {"fp32": fp32_ms}
        return {"fp32": fp32_ms, **{k: layouts.get(k, 100.0) for k in paths if k != "fp32"}}

    monkeypatch.setattr(onnx_export, "_time_ms", time_ms)
    return calls


def test_layouts_are_ranked_fastest_first_with_the_preferred_one_among_ties(monkeypatch,
                                                                           tiny_onnx):
    fake_timings(monkeypatch, 20.0, {QOP_U8_PT: 8.0, QDQ_U8_PC: 8.2, DEFAULT_INT8: 12.0})
    written = []
    note = onnx_export.choose_int8_settings(
        tiny_onnx.path, [np.zeros((1, 3, 32, 32), np.float32)] * 8,
        lambda settings, xs, out: written.append((settings, len(xs))))
    # Within 5% of the fastest: a tie, and QDQ is preferred (listed first in INT8_SETTINGS).
    assert note["ranked"][:3] == [QDQ_U8_PC, QOP_U8_PT, DEFAULT_INT8]
    assert [s for s, _ in written] == list(INT8_SETTINGS) and {n for _, n in written} == {8}
    assert note["fp32_ms"] == 20.0 and len(note["ms_1_thread"]) == len(INT8_SETTINGS)
    assert len(note["sqnr_db"]) == len(INT8_SETTINGS)


def test_accuracy_decides_before_speed(monkeypatch, tiny_onnx):
    """The race the issue measured on EfficientNet-Lite0: per-tensor weights 4% faster (inside
    the timing noise) and 30 points less faithful. A less faithful layout is never chosen
    for speed; among equally faithful ones (within 1 dB) the fastest is."""
    qdq_u8_pt = Int8Settings("QDQ", "uint8", False)
    fake_timings(monkeypatch, 20.0,
                 {qdq_u8_pt: 4.45, QDQ_U8_PC: 4.66, DEFAULT_INT8: 4.9, QOP_U8_PT: 1.0},
                 sqnr={**dict.fromkeys(INT8_SETTINGS, 10.0), qdq_u8_pt: 14.0, QOP_U8_PT: 13.0,
                       QDQ_U8_PC: 29.4, DEFAULT_INT8: 30.0})
    note = onnx_export.choose_int8_settings(
        tiny_onnx.path, [np.zeros((1, 3, 32, 32), np.float32)] * 8, lambda *args: None)
    ranked = note["ranked"]
    assert ranked[:2] == [QDQ_U8_PC, DEFAULT_INT8]  # both within 1 dB of 30; U8 within 5%
    assert ranked[2:4] == [qdq_u8_pt, QOP_U8_PT]  # then by SQNR, however fast
    assert "most faithful" in note["chosen_by"]


def test_rank_layouts_breaks_speed_ties_by_preference_and_keeps_every_layout():
    ms = dict.fromkeys(INT8_SETTINGS, 10.0)
    sqnr = dict.fromkeys(INT8_SETTINGS, 30.0)
    assert onnx_export.rank_layouts(ms, sqnr) == list(INT8_SETTINGS)
    ms[INT8_SETTINGS[-1]] = 9.0  # 10% faster: no longer a tie
    assert onnx_export.rank_layouts(ms, sqnr)[0] == INT8_SETTINGS[-1]
    sqnr[INT8_SETTINGS[-1]] = 28.9  # ... but 1.1 dB less faithful
    ranked = onnx_export.rank_layouts(ms, sqnr)
    assert ranked[0] == DEFAULT_INT8 and ranked[-1] == INT8_SETTINGS[-1]
    assert sorted(map(str, ranked)) == sorted(map(str, INT8_SETTINGS))


def test_a_float_model_too_fast_to_matter_keeps_the_default_layout(monkeypatch, tiny_onnx):
    calls = fake_timings(monkeypatch, 0.3, {QOP_U8_PT: 0.1})
    written = []
    note = onnx_export.choose_int8_settings(tiny_onnx.path, [np.zeros((1, 3, 32, 32),
                                                                      np.float32)],
                                            lambda *args: written.append(args))
    assert note["ranked"] == [DEFAULT_INT8] and "too fast" in note["chosen_by"]
    assert written == [] and calls == [["fp32"]]


def op_types(path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.slow
def test_the_file_is_written_in_the_layout_timed_fastest(monkeypatch, tmp_path, trained_tiny,
                                                         tiny_meta, colour_data,
                                                         fresh_colour_data, torch_top1,
                                                         model_top1):
    import torch

    monkeypatch.setattr(onnx_export, "SEARCH_ABOVE_MS", 0.0)
    real = onnx_export._time_ms

    def time_ms(paths, x, seconds):  # really timed; then QOperator/uint8/per-tensor wins
        if "int8" in paths:  # kinds of layers in float for speed: a tie, none is kept
            return dict.fromkeys(paths, 1.0)
        measured = real(paths, x, min(seconds, 0.2))
        if len(paths) > 1:
            assert set(measured) == {"fp32", *INT8_SETTINGS}
            measured[QOP_U8_PT] = 0.001
        return measured

    monkeypatch.setattr(onnx_export, "_time_ms", time_ms)
    real_fidelity = onnx_export._fidelity

    def fidelity(paths, inputs):  # really measured; then QOperator/uint8/per-tensor the best
        measured = real_fidelity(paths, inputs)
        measured[QOP_U8_PT] = max(measured.values()) + 1
        return measured

    monkeypatch.setattr(onnx_export, "_fidelity", fidelity)
    net, _ = trained_tiny
    [report] = edgepilot.export(net, torch.zeros(1, 3, 32, 32), formats="onnx",
                                precision="int8", out=tmp_path / "tiny", meta=tiny_meta,
                                data=colour_data, quiet=True)
    note = report.notes["int8_settings"]
    assert note["chosen"] == str(QOP_U8_PT) and note["format"] == "QOperator"
    assert note["activations"] == "uint8" and note["per_channel"] is False
    ops = op_types(report.path)
    assert "QLinearConv" in ops and "Conv" not in ops  # operator format, really
    # Still the same classifier, re-measured through the runtime on images the export never
    # saw, PyTorch the oracle: nearly the same answers, and within a point of its accuracy.
    images, labels = fresh_colour_data
    expected = torch_top1(net, images, tiny_meta)
    got = model_top1(edgepilot.load(report.path), images)
    assert np.mean(got == expected) >= 0.97
    drop = np.mean(expected == labels) - np.mean(got == labels)
    assert drop <= 0.01 + 1e-9, drop
    # The report's drop (on the validation images) agrees with ours within two points.
    assert abs((report.accuracy_torch - report.accuracy_export) - drop) <= 0.02
    assert not list(tmp_path.glob("*.try*"))  # no trial files left behind


def test_a_layout_the_guard_rejects_falls_back_to_the_next(monkeypatch, tmp_path, tiny_onnx,
                                                          tiny_meta, colour_data):
    monkeypatch.setattr(onnx_export, "SEARCH_ABOVE_MS", 0.0)
    fake_timings(monkeypatch, 5.0, {QOP_U8_PT: 1.0, DEFAULT_INT8: 2.0})
    path = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx.path, path)
    evaluated = []

    def evaluate(trial):  # QOperator files lose 40 points, QDQ ones nothing
        evaluated.append(trial)
        return 0.5 if "QLinearConv" in op_types(trial) else 0.9

    guard = Guard(evaluate=evaluate, baseline=0.9, max_drop=1.0, max_steps=0)
    inputs = as_inputs(colour_data[0][:16], tiny_meta)
    note = onnx_export._to_int8(path, inputs, "minmax", guard)
    assert note["chosen"] == str(DEFAULT_INT8)
    [rejected] = note["rejected"]
    assert rejected.startswith(str(QOP_U8_PT)) and "loses 40.00 points of accuracy" in rejected
    assert "QuantizeLinear" in op_types(path) and "QLinearConv" not in op_types(path)
    assert len(evaluated) == 2
    model = edgepilot.load(path, threads=1)
    assert model(inputs[0]).shape == (1, len(tiny_meta.labels))


def test_every_layout_over_budget_fails_with_the_guards_reason(monkeypatch, tmp_path,
                                                               tiny_onnx, tiny_meta,
                                                               colour_data):
    monkeypatch.setattr(onnx_export, "SEARCH_ABOVE_MS", 0.0)
    fake_timings(monkeypatch, 5.0, {})
    path = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx.path, path)
    guard = Guard(evaluate=lambda trial: 0.1, baseline=0.9, max_drop=1.0, max_steps=0)
    with pytest.raises(edgepilot.EdgepilotError, match="onnx int8 loses 80.00 points of accuracy"):
        onnx_export._to_int8(path, as_inputs(colour_data[0][:8], tiny_meta), "minmax", guard)
    assert not list(tmp_path.glob("*.try*")) and not path.with_name("tiny.onnx.float").exists()
