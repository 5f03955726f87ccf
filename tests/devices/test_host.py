"""Host detection on fake trees of a Pi 5, a Pi 4 and a Jetson AGX Orin, and on this machine."""

import json
import os
import platform
import subprocess
import sys

import pytest

from edgepilot.devices import detect_host, match_profile


def test_raspberry_pi_5(board):
    host = detect_host(board("pi5"), runtimes=False)
    assert host.board == "Raspberry Pi 5 Model B Rev 1.0"  # the device tree's NUL stripped
    assert host.soc == ["raspberrypi,5-model-b", "brcm,bcm2712"]
    assert (host.arch, host.cores, host.cpu) == ("aarch64", 4, "Cortex-A76")
    assert host.cpu_features == ["NEON", "fp16 arithmetic", "dotprod"]
    assert (host.memory_mb, host.memory_available_mb) == (8052, 7574)
    assert host.os == "Debian GNU/Linux 12 (bookworm)"
    assert host.cameras == ["/dev/video0", "/dev/video19", "/dev/video20"]  # numeric order
    assert host.l4t == "" and host.accelerators == []
    assert host.profile == "rpi5" and "Raspberry Pi 5" in host.profile_reason


def test_raspberry_pi_4_read_from_proc_device_tree(board):
    host = detect_host(board("pi4"), runtimes=False)
    assert host.board == "Raspberry Pi 4 Model B Rev 1.4"
    assert (host.cpu, host.cores, host.arch) == ("Cortex-A72", 4, "aarch64")
    assert host.cpu_features == ["NEON"]  # the A72 has no dot-product instructions
    assert host.memory_mb == 3794 and host.cameras == []
    assert host.profile == "rpi4"


def test_a_pi_without_a_device_tree_is_named_by_its_cpuinfo(board, tmp_path):
    root = board("pi4")
    for name in ("model", "compatible"):
        (root / "proc/device-tree" / name).unlink()
    host = detect_host(root, runtimes=False)
    assert host.board == "Raspberry Pi 4 Model B Rev 1.4" and host.profile == "rpi4"


def test_a_pi_on_a_32_bit_os_is_refused_naming_the_64_bit_os(board):
    # A 32-bit kernel says "CPU architecture: 7"; a 32-bit userland on a 64-bit kernel is
    # seen from this Python's pointer size (userland_bits). No wheels exist for either.
    from tests.devices.conftest import PI4_CPU, _cpus  # noqa: PLC0415

    cpuinfo = _cpus(4, PI4_CPU.replace("CPU architecture: 8", "CPU architecture: 7"))
    host = detect_host(board("pi4", {"proc/cpuinfo": cpuinfo}), runtimes=False)
    assert host.arch == "armv7l" and host.profile == ""
    assert "32-bit OS" in host.profile_reason and "64-bit Raspberry Pi OS" in host.profile_reason
    host = detect_host(board("pi5"), runtimes=False)
    host.userland_bits = 32
    profile, reason = match_profile(host)
    assert profile is None and "64-bit Raspberry Pi OS" in reason


def test_jetson_agx_orin(board):
    host = detect_host(board("orin"), runtimes=False)
    assert host.board == "NVIDIA Jetson AGX Orin Developer Kit"
    assert host.soc[-1] == "nvidia,tegra234"
    assert host.l4t == "R35.4.1"
    assert (host.cpu, host.cores) == ("Cortex-A78AE", 12)
    assert "dotprod" in host.cpu_features and "NEON" in host.cpu_features
    assert host.os == "Ubuntu 20.04.6 LTS" and host.memory_mb == 30275
    assert host.profile == "jetson" and "R35.4.1" in host.profile_reason


def test_a_coral_usb_accelerator_on_a_pi_picks_the_edge_tpu(board, coral_usb):
    host = detect_host(board("pi4", coral_usb), runtimes=False)
    assert host.accelerators == ["Coral USB Accelerator (18d1:9302)"]  # not the USB hub
    assert host.board.startswith("Raspberry Pi 4") and host.profile == "coral-usb"


def test_an_empty_tree_matches_nothing_and_says_so(tmp_path):
    host = detect_host(tmp_path, runtimes=False)
    assert host.profile == "" and host.cores == 0
    profile, reason = match_profile(host)
    assert profile is None and "--device" in reason


def test_this_machine_for_real():
    host = detect_host()
    assert host.arch == platform.machine() and host.cores == os.cpu_count()
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert abs(host.memory_mb - pages) <= 0.01 * pages
    # The runtimes really import, with the versions they report themselves.
    import onnxruntime
    from ai_edge_litert import interpreter  # noqa: F401

    assert host.runtimes["onnxruntime"] == onnxruntime.__version__
    assert host.providers == onnxruntime.get_available_providers()
    assert host.runtimes["ai-edge-litert"][0].isdigit() and "XNNPACK" in host.delegates
    assert host.cameras == sorted(f"/dev/{n}" for n in os.listdir("/dev")
                                  if n.startswith("video"))
    if host.arch != "x86_64":
        pytest.skip(f"hardware: the CPU-feature check below is for x86, this is {host.arch}")
    # numpy probes the CPU with CPUID itself: an independent check of what cpuinfo says.
    from numpy._core._multiarray_umath import __cpu_features__ as cpuid

    for ours, theirs in (("AVX2", "AVX2"), ("FMA", "FMA3"), ("AVX-512", "AVX512F"),
                         ("AVX-512 VNNI", "AVX512VNNI")):
        assert (ours in host.cpu_features) == cpuid[theirs], ours
    assert host.profile == "x86"


def test_devices_command_json_and_table():
    out = subprocess.run([sys.executable, "-m", "edgepilot.cli", "devices", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    names = [p["name"] for p in data["profiles"]]
    for required in ("rpi-zero2", "rpi4", "rpi5", "coral-usb", "coral-devboard", "android",
                     "iphone", "mac", "jetson", "x86"):
        assert required in names
    assert data["host"]["arch"] == platform.machine()
    table = subprocess.run([sys.executable, "-m", "edgepilot.cli", "devices"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "this host" in table.stdout
    assert f"{data['host']['profile']} ◀ this host" in table.stdout


def test_devices_imports_no_torch():
    code = ("import sys, edgepilot.devices as d; d.detect_host(); "
            "print(sorted(m for m in ('torch', 'onnx', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
