"""What `deploy --to` and `bench --on` may touch on a board (issue 30, findings 2, 8, 11): a
folder that is new, empty, or holds only what edgepilot wrote there (its manifest); anything
else is refused and left as it was. Against the real sshd of conftest.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgepilot import remote
from edgepilot.assets import shipped_model
from edgepilot.bench import BenchResult
from edgepilot.errors import InputError


def _home_like(folder: Path) -> dict[Path, str]:
    """A folder as a user's home looks: their files, keys and shell set-up."""
    files = {folder / "Documents" / "thesis.txt": "four years of work\n",
             folder / ".ssh" / "authorized_keys": "ssh-ed25519 AAAA user@laptop\n",
             folder / ".bashrc": "export PATH\n"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def _bundle(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    return folder


def _quiet(message: str) -> None:
    pass


def test_deploy_to_a_folder_with_the_users_files_changes_nothing(ssh_env, tmp_path):
    home = tmp_path / "home"
    files = _home_like(home)
    out = subprocess.run(
        [sys.executable, "-m", "edgepilot.cli", "deploy", str(shipped_model("stoplight")),
         "--device", "rpi5", "--out", str(tmp_path / "bundle"), "--to", f"good:{home}"],
        capture_output=True, text=True, timeout=600, env=ssh_env)
    assert out.returncode == 1
    error = out.stderr.strip().splitlines()[-1]
    assert "holds files edgepilot did not write" in error and "nothing was changed" in error
    for path, text in files.items():
        assert path.read_text() == text
    assert sorted(p.name for p in home.iterdir()) == [".bashrc", ".ssh", "Documents"]


def test_bench_on_a_folder_with_the_users_files_is_a_failed_row(ssh_env, tmp_path):
    home = tmp_path / "home"
    files = _home_like(home)
    [row] = remote.bench_on([remote.Remote("good", str(home))], [shipped_model("stoplight")],
                            runs=5, threads=1, workdir=tmp_path, log=_quiet)
    assert "holds files edgepilot did not write" in row.error
    for path, text in files.items():
        assert path.read_text() == text


def test_a_folder_is_edgepilots_only_while_it_holds_nothing_else(ssh_env, tmp_path):
    there = tmp_path / "there"
    target = remote.Remote("good", str(there))
    remote.copy_bundle(_bundle(tmp_path / "b1", "run.py", "old.onnx", "edgepilot/x.py"), target,
                       log=_quiet)
    manifest = json.loads((there / remote.MANIFEST).read_text())
    assert manifest["files"] == ["edgepilot/x.py", "old.onnx", "run.py"]
    (there / ".venv" / "bin").mkdir(parents=True)  # the venv install_bundle makes
    # A new bundle replaces the old one: only what the old manifest lists is removed.
    remote.copy_bundle(_bundle(tmp_path / "b2", "run.py", "new.onnx", "edgepilot/x.py"), target,
                       log=_quiet)
    assert sorted(p.name for p in there.iterdir()) == sorted(
        [".edgepilot-manifest.json", ".venv", "edgepilot", "new.onnx", "run.py"])
    # Something the user put there since makes the folder theirs again.
    (there / "recording.avi").write_text("my recording")
    with pytest.raises(remote.RemoteError, match="recording.avi"):
        remote.copy_bundle(tmp_path / "b1", target, log=_quiet)
    assert (there / "recording.avi").read_text() == "my recording"
    assert (there / "new.onnx").exists()


def test_a_venv_edgepilot_did_not_make_is_not_replaced(ssh_env, tmp_path):
    there = tmp_path / "project"
    (there / ".venv" / "bin").mkdir(parents=True)
    (there / ".venv" / "bin" / "python").write_text("theirs")
    with pytest.raises(remote.RemoteError, match="did not write"):
        remote.copy_bundle(_bundle(tmp_path / "b", "run.py"), remote.Remote("good", str(there)),
                           log=_quiet)
    assert (there / ".venv" / "bin" / "python").read_text() == "theirs"


@pytest.mark.parametrize("spec", ["pi@pi5:/", "pi@pi5:.", "pi@pi5:~", "pi@pi5:~/", "pi@pi5:..",
                                  "pi@pi5:a/../..", "pi@pi5:-rf", "pi@pi5:--delete",
                                  "pi@pi5:~root/x", "pi@pi5:$(reboot)", "pi@pi5:a;b",
                                  "-oProxyCommand=x:d", "@pi5:d", "pi@-x:d"])
def test_folders_and_hosts_that_are_not_a_bundle_s_place_are_refused(spec):
    with pytest.raises(InputError) as info:
        remote.parse_remote(spec, default_folder=None)
    assert "\n" not in str(info.value)


def test_home_relative_and_ipv6_targets():
    assert remote.parse_remote("pi@pi5:~/x") == remote.Remote("pi@pi5", "x")
    assert remote.parse_remote("pi@pi5:/srv/edgepilot/") == remote.Remote("pi@pi5",
                                                                          "/srv/edgepilot")
    v6 = remote.parse_remote("pi@[::1]:dir")
    assert v6 == remote.Remote("pi@::1", "dir") and v6.target == "pi@[::1]"
    assert remote.parse_remote("[fe80::1]").host == "fe80::1"
    assert remote.parse_remote("pi@pi5").target == "pi@pi5"


GOOD_ROW = {"model": "m.onnx", "format": "onnx", "threads": 1, "backend": "onnxruntime",
            "runs": 5, "latency_ms": {k: 1.0 for k in ("min", "p50", "p90", "p99", "mean",
                                                       "std")}}


@pytest.mark.parametrize("report, needle", [
    ({"results": [1]}, "not an object"),
    ({"results": [{**GOOD_ROW, "latency_ms": {}}]}, "no latencies"),
    ({"results": [{k: v for k, v in GOOD_ROW.items() if k != "model"}]}, "model"),
    ({"results": [{**GOOD_ROW, "runs": "5"}]}, "runs"),
    ({"results": [{**GOOD_ROW, "latency_ms": {"p50": float("inf")}}]}, "latency_ms"),
    ({"results": [{**GOOD_ROW, "fallback_ops": [{"op": 1}]}]}, "fallback_ops"),
    ({"results": {"a": 1}}, "no JSON report"),
    ([1, 2], "no JSON report"),
])
def test_a_boards_report_is_checked_not_trusted(report, needle):
    with pytest.raises(remote.RemoteError, match=needle) as info:
        remote._parse_report(json.dumps(report), remote.Remote("pi5", "x"))
    assert "\n" not in str(info.value)


def test_a_good_report_with_markup_in_its_names_is_kept_as_text():
    [row] = remote._parse_report(json.dumps({"results": [{**GOOD_ROW, "model": "[/]x"}]}),
                                 remote.Remote("pi5", "x"))["results"]
    assert isinstance(row, BenchResult) and row.model == "[/]x" and row.latency_ms["p50"] == 1


def test_a_board_that_prints_without_end_is_stopped(ssh_env, tmp_path, monkeypatch):
    # 300 MB of output once took 1.2 GB here; now the command is stopped at MAX_OUTPUT.
    monkeypatch.setattr(remote, "MAX_OUTPUT", 1 << 20)
    with pytest.raises(remote.RemoteError, match="printed more than"):
        remote.ssh(remote.Remote("good", str(tmp_path)), "yes edgepilot", "the benchmark",
                   timeout=120)


@pytest.mark.parametrize("printed", [
    '{"results": [1]}', '{"results": [{"model": "[/]", "format": "onnx"}]}',
    '{"results": [{"model": "m", "format": "onnx", "threads": 1, "latency_ms": {"p50": 1}}]}'])
def test_a_board_that_lies_gets_a_failed_row_and_the_others_are_kept(tmp_path, monkeypatch,
                                                                     printed):
    monkeypatch.setattr(remote, "copy_bundle", lambda *a, **k: "rsync")
    monkeypatch.setattr(remote, "install_bundle", lambda *a, **k: "reused")
    monkeypatch.setattr(remote, "ssh", lambda *a, **k: printed)
    good = json.dumps({"results": [GOOD_ROW], "host": {"cpu": "\x1b]0;owned\x07A76",
                                                        "cores": [1], "memory_mb": "x"}})
    rows = remote.bench_on([remote.Remote("liar", "x"), remote.Remote("pi5", "x")],
                           [shipped_model("stoplight")], runs=5, threads=1, workdir=tmp_path,
                           log=_quiet)
    assert rows[0].host == "liar" and "report" in rows[0].error and "\n" not in rows[0].error
    monkeypatch.setattr(remote, "ssh", lambda *a, **k: good)
    [row] = remote.bench_on([remote.Remote("pi5", "x")], [shipped_model("stoplight")], runs=5,
                            threads=1, workdir=tmp_path / "2", log=_quiet)
    assert row.error is None and row.host_description.startswith("\x1b]0;owned\x07A76")
    assert "? cores" in row.host_description  # a list is not a core count


def test_a_board_on_a_32_bit_os_is_refused_before_anything_is_copied(tmp_path):
    # The board's own check, run here as a 32-bit ARM Python would see itself.
    folder = tmp_path / "bundle"
    check = subprocess.run(
        [sys.executable, "-I", "-c", "import platform, struct\n"
         "struct.calcsize = lambda fmt: 4\nplatform.machine = lambda: 'armv7l'\n"
         "import sys; exec(sys.argv.pop(1))", remote._CLAIM, str(folder), remote.MANIFEST],
        input="[]", capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and check.stderr.strip() == "ARM32 armv7l"
    assert not folder.exists()


def test_the_32_bit_refusal_names_the_64_bit_os(monkeypatch):
    def board(*args, **kwargs):
        raise remote.RemoteError("pi4: checking the folder failed: ARM32 armv7l")

    monkeypatch.setattr(remote, "ssh", board)
    with pytest.raises(remote.RemoteError, match="32-bit OS .armv7l.*64-bit Raspberry Pi OS"):
        remote.claim_folder(remote.Remote("pi4", "x"), ["run.py"])
