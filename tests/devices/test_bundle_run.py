"""A bundle's run.py is edgepilot/bundle_run.py, copied (issue 34): the live loop on the synthetic
street runs from the bundle's own edgepilot/ folder with neither torch nor the training code
importable. (tests/devices/test_bundles.py runs the same in a venv of the bundle's
requirements alone, from PyPI.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgepilot.assets import shipped_model
from edgepilot.deploy import write_bundle

#: Runs a bundle's run.py as `python run.py ARGS` would, with torch and edgepilot.train made
#: unimportable, and says at exit where edgepilot was imported from.
CHILD = """
import atexit, importlib.abc, runpy, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "edgepilot.train")):
            raise ImportError(f"{name} is not in a bundle")

sys.meta_path.insert(0, Refuse())
atexit.register(lambda: print("edgepilot from", sys.modules["edgepilot"].__file__,
                              file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle([shipped_model("stoplight")], tmp_path_factory.mktemp("b") / "bundle")


def _run(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", CHILD, str(bundle / "run.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=bundle.parent)


def test_run_py_is_the_module_edgepilot_tests(bundle):
    source = Path(__file__).parents[2] / "edgepilot" / "bundle_run.py"
    assert (bundle / "run.py").read_bytes() == source.read_bytes()


def test_the_synthetic_street_runs_without_torch_or_training_code(bundle):
    done = _run(bundle, "--source", "synthetic", "--frames", "12", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout)
    assert state["model"] == "stoplight.onnx" and state["processed"] >= 1
    assert state["label"] in ("red", "yellow", "green", "none")
    assert f"edgepilot from {bundle / 'edgepilot' / '__init__.py'}" in done.stderr


def test_classifying_an_image_needs_nothing_else_either(bundle, tmp_path):
    import cv2

    from edgepilot.draw import stoplight

    image = stoplight.render_scene(__import__("numpy").random.default_rng(3),
                                   stoplight.LABELS.index("green"), 96, 96)
    path = tmp_path / "green.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    done = _run(bundle, str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\t")[1] == "green"


@pytest.mark.parametrize("args, needle", [
    (["--source", "synthetic"], "give --frames N"),
    (["--source", "synthetic", "--frames", "0"], "--frames takes 1 or more"),
    ([], "give images to classify"),
])
def test_a_half_given_command_says_what_is_missing(bundle, args, needle):
    done = _run(bundle, *args)
    assert done.returncode == 2 and needle in done.stderr, done.stderr


def test_a_gpu_bundle_says_that_its_pins_run_on_the_cpu(tmp_path):
    # Issue 35: the jetson bundle pins PyPI's onnxruntime (CPU only) while its profile names
    # TensorRT and CUDA: the bundle's README says which is which, and how to get the GPU.
    from edgepilot.devices.profiles import profile_by_name

    jetson = profile_by_name("jetson")
    bundle = write_bundle([shipped_model("stoplight")], tmp_path / "b", profile=jetson)
    readme = (bundle / "README.md").read_text()
    assert "runs on the CPU only" in readme and "TensorrtExecutionProvider" in readme
    assert "JetPack" in readme
    cpu = write_bundle([shipped_model("stoplight")], tmp_path / "c",
                       profile=profile_by_name("x86"))
    assert "CPU only" not in (cpu / "README.md").read_text()
