"""Fixtures for the device tests: fake /proc, /sys, /etc and /dev trees of real boards (with the
strings those boards print), and the stoplight model exported and bundled once per session."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def _cpus(count: int, block: str) -> str:
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(count))


ARMV82 = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
          "dcpop asimddp")  # the Features line of a Cortex-A76 and an A78AE (then more)
PI5_CPU = f"""BogoMIPS\t: 108.00
Features\t: {ARMV82}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1
"""
PI4_CPU = """BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""
ORIN_CPU = f"""model name\t: ARMv8 Processor rev 1 (v8l)
BogoMIPS\t: 62.50
Features\t: {ARMV82} uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd42
CPU revision\t: 1
"""

BOARDS = {
    "pi5": {
        "proc/cpuinfo": _cpus(4, PI5_CPU) + "Revision\t: d04170\nSerial\t\t: 6b71acd964ee2481\n"
                        "Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n",
        "proc/meminfo": "MemTotal:        8245984 kB\nMemFree:         7401432 kB\n"
                        "MemAvailable:    7756160 kB\n",
        # /proc/device-tree is a link to this on a Pi; the strings end in NUL
        "sys/firmware/devicetree/base/model": b"Raspberry Pi 5 Model B Rev 1.0\x00",
        "sys/firmware/devicetree/base/compatible":
            b"raspberrypi,5-model-b\x00brcm,bcm2712\x00",
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n',
        "dev/video0": "", "dev/video19": "", "dev/video20": "",
    },
    "pi4": {
        "proc/cpuinfo": _cpus(4, PI4_CPU) + "Hardware\t: BCM2835\nRevision\t: c03114\n"
                        "Serial\t\t: 10000000b2e4a1f3\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n",
        "proc/meminfo": "MemTotal:        3885396 kB\nMemFree:         3270000 kB\n"
                        "MemAvailable:    3512000 kB\n",
        "proc/device-tree/model": b"Raspberry Pi 4 Model B Rev 1.4\x00",
        "proc/device-tree/compatible": b"raspberrypi,4-model-b\x00brcm,bcm2711\x00",
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n',
    },
    "orin": {
        "proc/cpuinfo": _cpus(12, ORIN_CPU),
        "proc/meminfo": "MemTotal:       31002196 kB\nMemFree:        28000000 kB\n"
                        "MemAvailable:   29410000 kB\n",
        "proc/device-tree/model": b"NVIDIA Jetson AGX Orin Developer Kit\x00",
        "proc/device-tree/compatible":
            b"nvidia,p3737-0000+p3701-0000\x00nvidia,p3701-0000\x00nvidia,tegra234\x00",
        "etc/nv_tegra_release": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: "
                                "t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n",
        "etc/os-release": 'PRETTY_NAME="Ubuntu 20.04.6 LTS"\nID=ubuntu\n',
        "dev/video0": "",
    },
}

#: The Coral USB Accelerator once its firmware is loaded (Google's id), as sysfs shows it.
CORAL_USB = {"sys/bus/usb/devices/2-1/idVendor": "18d1\n",
             "sys/bus/usb/devices/2-1/idProduct": "9302\n",
             "sys/bus/usb/devices/1-1/idVendor": "2109\n",  # the Pi 4's VL805 hub
             "sys/bus/usb/devices/1-1/idProduct": "3431\n"}


def make_tree(root: Path, files: dict) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


@pytest.fixture
def board(tmp_path):
    """board(name, *extra) -> the root of a fake tree of that board (plus extra files)."""
    def build(name: str, *extra: dict) -> Path:
        files = dict(BOARDS[name])
        for more in extra:
            files.update(more)
        return make_tree(tmp_path / name, files)
    return build


@pytest.fixture
def coral_usb() -> dict:
    return dict(CORAL_USB)


@pytest.fixture(scope="session")
def rpi5_bundle(tmp_path_factory):
    """`deploy` of the shipped stoplight checkpoint for rpi5: exported to int8 .tflite for it."""
    pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    from edgepilot.assets import shipped_model
    from edgepilot.deploy import deploy

    out = tmp_path_factory.mktemp("rpi5") / "bundle"
    return deploy(shipped_model("stoplight", ".pt"), "rpi5", out, log=lambda message: None)


SSHD = Path("/usr/sbin/sshd")


def _bound_port() -> socket.socket:
    """A localhost port held by a socket that never listens: connections to it are refused,
    and no other process (another xdist worker) can take it while the socket is open."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def _start_sshd(work: Path) -> tuple[subprocess.Popen, int]:
    """sshd on a free localhost port; a port taken between choosing and binding is retried."""
    for _ in range(5):
        with _bound_port() as s:
            port = s.getsockname()[1]
        (work / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/host_key\n"
            f"AuthorizedKeysFile {work}/authorized_keys\nPidFile {work}/sshd.pid\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
            "Subsystem sftp /usr/lib/openssh/sftp-server\n")  # scp uses SFTP since OpenSSH 9
        server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", work / "sshd_config"],
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120  # generous: CI machines are busy
        while server.poll() is None and time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return server, port
            time.sleep(0.05)
        server.kill()
        _, err = server.communicate(timeout=30)
        if "Address already in use" not in err:
            pytest.fail(f"sshd did not start within 120 s: {err.strip()}")
    pytest.fail("sshd found no free port in 5 tries")


@pytest.fixture(scope="module")
def ssh_config(tmp_path_factory):
    """An sshd of our own and an ssh config naming hosts `good` and `bad` (a port that
    refuses connections, as a board that is switched off)."""
    missing = [tool for tool in ("ssh", "ssh-keygen", "rsync") if shutil.which(tool) is None]
    if not SSHD.exists() or missing:  # not an OS limit: strict mode fails this skip
        pytest.skip(f"openssh-server, openssh-client or rsync is not installed "
                    f"({', '.join(missing) or SSHD}): run 'make ssh-tools'")
    work = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / key],
                       check=True, timeout=60)
    (work / "authorized_keys").write_text((work / "user_key.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    server, port = _start_sshd(work)
    user = os.environ.get("USER") or __import__("getpass").getuser()
    host = (f"  HostName 127.0.0.1\n  User {user}\n  IdentityFile {work}/user_key\n"
            "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    config = work / "ssh_config"
    with _bound_port() as closed:
        config.write_text(f"Host good\n  Port {port}\n{host}"
                          f"Host bad\n  Port {closed.getsockname()[1]}\n{host}")
        try:
            yield config
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def ssh_env(ssh_config, monkeypatch):
    monkeypatch.setenv("EDGEPILOT_SSH_CONFIG", str(ssh_config))
    return {**os.environ, "EDGEPILOT_SSH_CONFIG": str(ssh_config)}
