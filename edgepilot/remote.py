"""Your own boards over ssh: copy a bundle (rsync, or scp where rsync is missing), install it
in a venv there, run the benchmark there and bring the JSON back.

Hosts are what ssh takes (``pi@raspberrypi.local``, or a ``Host`` alias from your ssh config),
optionally with a folder: ``pi@pi5:bundles/stoplight``. ssh runs in batch mode (keys, no
password prompts); ``EDGEPILOT_SSH_CONFIG`` names an ssh config file to use instead of
``~/.ssh/config``. The remote side needs ``python3`` with ``venv`` (Debian: python3-venv).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgepilot.errors import EdgepilotError, InputError

__all__ = ["RemoteError", "Remote", "parse_remote", "copy_bundle", "install_bundle",
           "bench_on", "DEFAULT_FOLDER"]

DEFAULT_FOLDER = "edgepilot-bench"  # under the remote home when a host names no folder
CONNECT_TIMEOUT_S = 15
INSTALL_TIMEOUT_S = 1800  # a Pi Zero building a venv from piwheels is slow
BENCH_TIMEOUT_S = 900


class RemoteError(EdgepilotError):
    """An ssh host that cannot be reached, copied to, installed on or benchmarked."""


@dataclass(frozen=True)
class Remote:
    """``host`` as ssh takes it (user@name, an alias, user@::1) and the folder there, relative
    to the remote home or absolute (never the home or / itself)."""

    host: str
    folder: str

    def __str__(self) -> str:
        return self.host

    @property
    def target(self) -> str:
        """The host as rsync and scp take it before ``:folder`` (an IPv6 address in brackets)."""
        user, at, name = self.host.rpartition("@")
        return f"{user}{at}[{name}]" if ":" in name else self.host


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a user, host name or ssh alias
_FOLDER = re.compile(r"[A-Za-z0-9_.,+@%/-]+")  # nothing a remote shell would expand


def parse_remote(spec: str, *, default_folder: str | None = DEFAULT_FOLDER) -> Remote:
    """``user@host[:folder]`` or ``user@[ipv6]:folder`` -> Remote. A folder is required when
    `default_folder` is None. ``~/x`` is ``x`` in the remote home; the home itself, ``/``,
    ``..`` and option-like folders are refused."""
    bracketed = re.fullmatch(r"(?:([^@\[\]]*)@)?\[([0-9A-Fa-f:.]+)\](?::(.*))?", spec)
    if bracketed:
        user, name, folder = bracketed.groups()
    else:
        where, _, folder = spec.partition(":")
        user, at, name = where.rpartition("@")
        user, name = (user if at else None), (name if _NAME.fullmatch(name) else "")
    if not name or (user is not None and not _NAME.fullmatch(user)):
        raise InputError(f"{spec!r} is not an ssh host: give user@host, user@host:folder or "
                         "user@[ipv6]:folder")
    host = f"{user}@{name}" if user else name
    if not folder:
        if default_folder is None:
            raise InputError(f"{spec!r} names no folder: give user@host:folder")
        folder = default_folder
    return Remote(host, _check_folder(folder, spec))


def _check_folder(folder: str, spec: str) -> str:
    if folder.startswith("~/"):  # ssh starts in the home folder: the same place, unexpanded
        folder = folder[2:]
    clean = posixpath.normpath(folder) if folder else ""
    if not _FOLDER.fullmatch(folder) or clean in (".", "/", "//") or clean.startswith("-") or \
            ".." in clean.split("/"):
        raise InputError(
            f"{spec!r}: the folder {folder!r} cannot hold a bundle: give a folder of its own "
            "below the home folder or an absolute one (letters, digits and . _ - + @ % , /; "
            "not ~, /, . or .., not starting with -), e.g. user@host:edgepilot/stoplight")
    return clean


def _ssh_options() -> list[str]:
    options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
    config = os.environ.get("EDGEPILOT_SSH_CONFIG")
    return (["-F", config] if config else []) + options


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RemoteError(f"'{name}' is not installed here (Debian/Ubuntu: apt-get install "
                          f"{'openssh-client' if name in ('ssh', 'scp') else name})")
    return path


#: The most a remote command may print before it is stopped: a bench report is a few KB.
MAX_OUTPUT = 4 << 20


def _run(command: list[str], what: str, remote: Remote, timeout: float,
         stdin: bytes = b"") -> str:
    """Run `command` with `stdin`; its stdout (at most MAX_OUTPUT bytes, or a RemoteError)."""
    import tempfile

    # Output goes to files, not pipes: what a board prints is bounded by size, not memory.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err)
        except OSError as error:
            raise RemoteError(f"{remote}: {what} failed: {error}") from error
        try:
            _feed_and_wait(process, stdin, out, timeout)
        except subprocess.TimeoutExpired as error:
            process.kill()
            process.wait()
            raise RemoteError(f"{remote}: {what} took more than {timeout:.0f} s") from error
        except OverflowError as error:
            process.kill()
            process.wait()
            raise RemoteError(f"{remote}: {what} printed more than {MAX_OUTPUT >> 20} MB; "
                              "stopped it (is that an edgepilot bundle there?)") from error
        err.seek(0)
        stderr = err.read(MAX_OUTPUT).decode(errors="replace")
        if process.returncode != 0:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"exit code {process.returncode}"
            if process.returncode == 255 and command[0].endswith("ssh"):
                reason = f"ssh failed: {reason}"
            raise RemoteError(f"{remote}: {what} failed: {reason}")
        out.seek(0)
        return out.read().decode(errors="replace")


def _feed_and_wait(process: subprocess.Popen, stdin: bytes, out, timeout: float) -> None:
    """Write `stdin`, then wait for the process, checking the size of its output file."""
    import time

    try:
        process.stdin.write(stdin)
        process.stdin.close()
    except BrokenPipeError:
        pass  # it did not read its input; its exit code says what happened
    deadline = time.monotonic() + timeout
    while True:
        try:
            process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                raise
        if os.fstat(out.fileno()).st_size > MAX_OUTPUT:
            raise OverflowError
        if process.returncode is not None:
            return


def ssh(remote: Remote, script: str, what: str, timeout: float = 120,
        stdin: bytes = b"") -> str:
    """Run a shell `script` on `remote`; its stdout, or a RemoteError with the last line of
    stderr."""
    return _run([_tool("ssh"), *_ssh_options(), remote.host, script], what, remote, timeout,
                stdin)


#: The file in a remote folder that lists what edgepilot wrote there. A folder is edgepilot's
#: to change only while it holds nothing else: what the manifest lists, itself and ``.venv``.
MANIFEST = ".edgepilot-manifest.json"

#: Run on the board (``python3 -I``): claim the folder for the bundle whose files come on
#: stdin, or refuse. Removes only files the old manifest lists that the new bundle lacks.
_CLAIM = r"""
import json, os, platform, struct, sys
if struct.calcsize("P") == 4 and platform.machine().startswith("arm"):
    sys.exit("ARM32 " + platform.machine())
folder, manifest, files = sys.argv[1], sys.argv[2], set(json.load(sys.stdin))
os.makedirs(folder, exist_ok=True)
if os.path.islink(folder) or not os.path.isdir(folder):
    sys.exit(f"REFUSED {folder} is not a folder")
path = os.path.join(folder, manifest)
owned, ours = set(), os.path.lexists(path)
if ours:
    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
        sys.exit(f"REFUSED {path} is not a manifest edgepilot wrote")
    with open(path) as f:
        owned = {p for p in json.load(f).get("files", []) if isinstance(p, str)}
strangers = []
for root, dirs, names in os.walk(folder):
    rel = os.path.relpath(root, folder)
    if rel == "." and ours and ".venv" in dirs:
        dirs.remove(".venv")  # the venv edgepilot made here
    if "__pycache__" in dirs:
        dirs.remove("__pycache__")  # bytecode Python wrote for the bundle's modules; kept
    for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
        entry = os.path.normpath(os.path.join(rel, name))
        if entry not in owned and not (ours and entry == manifest):
            strangers.append(entry)
    if len(strangers) >= 3:
        break
if strangers:
    sys.exit("REFUSED " + json.dumps(strangers[:3]))
for entry in sorted(owned - files):
    stale = os.path.join(folder, entry)
    if os.path.islink(stale) or os.path.isfile(stale):
        os.remove(stale)
temporary = path + ".tmp"
with open(temporary, "w") as f:
    json.dump({"written_by": "edgepilot", "files": sorted(files), "also": [".venv"]}, f)
os.replace(temporary, path)
print("claimed")
"""


def claim_folder(remote: Remote, files: Sequence[str]) -> None:
    """Make ``remote.folder`` edgepilot's for a bundle of `files` (paths relative to it), or
    refuse: a folder may be new, empty, or hold only what edgepilot wrote there (its
    manifest says what). Nothing edgepilot did not write is ever changed or deleted."""
    command = shlex.join(["python3", "-I", "-c", _CLAIM, remote.folder, MANIFEST])
    try:
        ssh(remote, command, "checking the folder", stdin=json.dumps(list(files)).encode())
    except RemoteError as err:
        text = str(err)
        if "ARM32 " in text:
            raise RemoteError(
                f"{remote}: the board runs a 32-bit OS ({text.split('ARM32 ', 1)[1]}): "
                "numpy, onnxruntime, ai-edge-litert and OpenCV publish no 32-bit ARM wheels; "
                "install the 64-bit Raspberry Pi OS (Raspberry Pi Imager: 'Raspberry Pi OS "
                "(64-bit)')") from None
        if "REFUSED" not in text:
            raise
        strangers = text.split("REFUSED ", 1)[1]
        raise RemoteError(
            f"{remote}: '{remote.folder}' holds files edgepilot did not write ({strangers}); "
            "nothing was changed: give a new or empty folder, or one an earlier "
            "deploy/bench wrote") from None


def _bundle_files(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in Path(bundle).rglob("*")
                  if p.is_file() and ".venv" not in p.relative_to(bundle).parts)


def copy_bundle(bundle: Path, remote: Remote, *, log: Callable[[str], None] = print) -> str:
    """Copy a bundle folder to ``remote.folder``, after claiming it (`claim_folder`); returns
    the tool used. rsync sends only what changed and leaves the remote venv in place; scp
    copies everything."""
    claim_folder(remote, _bundle_files(bundle))
    found = ssh(remote, "command -v rsync || true", "looking for rsync")
    destination = f"{remote.target}:{remote.folder}/"
    if shutil.which("rsync") and found.strip():
        shell = shlex.join([_tool("ssh"), *_ssh_options()])
        _run([_tool("rsync"), "-a", "--exclude", ".venv", "-e", shell, "--", f"{bundle}/",
              destination], "rsync", remote, 600)
        return "rsync"
    log(f"{remote}: rsync is missing {'there' if shutil.which('rsync') else 'here'}; "
        "copying with scp")
    files = [str(p) for p in sorted(Path(bundle).iterdir()) if p.name != ".venv"]
    _run([_tool("scp"), "-q", "-r", *_ssh_options(), "--", *files, destination],
         "scp", remote, 600)
    return "scp"


def install_bundle(remote: Remote, requirements: str, *, python: str = "python3") -> str:
    """Create ``.venv`` in the remote folder and install the bundle's requirements there,
    unless the venv already holds exactly these requirements. Returns what was done."""
    pins = [ln.strip() for ln in requirements.splitlines() if ln.strip()
            and not ln.lstrip().startswith("#")]
    digest = hashlib.sha256("\n".join(pins).encode()).hexdigest()
    folder = shlex.quote(remote.folder)
    script = (
        f"cd {folder} && "
        f"if [ \"$(cat .venv/.edgepilot-requirements 2>/dev/null)\" = {digest} ]; then "
        "echo reused; exit 0; fi; "
        f"rm -rf .venv && {shlex.quote(python)} -m venv .venv && "
        # --no-compile: Python compiles what run.py imports at its first run; compiling every
        # file of numpy and OpenCV up front costs minutes on a small board (or an emulator).
        ".venv/bin/python -m pip install -q --disable-pip-version-check --no-compile "
        "-r requirements.txt 1>&2 && "
        f"echo {digest} > .venv/.edgepilot-requirements && echo installed")
    return ssh(remote, script, "installing the bundle's requirements",
               INSTALL_TIMEOUT_S).strip().splitlines()[-1]


def bench_on(remotes: Sequence[Remote], models: Sequence[Path], *, runs: int,
             threads: int | None, workdir: Path,
             log: Callable[[str], None] = print) -> list:
    """Benchmark `models` on each host; a `BenchResult` per model and host, or one failed row
    per host that could not run (with the reason). Hosts run one after another: each one's
    numbers are then its own, not a share of this machine's network and CPU."""
    from edgepilot.bench import BenchResult
    from edgepilot.deploy import write_bundle

    bundle = write_bundle([Path(m) for m in models], workdir / "bench-bundle", threads=threads)
    requirements = (bundle / "requirements.txt").read_text()
    rows: list[BenchResult] = []
    for remote in remotes:
        try:
            log(f"{remote}: copying the bundle to {remote.folder}")
            copy_bundle(bundle, remote, log=log)
            log(f"{remote}: {install_bundle(remote, requirements)} the runtime in "
                f"{remote.folder}/.venv")
            command = f"cd {shlex.quote(remote.folder)} && .venv/bin/python run.py --bench " \
                      f"--json --runs {int(runs)}"
            if threads:
                command += f" --threads {int(threads)}"
            log(f"{remote}: benchmarking")
            report = _parse_report(ssh(remote, command, "the benchmark", BENCH_TIMEOUT_S),
                                   remote)
        except EdgepilotError as err:
            rows.append(BenchResult(model=f"{', '.join(Path(m).name for m in models)} @ {remote}",
                                    format="-", threads=threads, host=str(remote),
                                    error=str(err)))
            continue
        description = _describe(report.get("host"), report.get("machine"))
        for row in report["results"]:
            row.host, row.host_description = str(remote), description
            row.model = f"{row.model} @ {remote}"
            rows.append(row)
    return rows


# What a board's report may hold, field by field: it is checked, never trusted (a board may
# run anything under the name of run.py).
_TEXT = ("model", "format", "backend", "metric", "error")
_NUMBERS = ("size_bytes", "runs", "throughput", "cpu_ms", "auto_threads", "load_ms",
            "first_ms", "peak_rss_mb", "memory_mb", "accuracy", "map50_95", "n_data",
            "skipped_data")
_NUMBER_MAPS = ("latency_ms", "thread_sweep_ms", "pipeline_ms", "samples_ms")
_LATENCY = ("min", "p50", "p90", "p99", "mean", "std")
_MAX_TEXT = 2000


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _field_problem(key: str, value) -> str | None:
    """Why `value` cannot be the BenchResult field `key`; None when it can."""
    if value is None:
        return None if key not in ("model", "format") else f"has no {key}"
    if key in _TEXT:
        ok = isinstance(value, str) and len(value) <= _MAX_TEXT
    elif key in _NUMBERS:
        ok = _number(value)
    elif key == "samples_ms":
        ok = isinstance(value, list) and len(value) <= 1_000_000 and all(map(_number, value))
    elif key in _NUMBER_MAPS:
        ok = isinstance(value, dict) and len(value) <= 64 and all(
            isinstance(k, str) and len(k) <= 64 and _number(v) for k, v in value.items())
    elif key == "fallback_ops":
        ok = isinstance(value, list) and len(value) <= 10_000 and all(
            isinstance(v, str) and len(v) <= 200 for v in value)
    elif key == "threads":
        ok = value == "auto" or (_number(value) and value == int(value))
    else:
        return None  # a field this edgepilot does not know: ignored
    return None if ok else f"has {key} = {json.dumps(value)[:60]}"


def _rows(results: list, remote: Remote) -> list:
    """The board's rows as `BenchResult`s, or a RemoteError naming the first bad field."""
    from edgepilot.bench import BenchResult

    rows = []
    fields = BenchResult.__dataclass_fields__
    for n, data in enumerate(results, 1):
        if not isinstance(data, dict):
            raise RemoteError(f"{remote}: row {n} of the benchmark's report is not an object")
        data = {k: v for k, v in data.items() if k in fields and k not in ("host",
                                                                           "host_description")}
        for key in ("model", "format", *data):
            problem = _field_problem(key, data.get(key))
            if problem:
                raise RemoteError(f"{remote}: row {n} of the benchmark's report {problem}")
        if not data.get("error") and not all(k in data.get("latency_ms", {}) for k in _LATENCY):
            raise RemoteError(f"{remote}: row {n} of the benchmark's report has no latencies "
                              f"({', '.join(_LATENCY)}) and no error")
        rows.append(BenchResult(**data))
    return rows


def _parse_report(stdout: str, remote: Remote) -> dict:
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
        if not isinstance(report, dict) or not isinstance(report.get("results"), list):
            raise ValueError("no results")
    except (ValueError, IndexError, RecursionError) as err:
        raise RemoteError(f"{remote}: the benchmark printed no JSON report "
                          f"({stdout.strip()[-200:] or 'nothing'})") from err
    return {**report, "results": _rows(report["results"], remote)}


def _describe(host, machine) -> str:
    """One line about a remote machine, from its `HostInfo` dict (what the board says)."""
    host = host if isinstance(host, dict) else {}
    machine = machine if isinstance(machine, dict) else {}

    def said(data: dict, key: str) -> str:
        value = data.get(key)
        return str(value)[:200] if isinstance(value, (str, int, float)) and \
            not isinstance(value, bool) else ""

    cores = said(host, "cores") or said(machine, "cores") or "?"
    features = host.get("cpu_features")
    features = ", ".join(str(f)[:40] for f in features[:20]) if isinstance(features, list) \
        else ""
    parts = [said(host, "board") or said(host, "cpu") or said(machine, "cpu") or "?",
             said(host, "arch"), f"{cores} cores", f"CPU features {features}" if features
             else ""]
    if _number(host.get("memory_mb")):
        parts.append(f"{host['memory_mb'] / 1024:.1f} GB")
    parts += [said(host, "os"), f"profile {said(host, 'profile')}" if said(host, "profile")
              else ""]
    return ", ".join(p for p in parts if p)


def deploy_to(bundle: Path, spec: str, *, log: Callable[[str], None] = print) -> Remote:
    """`deploy --to user@host:folder`: copy the bundle there and install it in a venv."""
    remote = parse_remote(spec, default_folder=None)
    log(f"{remote}: copied with {copy_bundle(bundle, remote, log=log)} to {remote.folder}")
    requirements = (Path(bundle) / "requirements.txt").read_text()
    log(f"{remote}: {install_bundle(remote, requirements)} the runtime in "
        f"{remote.folder}/.venv")
    return remote
