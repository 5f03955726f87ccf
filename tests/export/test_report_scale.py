"""The export table's parity column is on one scale for every classifier (issue 35): an ONNX
file outputs logits and a TFLite file probabilities; both are reported as the largest
class-probability difference from PyTorch, recomputed here from the files themselves."""

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

import edgepilot  # noqa: E402
from edgepilot.export.report import print_reports  # noqa: E402
from edgepilot.runtime import preprocess  # noqa: E402


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.slow
def test_logits_and_probabilities_are_reported_on_one_scale(trained_tiny, tiny_meta,
                                                            colour_data, tmp_path):
    net = trained_tiny[0]
    reports = edgepilot.export(net, torch.zeros(1, 3, 32, 32), formats=["onnx", "tflite"],
                               precision="int8", out=tmp_path / "tiny", meta=tiny_meta,
                               data=colour_data, quiet=True)
    by_format = {r.format: r for r in reports}
    assert by_format["onnx"].outputs_are == "logits"
    assert by_format["tflite"].outputs_are == "probabilities"
    images = colour_data[0]
    x = np.concatenate([preprocess(img, tiny_meta) for img in images])
    with torch.no_grad():
        reference = _softmax(net(torch.from_numpy(x)).numpy().astype(np.float64))
    for fmt, report in by_format.items():
        model = edgepilot.load(report.path)  # predict: each file's own preprocessing
        probs = np.array([list(model.predict(img).scores.values()) for img in images])
        measured = np.abs(reference - probs).max()
        assert report.max_prob_diff == pytest.approx(measured, abs=1e-3), fmt
        assert report.max_prob_diff <= 1.0
        saved = json.loads(Path(report.path + ".json").read_text())
        assert saved["max_prob_diff"] == report.max_prob_diff
    out = StringIO()
    from rich.console import Console

    print_reports(reports, console=Console(file=out, width=200))
    assert "max |Δp|" in out.getvalue() and " raw" not in out.getvalue()
