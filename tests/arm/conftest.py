"""Emulated Raspberry Pis (tests/arm/board.sh): a 64-bit ARM Debian run by qemu-user with the
CPU of a real board, reached over ssh as `root@127.0.0.1`, with an ssh config that
`EDGEPILOT_SSH_CONFIG` names. Emulation: every figure measured there is the emulator's, not a
Pi's, and the tests say so where they print one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

BOARD_SH = Path(__file__).with_name("board.sh")
START_TIMEOUT = 1800  # a fresh root file system is built once (~5-9 min, package set-up emulated)


@dataclass
class Board:
    name: str  # pi5 or pi4
    cpu: str  # the QEMU_CPU it runs: cortex-a76 or cortex-a72
    config: Path  # ssh config for Host 127.0.0.1
    env: dict  # os.environ with EDGEPILOT_SSH_CONFIG set
    target: str = "root@127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing() -> str:
    if os.geteuid() != 0:
        return "root (mounts, chroot, binfmt_misc)"
    tools = [t for t in ("ssh", "ssh-keygen", "rsync") if shutil.which(t) is None]
    return ", ".join(tools)


@contextmanager
def running(name: str, work: Path) -> Iterator[Board]:
    """Start board `name` in `work` (a new folder); always stopped, mounts and all."""
    missing = _missing()
    if missing:  # not an OS limit: strict mode fails this skip
        pytest.skip(f"the emulated boards need {missing} (make test runs as root in CI)")
    folder = work / name
    for _ in range(3):  # a port another process took between choosing and binding: retry
        port = _free_port()
        try:
            subprocess.run([BOARD_SH, "start", name, folder, str(port)], check=True,
                           timeout=START_TIMEOUT, capture_output=True, text=True)
        except subprocess.CalledProcessError as err:
            subprocess.run([BOARD_SH, "stop", folder], timeout=300)
            pytest.fail(f"board.sh start {name} failed: {err.stderr.strip()[-2000:]}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            log = (folder / "sshd.log").read_text() if (folder / "sshd.log").exists() else ""
            subprocess.run([BOARD_SH, "stop", folder], timeout=300)
            if "Address already in use" in log:
                continue
            pytest.fail(f"the {name} board's sshd did not listen within 120 s: {log[-2000:]}")
        break
    config = work / f"{name}-ssh_config"
    config.write_text(f"Host 127.0.0.1\n  Port {port}\n  User root\n"
                      f"  IdentityFile {folder / 'key'}\n  IdentitiesOnly yes\n"
                      "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                      "  LogLevel ERROR\n")
    try:
        yield Board(name, (folder / "cpu").read_text().strip(), config,
                    {**os.environ, "EDGEPILOT_SSH_CONFIG": str(config)})
    finally:
        subprocess.run([BOARD_SH, "stop", folder], timeout=300)
