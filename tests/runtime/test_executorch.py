"""The child process that checks a .pte before this process loads it (runtime/executorch.py
`vet`): it must run isolated from the current folder, and check the very bytes that are then
loaded here (issue 30, findings 1 and 5)."""

import os

import pytest

import edgepilot
import edgepilot.runtime.executorch as backend
from edgepilot.errors import ModelFileError

#: The 8-byte header of a .pte (file identifier ET12 at byte 4), then nothing a runtime accepts.
NOT_A_PROGRAM = b"\x00\x00\x00\x00ET12" + bytes(56)


def test_a_torch_py_in_the_current_folder_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "torch.py").write_text(f"open({str(marker)!r}, 'w').write('owned')\n")
    (folder / "executorch.py").write_text(f"open({str(marker)!r}, 'w').write('owned')\n")
    (folder / "model.pte").write_bytes(NOT_A_PROGRAM)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PYTHONPATH", str(folder))  # -I ignores it too
    with pytest.raises(ModelFileError):
        edgepilot.load("model.pte")
    assert not marker.exists(), "a module from the current folder ran in the checking child"


def test_the_child_checks_the_bytes_that_are_loaded_not_the_file_again(tmp_path, monkeypatch):
    # The file holds a harmless program while this process reads it, then is swapped for a
    # hostile one: the child must see the bytes this process read, never a second read.
    pytest.importorskip("torch")
    pytest.importorskip("executorch.runtime")
    path = tmp_path / "model.pte"
    hostile = NOT_A_PROGRAM + b"HOSTILE"
    path.write_bytes(hostile)
    check_header = backend.check_header

    def swap_after_reading(data, where):  # runs after this process has read the file
        check_header(data, where)
        path.write_bytes(NOT_A_PROGRAM)  # what a second read would find

    monkeypatch.setattr(backend, "check_header", swap_after_reading)
    # A checking child that dies on the hostile bytes, as ExecuTorch's runtime does on some.
    monkeypatch.setattr(backend, "_VET", (
        "import os, sys\n"
        "data = open(sys.argv[1], 'rb').read() if len(sys.argv) > 1 else "
        "sys.stdin.buffer.read()\n"
        "if b'HOSTILE' in data:\n    os.abort()\n"))
    with pytest.raises(ModelFileError, match="SIGABRT") as info:
        edgepilot.load(path)
    assert "\n" not in str(info.value) and os.fspath(path) in str(info.value)


@pytest.mark.parametrize("call", ["load", "info"])
def test_a_huge_program_is_refused_before_it_is_read(tmp_path, call):
    # Found by the fuzzer (issue 30): a 20 GiB (sparse) .pte was read whole before any check,
    # a MemoryError where memory is capped, the whole machine's memory where it is not. Here
    # 1 TiB (sparse): more than any machine that runs this has free.
    from edgepilot.info import inspect_model

    path = tmp_path / "model.pte"
    path.write_bytes(NOT_A_PROGRAM)
    os.truncate(path, 1 << 40)
    with pytest.raises(ModelFileError, match="GiB") as info:
        (edgepilot.load if call == "load" else inspect_model)(path)
    assert "\n" not in str(info.value) and os.fspath(path) in str(info.value)


def test_a_program_that_is_not_a_file_is_refused_not_waited_on(tmp_path):
    path = tmp_path / "model.pte"
    os.mkfifo(path)
    with pytest.raises(ModelFileError, match="not a regular file"):
        edgepilot.load(path)
