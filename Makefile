# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MediaPipe, the mobile client the TFLite tests check against, pins its own OpenCV: own venv.
MPVENV ?= .venv-mediapipe
MPSTAMP := $(MPVENV)/.installed
# tflite-runtime, the interpreter many Raspberry Pi images ship: its last release needs numpy<2.
TRVENV ?= .venv-tflite-runtime
TRSTAMP := $(TRVENV)/.installed
# OpenCV with windows (opencv-python) for the window test: its own virtualenv, as the main one
# has the headless build and the two must never share one (both install cv2). No torch.
GUIVENV ?= .venv-gui
GUISTAMP := $(GUIVENV)/.installed

.PHONY: demo test preflight install mediapipe-env tflite-runtime-env gui-env gui-tools ssh-tools \
	browser arm-boards clean

demo: $(STAMP)
	$(VENV)/bin/edgepilot demo

# EDGEPILOT_STRICT=1: a test skipped for a missing dependency fails the run (tests/conftest.py);
# only hardware and OS skips stay skips. Two workers, one test file each at a time (pytest-xdist):
# most tests wait on single-threaded converters and child processes, so 2 cores overlap them.
test: $(STAMP) $(MPSTAMP) $(TRSTAMP) $(GUISTAMP) browser ssh-tools gui-tools arm-boards preflight
	$(PY) -m ruff check .
	EDGEPILOT_STRICT=1 $(PY) -m pytest -n 2 --dist loadfile

# Seconds, before the suite: every library the tests need imports (MediaPipe in its own
# virtualenv), or the run stops here naming the one that is missing or broken.
preflight: $(STAMP) $(MPSTAMP) $(TRSTAMP) $(GUISTAMP)
	$(PY) .ci/preflight.py $(MPVENV)/bin/python $(TRVENV)/bin/python $(GUIVENV)/bin/python

# Headless Chromium for the live web page test (Debian package; needs root, as CI is).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed (needs root): the browser test will skip, which strict mode fails"

# sshd and rsync for the `bench --on` / `deploy --to` tests (a real sshd on a localhost port).
ssh-tools:
	@{ [ -x /usr/sbin/sshd ] && command -v rsync >/dev/null; } || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq openssh-server rsync >/dev/null; } || \
		echo "openssh-server/rsync are not installed (needs root): the ssh tests will skip"

# Emulated 64-bit Raspberry Pis for tests/arm: an arm64 Debian root file system run by
# qemu-user, built once (~5-9 min, package set-up runs emulated) and cached in
# /var/cache/edgepilot/arm (EDGEPILOT_ARM_CACHE); needs root, as CI is.
arm-boards:
	@if [ "$$(id -u)" = 0 ]; then tests/arm/board.sh build; else \
		echo "the emulated ARM boards need root: tests/arm will skip, which strict mode fails"; fi

# Xvfb (a virtual screen) and xdotool (key presses) for the window test, and the X and GL
# libraries opencv-python's Qt loads (Debian packages; needs root, as CI is).
gui-tools:
	@{ command -v Xvfb && command -v xdotool && ldconfig -p | grep -q 'libGL\.so\.1 ' && \
		ldconfig -p | grep -q 'libSM\.so\.6 '; } >/dev/null || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq xvfb xdotool libgl1 libglib2.0-0 \
		libsm6 libxext6 >/dev/null; } || \
		echo "xvfb/xdotool are not installed (needs root): the window tests will skip, which strict mode fails"

install: $(STAMP)

# torch==2.13.0 first and pinned: it is the CPU build; an unpinned torch pulls a multi-GB CUDA one.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	touch $(STAMP)

mediapipe-env: $(MPSTAMP)

$(MPSTAMP):
	python3 -m venv $(MPVENV)
	$(MPVENV)/bin/python -m pip install -q --upgrade pip
	$(MPVENV)/bin/python -m pip install -q mediapipe==1.2.3
	touch $(MPSTAMP)

gui-env: $(GUISTAMP)

# The same OpenCV release as the headless pin in constraints.txt, with windows; edgepilot itself
# without its dependencies (which would bring the headless build back).
$(GUISTAMP): pyproject.toml constraints.txt
	python3 -m venv $(GUIVENV)
	$(GUIVENV)/bin/python -m pip install -q --upgrade pip
	$(GUIVENV)/bin/python -m pip install -q -c constraints.txt numpy onnxruntime rich \
		"opencv-python==$$(sed -n 's/^opencv-python-headless==//p' constraints.txt)"
	$(GUIVENV)/bin/python -m pip install -q --no-deps -e .
	touch $(GUISTAMP)

tflite-runtime-env: $(TRSTAMP)

$(TRSTAMP):
	python3 -m venv $(TRVENV)
	$(TRVENV)/bin/python -m pip install -q --upgrade pip
	$(TRVENV)/bin/python -m pip install -q tflite-runtime==2.14.0 'numpy<2'
	touch $(TRSTAMP)

clean:
	rm -rf $(VENV) $(MPVENV) $(TRVENV) $(GUIVENV) runs
