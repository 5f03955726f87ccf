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
import os
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
    """``host`` as ssh takes it (user@name or an alias) and the folder there."""

    host: str
    folder: str

    def __str__(self) -> str:
        return self.host


def parse_remote(spec: str, *, default_folder: str | None = DEFAULT_FOLDER) -> Remote:
    """``user@host[:folder]`` -> Remote. A folder is required when `default_folder` is None."""
    host, sep, folder = spec.partition(":")
    if not host or host.startswith("-") or any(c.isspace() for c in spec):
        raise InputError(f"'{spec}' is not an ssh host: give user@host or user@host:folder")
    if not folder:
        if default_folder is None:
            raise InputError(f"'{spec}' names no folder: give user@host:folder")
        folder = default_folder
    return Remote(host, folder.rstrip("/") or "/")


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


def _run(command: list[str], what: str, remote: Remote, timeout: float) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise RemoteError(f"{remote}: {what} took more than {timeout:.0f} s") from err
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        if done.returncode == 255 and command[0].endswith("ssh"):
            reason = f"ssh failed: {reason}"
        raise RemoteError(f"{remote}: {what} failed: {reason}")
    return done.stdout


def ssh(remote: Remote, script: str, what: str, timeout: float = 120) -> str:
    """Run a shell `script` on `remote`; its stdout, or a RemoteError with the last line of
    stderr."""
    return _run([_tool("ssh"), *_ssh_options(), remote.host, script], what, remote, timeout)


def copy_bundle(bundle: Path, remote: Remote, *, log: Callable[[str], None] = print) -> str:
    """Copy a bundle folder to ``remote.folder`` (created); returns the tool used. rsync sends
    only what changed and leaves the remote venv in place; scp copies everything."""
    folder = shlex.quote(remote.folder)
    found = ssh(remote, f"mkdir -p {folder} && command -v rsync || true", "creating the folder")
    if shutil.which("rsync") and found.strip():
        shell = shlex.join([_tool("ssh"), *_ssh_options()])
        _run([_tool("rsync"), "-a", "--delete", "--exclude", ".venv", "-e", shell,
              f"{bundle}/", f"{remote.host}:{remote.folder}/"], "rsync", remote, 600)
        return "rsync"
    log(f"{remote}: rsync is missing {'there' if shutil.which('rsync') else 'here'}; "
        "copying with scp")
    files = [str(p) for p in sorted(Path(bundle).iterdir()) if p.name != ".venv"]
    _run([_tool("scp"), "-q", "-r", *_ssh_options(), *files, f"{remote.host}:{remote.folder}/"],
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
        ".venv/bin/python -m pip install -q --disable-pip-version-check "
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
        host = report.get("host") or {}
        description = _describe(host, report.get("machine") or {})
        for data in report["results"]:
            row = BenchResult(**{k: v for k, v in data.items()
                                 if k in BenchResult.__dataclass_fields__})
            row.host, row.host_description = str(remote), description
            row.model = f"{row.model} @ {remote}"
            rows.append(row)
    return rows


def _parse_report(stdout: str, remote: Remote) -> dict:
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
        if not isinstance(report.get("results"), list):
            raise ValueError("no results")
    except (ValueError, IndexError, AttributeError) as err:
        raise RemoteError(f"{remote}: the benchmark printed no JSON report "
                          f"({stdout.strip()[-200:] or 'nothing'})") from err
    return report


def _describe(host: dict, machine: dict) -> str:
    """One line about a remote machine, from its `HostInfo` dict."""
    what = host.get("board") or host.get("cpu") or machine.get("cpu") or "?"
    parts = [what, host.get("arch", ""), f"{host.get('cores') or machine.get('cores')} cores"]
    if host.get("memory_mb"):
        parts.append(f"{host['memory_mb'] / 1024:.1f} GB")
    if host.get("os"):
        parts.append(host["os"])
    if host.get("profile"):
        parts.append(f"profile {host['profile']}")
    return ", ".join(p for p in parts if p)


def deploy_to(bundle: Path, spec: str, *, log: Callable[[str], None] = print) -> Remote:
    """`deploy --to user@host:folder`: copy the bundle there and install it in a venv."""
    remote = parse_remote(spec, default_folder=None)
    log(f"{remote}: copied with {copy_bundle(bundle, remote, log=log)} to {remote.folder}")
    requirements = (Path(bundle) / "requirements.txt").read_text()
    log(f"{remote}: {install_bundle(remote, requirements)} the runtime in "
        f"{remote.folder}/.venv")
    return remote
