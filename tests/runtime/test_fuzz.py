"""A small share of the fuzz run (benchmarks/fuzz_models.py runs >= 1,000 files per format):
mutated .onnx and .tflite files through `load` and `predict`, .pte files through `info` and
`load` + `predict`, .mlpackage folders through `info`, `deploy`'s bundle and `load`, in capped
worker processes. Every file must end in success or a one-line edgepilot error: no crash, no
hang, no other exception type, no refusal caused by running out of memory, and the workers'
peak memory stays under its bound.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from edgepilot.assets import shipped_model

PER_FORMAT = 80
#: The README's bound on a worker's peak RSS while it reads hostile files (onnxruntime and
#: LiteRT loaded: ~130 MiB of it).
PEAK_RSS_MIB = 512
#: Files per format exported here: one of each .pte mutation (each loads torch afresh in the
#: vetting child, seconds of CPU), three of each .mlpackage one (a fraction of a second).
NEW_FORMATS = {"pte": 15, "mlpackage": 33}


def _fuzz_module():
    path = Path(__file__).parents[2] / "benchmarks" / "fuzz_models.py"
    spec = importlib.util.spec_from_file_location("fuzz_models", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz():
    return _fuzz_module()


def test_mutated_model_files_end_in_edgepilot_errors(fuzz, tiny_tflite, tmp_path):
    pytest.importorskip("onnx")  # writes the metadata rewrites of the .onnx mutants
    seeds = {"onnx": [shipped_model("stoplight")],
             "tflite": [Path(tiny_tflite["fp32"]), Path(tiny_tflite["int8"])]}
    # A generous timeout: a hang is a file that never finishes, not a slow machine.
    summary = fuzz.fuzz(seeds, PER_FORMAT, tmp_path, workers=2, timeout=120)
    findings = [f"{f['format']} {f['kind']} {f['outcome']} {f['error']}: {f['message'][:200]}"
                for f in summary["findings"]]
    assert not findings, "\n".join(findings)
    for counts in summary["formats"].values():
        assert counts["files"] == PER_FORMAT
        assert counts.get("edgepilot", 0) > PER_FORMAT // 2, counts  # most mutants are refused
        assert counts["peak_rss_mib"] < PEAK_RSS_MIB, counts
    # Every kind of mutation took part, and the targeted ones were refused for their reason.
    onnx, tflite = summary["formats"]["onnx"], summary["formats"]["tflite"]
    assert set(onnx["kinds"]) == set(fuzz.Mutator("onnx", b"", {"layout": "NCHW"}, 0).kinds)
    assert set(tflite["kinds"]) == set(fuzz.Mutator("tflite", b"", {"layout": "NHWC"}, 0).kinds)
    assert any("refusing to load" in m for m in onnx["examples"]["external"])
    assert any("more than 16,777,216" in m for m in tflite["examples"]["zip"])  # the bombs


def test_a_worker_that_dies_or_hangs_is_recorded_not_fatal(fuzz, tmp_path, monkeypatch):
    """The harness itself: a file that kills its worker (a crash) or never finishes (a hang)
    is counted against that file, and the next file still runs. A hung worker is ended with
    what it started (as a .pte worker starts a vetting child)."""
    crash, hang, fine = (tmp_path / n for n in ("crash.onnx", "hang.onnx", "fine.onnx"))
    for path in (crash, hang, fine):
        path.write_bytes(b"")
    child = tmp_path / "child.pid"
    worker = fuzz.WORKER.replace(
        "    result = {\"path\": path}\n",
        "    result = {\"path\": path}\n"
        "    if path.endswith('crash.onnx'): os.kill(os.getpid(), 9)\n"
        "    if path.endswith('hang.onnx'):\n"
        "        import subprocess\n"
        "        sleeper = subprocess.Popen(['sleep', '3600'])\n"
        f"        open({str(child)!r}, 'w').write(str(sleeper.pid))\n"
        "        sleeper.wait()\n")
    assert worker != fuzz.WORKER
    monkeypatch.setattr(fuzz, "WORKER", worker)
    results = fuzz.run_files([("onnx", "t", crash), ("onnx", "t", hang), ("onnx", "t", fine)],
                             workers=1, timeout=20, log_dir=tmp_path)
    outcomes = {Path(r.path).name: r.outcome for r in results}
    assert outcomes == {"crash.onnx": "crash", "hang.onnx": "hang", "fine.onnx": "edgepilot"}
    assert not _running(int(child.read_text())), "the hung worker's child outlived it"


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie left for init to reap does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def exported_seeds(fuzz, trained_tiny, tiny_meta, tmp_path_factory):
    """`trained_tiny` as .pte and .mlpackage, the same bytes on every run."""
    pytest.importorskip("executorch.runtime")
    pytest.importorskip("coremltools")
    return fuzz.export_seeds(trained_tiny[0], tiny_meta, tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(NEW_FORMATS))
def test_mutated_pte_and_mlpackage_files_end_in_one_line_edgepilot_errors(
        fuzz, exported_seeds, fmt, tmp_path):
    cases = NEW_FORMATS[fmt]
    # A generous timeout (a .pte gets the vetting child's on top): a hang is a file that
    # never finishes, not a slow machine.
    summary = fuzz.fuzz({fmt: exported_seeds[fmt]}, cases, tmp_path, workers=2, timeout=120)
    findings = [f"{f['kind']} {f['outcome']} {f['error']}: {f['message'][:200]} "
                f"[{f['mutation']}]" for f in summary["findings"]]
    assert not findings, "\n".join(findings)
    counts = summary["formats"][fmt]
    assert counts["files"] == cases
    assert counts.get("edgepilot", 0) > cases // 2, counts  # most mutants are refused
    assert counts["peak_rss_mib"] < fuzz.RSS_BOUND_MIB[fmt], counts
    # Every kind of mutation took part ("special (no mknod)" where mknod is not permitted).
    mutator = {"pte": fuzz.PteMutator, "mlpackage": fuzz.PackageMutator}[fmt]
    assert {kind.split(" (")[0] for kind in counts["kinds"]} == set(mutator.kinds)
    if fmt == "mlpackage" and sys.platform != "darwin":  # Core ML cannot run here: one line
        load = counts["surfaces"]["load"]
        assert set(load["outcomes"]) == {"edgepilot"}, load
        assert any("needs macOS" in refusal for refusal in load["refusals"]), load
