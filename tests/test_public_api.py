"""The public surface and import hygiene: the runtime never imports torch."""

import subprocess
import sys

import edgepilot

HEAVY = ("torch", "onnx", "onnxscript", "tensorflow", "litert_torch", "jax")


def test_public_api_is_pinned():
    assert sorted(edgepilot.__all__) == sorted([
        "FORMATS", "EdgepilotError", "Format", "InputError", "MissingDependencyError", "Model",
        "ModelFileError", "ModelMeta", "Prediction", "UnknownArchitectureError",
        "UnsupportedFormatError", "__version__", "benchmark", "export", "load",
    ])
    for name in edgepilot.__all__:
        assert hasattr(edgepilot, name), name


def test_export_is_callable_although_it_is_a_subpackage():
    import edgepilot.export as subpackage

    assert subpackage is edgepilot.export
    assert callable(edgepilot.export)


def _imported_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_importing_edgepilot_and_runtime_imports_no_heavy_framework():
    for statement in ("import edgepilot", "import edgepilot.runtime",
                      "import edgepilot.devices", "import edgepilot.cli",
                      "import edgepilot.info", "import edgepilot.live.webcam"):
        modules = _imported_after(statement)
        assert "edgepilot" in modules  # the probe itself works
        loaded = [m for m in HEAVY if m in modules]
        assert not loaded, f"'{statement}' imported {loaded}"


def test_loading_and_running_an_onnx_model_imports_no_torch():
    # The shipped model: what a runtime-only install (no torch to build a file) has to run.
    from edgepilot.assets import shipped_model

    code = (f"import edgepilot, numpy as np; m = edgepilot.load({str(shipped_model())!r}); "
            "m.predict(np.zeros((40, 50, 3), np.uint8))")
    modules = _imported_after(code)
    assert "onnxruntime" in modules
    assert "torch" not in modules
