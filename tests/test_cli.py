"""The command line, run as a user runs it: a real subprocess of the installed script."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest


def run(*args, check_code=0):
    result = subprocess.run([sys.executable, "-m", "edgepilot.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == check_code, result.stderr
    return result


def write_png(path, image):
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def test_predict_with_the_shipped_model(tmp_path):
    from edgepilot.draw import stoplight

    images, labels = stoplight.generate(8, seed=99)
    paths = [write_png(tmp_path / f"{i}.png", img) for i, img in enumerate(images)]
    out = run("predict", "stoplight", *paths, "--json").stdout
    result = json.loads(out)
    assert "onnxruntime" in result["backend"]
    predicted = [p["label"] for p in result["predictions"]]
    assert predicted == [stoplight.LABELS[y] for y in labels]
    plain = run("predict", "stoplight", paths[0]).stdout.strip().split("\t")
    assert plain[0] == str(paths[0]) and plain[1] == predicted[0] and 0 < float(plain[2]) <= 1


def test_one_bad_image_is_reported_and_the_rest_still_run(tmp_path):
    good = write_png(tmp_path / "good.png", np.zeros((50, 50, 3), np.uint8))
    (tmp_path / "bad.png").write_text("no image")
    result = run("predict", "stoplight", tmp_path / "bad.png", good, check_code=1)
    assert "good.png" in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: Cannot decode '{tmp_path / 'bad.png'}' as an image (8 bytes). "
        "Use an image file such as .png, .jpg, .jpeg, .bmp"
    ]


@pytest.mark.parametrize("args,needle", [
    (["predict", "model.onxx", "x.png"], "Did you mean '.onnx'?"),
    (["predict", "missing.onnx", "x.png"], "Model file not found"),
    (["export", "missing.pt"], "Model not found: 'missing.pt'"),
    (["train", "digits", "--init", "runs/x.pt"], "--init applies to 'train stoplight'"),
    (["train", "neuron", "--lr", "0.1"], "--lr applies to 'train stoplight'"),
    (["train", "digits", "--light-size", "0.1", "0.5"], "--light-size applies to"),
    (["train", "stoplight", "--light-size", "0.5", "0.2"], "light_size must be two numbers"),
    (["train", "stoplight", "--interpolate", "0.5"], "--interpolate needs --init"),
    (["train", "stoplight", "--glare", "1.5"], "glare must be in [0, 1], got 1.5"),
    (["train", "stoplight", "--glare", "nan"], "glare must be in [0, 1], got nan"),
    (["train", "neuron", "--glare", "0.5"], "--glare applies to 'train stoplight'"),
    (["train", "stoplight", "--photo-share", "-0.1"], "photo_share must be in [0, 1], got -0.1"),
    (["train", "digits", "--photo-share", "0.4"], "--photo-share applies to 'train stoplight'"),
    (["train", "stoplight", "--init", "x.pt", "--interpolate", "2"], "must be in [0, 1]"),
    (["train", "digits", "--interpolate", "0.5"], "--interpolate applies to 'train stoplight'"),
    (["train", "digits", "--deepen", "1"], "--deepen applies to 'train stoplight'"),
    (["train", "stoplight", "--deepen", "9"], "--deepen must be 0..8 blocks, got 9"),
    (["train", "stoplight", "--deepen", "1", "--arch", "mobilenet"],
     "--deepen grows stoplight_cnn, not mobilenet"),
])
def test_errors_are_one_line_and_exit_1(args, needle):
    result = run(*args, check_code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = run("--debug", "predict", "missing.onnx", "x.png", check_code=1)
    assert "Traceback" in result.stderr and "ModelFileError" in result.stderr


@pytest.mark.slow
def test_train_export_predict_round_trip(tmp_path):
    """The whole path through the CLI at a tiny scale: a few steps, not an accurate model."""
    run("train", "stoplight", "--out", tmp_path, "--steps", "8", "--train-size", "256",
        "--val-size", "64", "--batch-size", "32", "--quiet")
    checkpoint = tmp_path / "stoplight.pt"
    assert checkpoint.is_file()
    metrics = json.loads((tmp_path / "stoplight.metrics.json").read_text())
    # A fraction of the 64 held-out images, counted over exactly those 64.
    assert metrics["n_holdout"] == 64
    correct = metrics["holdout_accuracy"] * 64
    assert correct == pytest.approx(round(correct))
    run("export", checkpoint, "--format", "onnx", "--val-size", "64")
    report = json.loads((tmp_path / "stoplight.onnx.json").read_text())
    assert report["n_inputs"] == 64  # --val-size
    # The file re-measured through the runtime on scenes the export never saw (another seed),
    # PyTorch the oracle: the same logits, the same top-1; and the report says so too.
    import torch

    import edgepilot
    from edgepilot.runtime import preprocess
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.datasets import load_dataset

    net, meta, _ = load_checkpoint(checkpoint)
    model = edgepilot.load(tmp_path / "stoplight.onnx")
    images, _ = load_dataset("stoplight", "val", 32, meta.input_size, seed=777)
    x = np.concatenate([preprocess(img, meta) for img in images])
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = model(x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    assert report["max_abs_diff"] < 1e-4 and report["top1_agreement"] == 1.0
    # predict on files of other sizes than the model's: PyTorch's top-1 for each image as the
    # file holds it (resized by the runtime's preprocessing), label by label.
    shapes = [(30, 40), (120, 90), (96, 200), (50, 50)]
    paths = [write_png(tmp_path / f"x{i}.png", cv2.resize(img, (w, h)))
             for i, (img, (h, w)) in enumerate(zip(images, shapes))]
    top1 = []
    for path in paths:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            top1.append(int(net(torch.from_numpy(preprocess(rgb, meta))).argmax()))
    out = json.loads(run("predict", tmp_path / "stoplight.onnx", *paths, "--json").stdout)
    assert [p["label"] for p in out["predictions"]] == [meta.labels[i] for i in top1]
    line = run("predict", tmp_path / "stoplight.onnx", paths[0]).stdout.split("\t")
    assert line[1] == meta.labels[top1[0]]


@pytest.mark.slow
def test_fine_tune_starts_from_the_checkpoint_and_refuses_another_kind(tmp_path):
    import torch

    from edgepilot.train.checkpoint import load_checkpoint

    common = ("--train-size", "128", "--val-size", "32", "--batch-size", "32", "--quiet")
    run("train", "stoplight", "--out", tmp_path / "a", "--steps", "4", *common)
    start = tmp_path / "a" / "stoplight.pt"
    # A learning rate this small leaves the weights where --init put them.
    run("train", "stoplight", "--out", tmp_path / "b", "--steps", "1", "--lr", "1e-9",
        "--init", start, "--seed", "1", "--light-size", "0.15", "0.9", "--glare", "0.25",
        "--photo-share", "0.4", *common)
    metrics = json.loads((tmp_path / "b" / "stoplight.metrics.json").read_text())
    assert metrics["init"] == str(start) and metrics["light_size"] == [0.15, 0.9]
    assert metrics["glare"] == 0.25 and metrics["photo_share"] == 0.4
    first = json.loads((tmp_path / "a" / "stoplight.metrics.json").read_text())
    assert first["light_size"] == [0.2, 0.9] and first["glare"] == 0.0
    assert first["photo_share"] is None
    (a, _, _), (b, _, _) = load_checkpoint(start), load_checkpoint(tmp_path / "b" / "stoplight.pt")
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    # --interpolate blends the fine-tune with its start (WiSE-FT): half way, every float tensor.
    run("train", "stoplight", "--out", tmp_path / "e", "--steps", "2", "--lr", "1e-2",
        "--init", start, "--seed", "1", *common)
    run("train", "stoplight", "--out", tmp_path / "h", "--steps", "2", "--lr", "1e-2",
        "--init", start, "--seed", "1", "--interpolate", "0.5", *common)
    (e, _, _), (h, _, _) = load_checkpoint(tmp_path / "e" / "stoplight.pt"), load_checkpoint(
        tmp_path / "h" / "stoplight.pt")
    moved = 0.0
    for name, x in a.state_dict().items():
        if x.dtype.is_floating_point:
            y, z = e.state_dict()[name], h.state_dict()[name]
            torch.testing.assert_close(z, (x + y) / 2, rtol=0, atol=1e-6, msg=name)
            moved = max(moved, float((y - x).abs().max()))
    assert moved > 1e-3  # the fine-tune did change the weights
    assert json.loads((tmp_path / "h" / "stoplight.metrics.json").read_text())[
        "interpolate"] == 0.5
    # A fresh model's first layer is nowhere near the trained one.
    run("train", "stoplight", "--out", tmp_path / "c", "--steps", "1", "--lr", "1e-9",
        "--seed", "1", *common)
    c, _, _ = load_checkpoint(tmp_path / "c" / "stoplight.pt")
    assert not torch.allclose(next(a.parameters()), next(c.parameters()), atol=1e-3)

    # --deepen: one more 3x3 block at 1/16, an identity at first; the trained layers carry over
    run("train", "stoplight", "--out", tmp_path / "g", "--steps", "1", "--lr", "1e-9",
        "--init", start, "--seed", "1", "--deepen", "1", *common)
    grown, _, info = load_checkpoint(tmp_path / "g" / "stoplight.pt")
    assert info["config"] == {"num_classes": 4, "extra_convs": 1}
    assert json.loads((tmp_path / "g" / "stoplight.metrics.json").read_text())["deepen"] == 1
    assert len(grown.features) == len(a.features) + 1
    theirs = dict(grown.named_parameters())
    for name, x in a.named_parameters():
        torch.testing.assert_close(x, theirs[name], rtol=0, atol=1e-6, msg=name)
    identity = torch.nn.init.dirac_(torch.empty_like(grown.features[-1][0].weight))
    torch.testing.assert_close(grown.features[-1][0].weight, identity, rtol=0, atol=1e-6)
    # a deepened checkpoint fine-tunes as it is: --init brings its architecture along
    run("train", "stoplight", "--out", tmp_path / "k", "--steps", "1", "--lr", "1e-9",
        "--init", tmp_path / "g" / "stoplight.pt", "--seed", "2", *common)
    assert load_checkpoint(tmp_path / "k" / "stoplight.pt")[2]["config"]["extra_convs"] == 1

    result = run("train", "stoplight", "--out", tmp_path / "d", "--init", start,
                 "--input-size", "48", *common, check_code=1)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --init {start} is a stoplight_cnn") and "at 48x48" in line
    assert "Pass the matching --arch and --input-size" in line and not (tmp_path / "d").exists()


def test_info_on_the_shipped_model_and_checkpoint():
    from edgepilot.assets import shipped_model

    onnx_info = json.loads(run("info", "stoplight", "--json").stdout)
    assert onnx_info["format"] == "onnx" and onnx_info["meta"]["labels"][0] == "red"
    assert onnx_info["op_histogram"]["Conv"] == 7 and onnx_info["macs"] > 1_000_000
    checkpoint = json.loads(run("info", shipped_model("stoplight", ".pt"), "--json").stdout)
    assert checkpoint["parameters"] == 208_980  # BatchNorm included, as torch counts
    assert checkpoint["macs"] == onnx_info["macs"]
    table = run("info", "stoplight").stdout
    assert "parameters" in table and "Conv" in table


def test_commands_that_need_torch_name_the_extra_when_it_is_missing(tmp_path):
    code = ("import sys; sys.modules['torch'] = None  # as in a runtime-only install\n"
            "from edgepilot.cli import main; sys.exit(main(sys.argv[1:]))")
    for args in (["export", "model.pt"], ["train", "neuron", "--out", str(tmp_path)],
                 ["bench", "--export", "model.pt"], ["demo", "--out", str(tmp_path)]):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and line.endswith(
            "models needs the Python package 'torch', which is not installed. "
            "Install it with: pip install 'edgepilot[export]'"), line


def one_line_error(result, needle):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


@pytest.mark.slow
def test_export_out_is_a_folder_when_it_exists_or_ends_in_a_slash(tmp_path):
    import shutil

    from edgepilot.assets import shipped_model

    checkpoint = tmp_path / "light.pt"
    shutil.copy(shipped_model("stoplight", ".pt"), checkpoint)
    existing = tmp_path / "existing"
    existing.mkdir()
    for out, expected in ((existing, existing / "light.onnx"),  # an existing folder
                          (f"{tmp_path / 'new'}/", tmp_path / "new" / "light.onnx"),  # a /
                          (tmp_path / "stem", tmp_path / "stem.onnx")):  # else a path stem
        printed = run("export", checkpoint, "--out", out, "--val-size", 0).stdout.split()
        assert printed == [str(expected)] and expected.is_file()
    assert not (tmp_path / "existing.onnx").exists()  # not beside the folder


def test_output_paths_are_checked_before_any_work(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["bench", "stoplight", "--csv", tmp_path], "--csv", "is a folder"),
        (["bench", "stoplight", "--json-out", a_file / "r.json"], "--json-out",
         "Folder does not exist"),
        (["bench", "stoplight", "--plot", tmp_path / "no" / "p.png"], "--plot",
         "Folder does not exist"),
        (["bench", "--export", "missing.pt", "--out", a_file / "sub"], "--out",
         "is a file, not a folder"),
        (["export", "missing.pt", "--out", a_file / "sub/"], "--out", "is a file, not a folder"),
        (["train", "neuron", "--out", a_file / "runs"], "--out", "is a file, not a folder"),
        (["demo", "--out", a_file], "--out", "is a file, not a folder"),
    ]
    for args, option, needle in cases:
        result = run(*args, check_code=1)
        one_line_error(result, needle)
        assert option in result.stderr and result.stdout == ""  # nothing was measured


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bench_duration_must_be_positive(value):
    result = run("bench", "stoplight", "--duration", value, check_code=1)
    assert "--duration" in result.stderr and "Traceback" not in result.stderr


def test_bench_fails_when_a_model_you_named_failed(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    # A missing file ends the run before anything is measured: no empty table first.
    missing = run("bench", broken, tmp_path / "missing.onnx", "--runs", 5, check_code=1)
    assert missing.stdout == "" and "Model file not found" in missing.stderr
    folder = run("bench", tmp_path, check_code=1)
    assert "is a folder, not a model file" in folder.stderr
    result = run("bench", broken, "--runs", 5, "--json", check_code=1)
    [row] = json.loads(result.stdout)["results"]
    assert row["error"] and result.stderr.strip().splitlines()[-1] == \
        "error: no model could be benchmarked (the table says why)"
    # One good model and one broken one: both rows shown, and the run is an error (issue 35).
    mixed = run("bench", "stoplight", broken, "--runs", 5, "--rounds", 1, check_code=1)
    assert "broken.onnx" in mixed.stdout and "stoplight.onnx" in mixed.stdout
    assert mixed.stderr.strip().splitlines()[-1].startswith(
        "error: 1 of 2 runs could not be benchmarked") and "broken.onnx" in mixed.stderr


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    # `edgepilot bench ... | head -1`: the pipe closes; no BrokenPipeError traceback.
    import os

    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "edgepilot.cli", "devices"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr


def test_a_folder_given_as_an_image_says_it_is_a_folder(tmp_path):
    result = run("predict", "stoplight", tmp_path, check_code=1)
    one_line_error(result, "is a folder, not an image")


@pytest.mark.parametrize("name,code,said", [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM")])
def test_a_signal_exits_128_plus_its_number_in_every_command(name, code, said):
    # A command that is stopped while it works (the signal is sent from inside it, so it
    # arrives exactly then): SIGTERM unwinds like Ctrl-C instead of killing the process.
    script = ("import os, signal, sys, time\n"
              "import edgepilot.cli as cli\n"
              "def working(args):\n"
              f"    os.kill(os.getpid(), signal.{name})\n"
              "    time.sleep(600)\n"
              "    return 0\n"
              "cli.cmd_info = working\n"
              "sys.exit(cli.main(['info', 'model.onnx']))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == code
    assert result.stderr.strip().splitlines() == [f"interrupted ({said})"]
