"""ExecuTorch backend: a .pte program run by ExecuTorch's Python runtime (`executorch.runtime`).

That runtime is a torch extension (it takes and returns torch tensors), so this backend, and
only this one, imports torch: `pip install 'edgepilot[executorch]'`. On a phone or a board the
same .pte runs in ExecuTorch's C++ runtime, which needs no torch and no Python.

edgepilot's metadata travels inside the program as a constant method, ``edgepilot_meta``,
that returns the `ModelMeta` JSON (ExecuTorch's own way to carry configuration).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from edgepilot.errors import ModelFileError, require
from edgepilot.runtime.backend import (
    Backend,
    TensorInfo,
    file_errors,
    meta_entry,
    quiet_native_stderr,
)

__all__ = ["ExecuTorchBackend", "META_METHOD", "PTE_IDENTIFIER", "check_header", "read_program"]

#: The constant method that returns the edgepilot ModelMeta JSON.
META_METHOD = "edgepilot_meta"
#: Bytes 4..8 of every .pte: the program flatbuffer's file identifier ("ET" + schema version).
PTE_IDENTIFIER = b"ET"
#: c10::ScalarType codes -> numpy dtypes, for the types an exported vision model uses.
_DTYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16,
           6: np.float32, 7: np.float64, 11: np.bool_}


def read_program(path: Path) -> bytes:
    """The bytes of a .pte, refused before the read when they could not fit in memory (a
    sparse 20 GiB file would otherwise be read whole) or when it is not a regular file."""
    from edgepilot.runtime.model import open_model_file

    with open_model_file(path) as file, file_errors("ExecuTorch", path):
        size = os.fstat(file.fileno()).st_size
        room = memory_room()
        if size > room:
            raise ModelFileError(f"'{path}' is {size / 2**30:.1f} GiB, more than the "
                                 f"{room / 2**30:.1f} GiB of memory this process may use: a "
                                 "corrupt or hostile .pte?")
        declared = declared_size(file.read(64))
        if declared is not None and size > declared + _SLACK:
            raise ModelFileError(f"'{path}' is {size:,} bytes but its header accounts for "
                                 f"{declared:,}: a corrupt or hostile .pte (data after the "
                                 "program and its segments)")
        file.seek(0)
        return file.read(size)


#: Bytes a .pte may hold past what its extended header accounts for (alignment padding).
_SLACK = 1 << 16


def declared_size(head: bytes) -> int | None:
    """The bytes a .pte's extended header ("eh00" at byte 8) says the program and its
    segments span, or None when the header does not say (no header, or an old one without
    the segments' size)."""
    if len(head) < 40 or head[8:12] != b"eh00":
        return None
    length = int.from_bytes(head[12:16], "little")
    program = int.from_bytes(head[16:24], "little")
    base = int.from_bytes(head[24:32], "little")
    if length < 32:  # no segment data size in this header
        return None
    segments = int.from_bytes(head[32:40], "little")
    return max(program, base + segments if base else 0)


def planned_bytes(data: bytes) -> int:
    """Bytes of working memory the program's "forward" plan asks ExecuTorch to allocate (its
    non_const_buffer_sizes), read with the bounded flatbuffer reader before anything is
    allocated. 0 when the table cannot be read: the loader's own checks then report it."""
    from flatbuffers import number_types

    from edgepilot.runtime.flatbuffer import _root

    try:
        for plan in _root(data).tables(1):  # Program.execution_plan
            if plan.string(0) == "forward":  # ExecutionPlan.name
                start, count = plan.vector(8, limit=1024)  # non_const_buffer_sizes
                return sum(max(0, plan.t.Get(number_types.Int64Flags, start + 8 * i))
                           for i in range(count))
    except Exception:  # noqa: BLE001 - unreadable here; ExecuTorch's verifier says why
        return 0
    return 0


def memory_room() -> int:
    """Bytes this process could still take: the memory the machine has available (Linux's
    MemAvailable; elsewhere all of it), or less where the address space is capped
    (RLIMIT_AS, less what this process has mapped already)."""
    import resource

    room = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo.read(1 << 16).splitlines():
                if line.startswith(b"MemAvailable:"):
                    room = min(room, int(line.split()[1]) << 10)
    except (OSError, ValueError, IndexError):
        pass
    cap = resource.getrlimit(resource.RLIMIT_AS)[0]
    if cap == resource.RLIM_INFINITY:
        return room
    try:
        with open("/proc/self/statm", "rb") as statm:  # first field: pages mapped
            cap -= int(statm.read(256).split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return max(0, min(room, cap))


def method_list(names) -> str:
    """A program's method names for an error line: quoted and escaped (they come from the
    file, so they may hold line breaks or escape codes), at most eight."""
    names = sorted(names)
    shown = ", ".join(repr(name)[:60] for name in names[:8])
    return (shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")) or "none"


def check_header(data: bytes, path: Path) -> None:
    """Refuse what is not an ExecuTorch program before the native loader sees it."""
    if len(data) < 8 or data[4:6] != PTE_IDENTIFIER or not data[6:8].isdigit():
        raise ModelFileError(f"'{path}' is not an ExecuTorch program (no 'ET' file identifier "
                             "at byte 4): export one with formats=executorch")


#: What a child process does with a .pte before this process touches it (see `vet`).
_VET = """
import sys, warnings
warnings.simplefilter("ignore")
import torch
from executorch.runtime import Runtime
program = Runtime.get().load_program(sys.stdin.buffer.read())
for name in program.method_names:
    method = program.load_method(name)
    meta = program.metadata(name)
    if meta.num_inputs() == 0:
        method.execute([])
        continue
    dtypes = {0: torch.uint8, 1: torch.int8, 3: torch.int32, 4: torch.int64, 6: torch.float32}
    shapes = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
    if all(t.dtype() in dtypes and sum(t.nbytes() for t in shapes) < 1 << 30 for t in shapes):
        method.execute([torch.zeros(tuple(t.sizes()), dtype=dtypes[t.dtype()]) for t in shapes])
"""
#: Seconds a child may take to load and run a program once.
VET_TIMEOUT = 120
_VETTED: set[bytes] = set()  # sha256 of programs a child loaded and ran without crashing


def vet(data: bytes, path: Path) -> None:
    """Load and run the program `data` (read from `path`) once in a child process first.
    ExecuTorch's C++ runtime aborts the whole process (ET_CHECK) on some corrupt programs
    instead of raising; a child that dies that way costs nothing, this process would be lost.
    A clean failure in the child is left for the in-process load to report with its own
    message.

    The child gets the bytes on stdin, not the path: a file swapped after this process read it
    would otherwise be checked in place of what is loaded. It runs isolated (``-I``): neither
    the current folder nor PYTHONPATH is on its import path, so a ``torch.py`` lying where the
    user works is never imported."""
    import signal
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-I", "-c", _VET], input=data,
                              capture_output=True, timeout=VET_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        raise ModelFileError(f"ExecuTorch did not load and run '{path}' within {VET_TIMEOUT} "
                             "s: a corrupt or hostile .pte?") from err
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise ModelFileError(f"ExecuTorch crashes on '{path}' ({name} while loading or "
                             "running it): a corrupt or hostile .pte; refusing to load it")


def runtime():
    """ExecuTorch's Runtime singleton; importing it loads torch and the native kernels, whose
    start-up notices (cpuinfo, torchao) are held back."""
    require("torch", "executorch", "Running .pte models (ExecuTorch's Python runtime is a "
            "torch extension)")
    module = require("executorch.runtime", "executorch", "Running .pte models")
    with quiet_native_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.Runtime.get()


def _info(name: str, meta) -> TensorInfo:
    dtype = _DTYPES.get(meta.dtype())
    if dtype is None:
        raise ModelFileError(f"tensor '{name}' has ExecuTorch scalar type {meta.dtype()}, "
                             "which edgepilot does not feed")
    return TensorInfo(name, tuple(int(d) for d in meta.sizes()), np.dtype(dtype))


_loaded = False  # whether a program was loaded in this process (its delegates hold the pool)


def _thread_pool(native, threads: int | None) -> int:
    """Size ExecuTorch's process-wide thread pool, if no program was loaded before: resizing
    it under a loaded XNNPACK delegate aborts the process. Returns the pool's size."""
    global _loaded
    if threads and not _loaded and threads != native._threadpool_get_thread_count():
        native._unsafe_reset_threadpool(threads)
    _loaded = True
    return native._threadpool_get_thread_count()


class ExecuTorchBackend(Backend):
    """Runs the ``forward`` method of a .pte with ExecuTorch's Python runtime.

    Args:
        path: the .pte file.
        vetted: skip loading it in a child process first (see `vet`): only for files
            you made yourself.
        threads: size of ExecuTorch's CPU thread pool (XNNPACK's kernels). The pool is one
            per process and can be sized only before the first program is loaded (resizing
            it under a loaded delegate aborts the process); `backend` says what it is.
    """

    def __init__(self, path: Path, *, threads: int | None = None,
                 vetted: bool = False) -> None:
        path = Path(path)
        data = read_program(path)
        check_header(data, path)
        planned, room = planned_bytes(data), memory_room()
        if planned > room:  # refused before ExecuTorch tries to allocate it
            raise ModelFileError(f"'{path}' plans {planned / 2**30:.1f} GiB of working memory, "
                                 f"more than the {room / 2**30:.1f} GiB this process may take: "
                                 "a corrupt or hostile .pte?")
        digest = hashlib.sha256(data).digest()
        if not vetted and digest not in _VETTED:  # once per content and process
            vet(data, path)
            _VETTED.add(digest)
        rt = runtime()
        import executorch.extension.pybindings.portable_lib as native
        import torch

        self._torch = torch
        with file_errors("ExecuTorch", path), quiet_native_stderr():
            pool = _thread_pool(native, threads)  # before any delegate holds the pool
            # InternalConsistency (the default) verifies the flatbuffer before using it.
            self.program = rt.load_program(data)
            if "forward" not in self.program.method_names:
                raise ModelFileError(f"'{path}' has no 'forward' method (it has "
                                     f"{method_list(self.program.method_names)})")
            spec = self.program.metadata("forward")
            self.inputs = [_info(f"input{i or ''}", spec.input_tensor_meta(i))
                           for i in range(spec.num_inputs())]
            self.outputs = [_info(f"output{i or ''}", spec.output_tensor_meta(i))
                            for i in range(spec.num_outputs())]
            self.method = self.program.load_method("forward")
            self.meta_json = None
            if META_METHOD in self.program.method_names:
                [text] = self.program.load_method(META_METHOD).execute([])
                if not isinstance(text, str):
                    raise ModelFileError(f"'{path}': its {META_METHOD} method returns "
                                         f"{type(text).__name__}, not the metadata text")
                self.meta_json = meta_entry(text)
            delegates = rt.backend_registry.registered_backend_names
        from executorch.version import __version__

        uses = "XNNPACK" if b"XnnpackBackend" in data else "portable kernels"
        fixed = "" if not threads or threads == pool else \
            f"; asked for {threads}, but the pool is sized once per process"
        self.description = (f"executorch {__version__} ({uses}, {pool} threads{fixed}"
                            f"{'' if 'XnnpackBackend' in delegates else '; XNNPACK missing'})")

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # from_numpy shares memory; the runtime copies its outputs out of its arenas.
        outputs = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x))
                                       for x in inputs])
        return [y.numpy() for y in outputs]
