"""Hostile model files and bad inputs: each defect of issue #15 (items 1-4 and 8), one test
each. A hostile file must end in a clear ModelFileError (a bad input in an InputError) naming
the problem, before anything large is allocated; never another exception type, a hang, or a
silently wrong answer.

The .onnx files are the shipped stoplight model with its metadata rewritten (the `onnx`
package of the export extra writes them; loading them needs only the runtime).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.errors import InputError, ModelFileError
from edgepilot.formats import FORMATS
from edgepilot.meta import MAX_INPUT_SIDE, ModelMeta
from edgepilot.runtime import image as image_module
from edgepilot.runtime.backend import Backend, TensorInfo
from edgepilot.runtime.image import check_image, read_image
from edgepilot.runtime.model import Model

#: Side of the shipped stoplight model's square input, read from the model itself.
SIDE = edgepilot.load(shipped_model("stoplight")).meta.input_size[0]
STOPLIGHT_META = json.loads(ModelMeta(
    name="stoplight", labels=("red", "yellow", "green", "none"), input_size=(SIDE, SIDE),
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).to_json())


def onnx_with_meta(tmp_path: Path, entry: str, name: str = "m.onnx") -> Path:
    """The shipped stoplight .onnx (input 1x3xSIDExSIDE, 4 logits) with `entry` as its
    edgepilot metadata."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(shipped_model("stoplight")))
    for prop in model.metadata_props:
        if prop.key == "edgepilot":
            prop.value = entry
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def meta_json(**changes) -> str:
    return json.dumps({**STOPLIGHT_META, **changes})


# --------------------------------------------------------------- 1. metadata-driven memory


@pytest.mark.parametrize("changes,needle", [
    ({"input_size": [20000, 20000]}, "larger than 4096"),  # predict resized to this: 15 GB
    ({"input_size": [1e300, SIDE]}, "whole numbers"),
    ({"input_size": [128, 128]}, "does not fit its own model.*1x3x128x128.*input 'input'"),
    ({"layout": "NHWC"}, f"does not fit.*1x{SIDE}x{SIDE}x3"),
    ({"color": "GRAY", "mean": [0.5], "std": [0.25]}, f"does not fit.*1x1x{SIDE}x{SIDE}"),
    ({"labels": ["a", "b"]}, "holds 4 values but the metadata has 2 labels"),
    ({"mean": [0.5, 0.5, 0.5, 0.5], "std": [1, 1, 1, 1]}, "mean has 4 items, more than 3"),
    ({"color": "GRAY", "mean": [0.5, 0.5], "std": [1, 1]}, "2 values but color GRAY has 1"),
    ({"mean": [1e300, 0, 0]}, "out of range"),  # float32 would make it inf
    ({"mean": [float("nan"), 0, 0]}, "finite numbers"),
    ({"std": [1e-30, 1, 1]}, "out of range"),
    ({"labels": ["x" * 5000, "b", "c", "d"]}, "more than 1,000"),
    ({"labels": [["nested"], "b", "c", "d"]}, "must hold text"),
])
def test_metadata_is_checked_against_the_model_at_load(tmp_path, changes, needle):
    path = onnx_with_meta(tmp_path, meta_json(**changes))
    with pytest.raises(ModelFileError, match=needle) as caught:
        edgepilot.load(path)
    assert str(path) in str(caught.value)


def test_a_meta_argument_that_does_not_fit_is_an_input_error(tmp_path):
    other = SIDE + 32  # any size but the model's own
    meta = ModelMeta.from_json(meta_json(input_size=[other, other]))
    with pytest.raises(InputError, match=f"meta passed.*does not fit.*1x3x{other}x{other}"):
        edgepilot.load(shipped_model("stoplight"), meta=meta)


def test_input_size_bound_holds_for_metas_built_in_code():
    with pytest.raises(ValueError, match=f"larger than {MAX_INPUT_SIDE}"):
        ModelMeta(name="m", labels=("a",), input_size=(MAX_INPUT_SIDE + 1, 8))
    ModelMeta(name="m", labels=("a",), input_size=(MAX_INPUT_SIDE, 8))  # the bound itself


# --------------------------------------------------------------- 2. image limits


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR states width x height, with a small IDAT: the file is tiny, the
    image it claims is not."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 100_000)) + chunk(b"IEND", b"")


def test_image_pixels_are_checked_from_the_header_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header(30000, 30000))  # decoding would take 2.7 GB
    with pytest.raises(InputError, match="30000x30000 pixels, more than the 50,000,000"):
        read_image(path)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff", ".gif", ".ppm"])
def test_header_sizes_agree_with_opencv(tmp_path, ext):
    cv2 = pytest.importorskip("cv2")
    ok, data = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
    assert ok
    assert image_module.image_size(data.tobytes()) == (53, 37)
    path = tmp_path / f"x{ext}"
    path.write_bytes(data.tobytes())
    assert read_image(path).shape == (37, 53, 3)


def test_image_file_size_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(image_module, "MAX_IMAGE_BYTES", 1000)
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(8, 8) + b"\0" * 2000)
    with pytest.raises(InputError, match="bytes; images up to 1,000 bytes"):
        read_image(path)


def test_unknown_image_formats_are_not_handed_to_the_decoder(tmp_path):
    path = tmp_path / "x.jp2"  # JPEG 2000: a format whose header edgepilot does not read
    path.write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 100)
    with pytest.raises(InputError, match="Cannot decode .*x.jp2' as an image"):
        read_image(path)


def test_image_arrays_are_bounded_too():
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (10000, 6000, 3))  # 60 MP, no memory
    with pytest.raises(InputError, match="more than 50,000,000 pixels"):
        check_image(huge)


# --------------------------------------------------------------- 3. zip bomb in a .tflite


def _with_zip(tflite: bytes, members: dict[str, bytes]) -> bytes:
    """`tflite` with its appended zip replaced by deflated `members`."""
    from edgepilot.runtime.tflite_metadata import _strip_zip

    out = io.BytesIO(_strip_zip(tflite))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_zip_bomb_labels_are_refused_without_inflating(tiny_tflite, tmp_path):
    raw = Path(tiny_tflite["fp32"]).read_bytes()
    bomb = tmp_path / "bomb.tflite"
    # One line of 64 MiB, deflated to ~64 KB: the reader stops at 16 MiB.
    bomb.write_bytes(_with_zip(raw, {"labels.txt": b"a" * (64 << 20)}))
    assert bomb.stat().st_size < len(raw) + 200_000
    with pytest.raises(ModelFileError, match="bomb.tflite.*labels.txt.*more than 16,777,216"):
        edgepilot.load(bomb)


def test_zip_members_that_are_not_needed_are_never_read(tiny_tflite, tmp_path, monkeypatch):
    raw = Path(tiny_tflite["fp32"]).read_bytes()
    path = tmp_path / "extra.tflite"
    path.write_bytes(_with_zip(raw, {"labels.txt": b"red\nyellow\ngreen\nnone\n",
                                     "junk.bin": b"\0" * (32 << 20)}))
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: opened.append(getattr(name, "filename", name))
                        or real_open(self, name, *a, **k))
    model = edgepilot.load(path, threads=1)  # auto would open the file once per count it times
    assert model.meta.labels == ("red", "yellow", "green", "none")
    assert opened == ["labels.txt"]


def test_zip_member_count_is_bounded(tiny_tflite, tmp_path):
    raw = Path(tiny_tflite["fp32"]).read_bytes()
    path = tmp_path / "many.tflite"
    path.write_bytes(_with_zip(raw, {"labels.txt": b"a\nb\nc\nd\n",
                                     **{f"f{i}": b"" for i in range(2000)}}))
    with pytest.raises(ModelFileError, match="2,001 members, more than 1,024"):
        edgepilot.load(path)


# --------------------------------------------------------------- 4. every failure is ours


@pytest.mark.parametrize("entry,needle", [
    ("[1, 2, 3]", "must be a JSON object, got list"),
    ("42", "must be a JSON object, got int"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (json.dumps({**STOPLIGHT_META, "extra": {"a": json.loads("[" * 500 + "]" * 500)}}),
     "nested more than 32 levels"),
    ('{"name": "m"}', "missing"),
])
def test_malformed_onnx_metadata_is_a_model_file_error(tmp_path, entry, needle):
    path = onnx_with_meta(tmp_path, entry)
    with pytest.raises(ModelFileError, match=f"m.onnx.*{needle}"):
        edgepilot.load(path)


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and old in data
    return data.replace(old, new)


def test_invalid_utf8_in_onnx_names_and_metadata(tmp_path):
    raw = shipped_model("stoplight").read_bytes()
    # The input's name, everywhere it is written (graph input and the nodes reading it).
    names = tmp_path / "names.onnx"
    names.write_bytes(_patched(raw, b"\x05input", b"\x05\xffnpu\xfe"))
    with pytest.raises(ModelFileError, match="names.onnx"):
        edgepilot.load(names)
    meta = tmp_path / "meta.onnx"
    meta.write_bytes(_patched(raw, b'"stoplight"', b'"\xffstoplig\xfe"'))
    with pytest.raises(ModelFileError, match="meta.onnx"):
        edgepilot.load(meta)


def test_invalid_utf8_in_tflite_tensor_names(tiny_tflite, tmp_path):
    raw = Path(tiny_tflite["fp32"]).read_bytes()
    name = edgepilot.load(tiny_tflite["fp32"]).inputs[0].name.encode()
    bad = tmp_path / "names.tflite"
    bad.write_bytes(_patched(raw, name, b"\xff" + name[1:]))
    with pytest.raises(ModelFileError, match="names.tflite"):
        edgepilot.load(bad)


def test_invalid_utf8_in_an_inner_tensor_name_is_refused_first(tiny_tflite, tmp_path):
    """An inner tensor's name that is not UTF-8 is refused before the interpreter sees it
    (in a child process: LiteRT's error paths on corrupt files have aborted the process)."""
    raw = Path(tiny_tflite["fp32"]).read_bytes()
    model = edgepilot.load(tiny_tflite["fp32"])
    outer = {t.name for t in model.inputs + model.outputs}
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(raw, 0))
    inner = next(t.name for t in tree.subgraphs[0].tensors
                 if t.name.decode() not in outer and len(t.name) > 8 and raw.count(t.name) == 1)
    bad = tmp_path / "inner.tflite"
    bad.write_bytes(_patched(raw, inner, inner[:4] + b"\xb5" + inner[5:]))
    out = _load_in_child(bad)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-1000:]}"
    assert "refused:" in out.stdout and "a tensor's name is not UTF-8" in out.stdout


def _load_in_child(path: Path) -> subprocess.CompletedProcess:
    code = ("import sys, edgepilot\n"
            "try:\n    edgepilot.load(sys.argv[1])\n"
            "except edgepilot.ModelFileError as err:\n    print('refused:', err)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=300)


def test_a_requantization_scale_litert_aborts_on_is_refused(tiny_tflite, tmp_path):
    """Found by the fuzz run (one flipped exponent byte in a per-channel weight scale): when
    in_scale * weight_scale / out_scale of a quantized CONV_2D reaches 256, XNNPACK refuses
    the op and LiteRT 2.3 then aborts the process ("double free or corruption"). In a child
    process, so that a regression fails this test instead of killing the run."""
    from flatbuffers import number_types as N

    from edgepilot.runtime.flatbuffer import _all, _root
    from edgepilot.runtime.tflite_guards import _REQUANTIZED

    raw = bytearray(Path(tiny_tflite["int8"]).read_bytes())
    root = _root(bytes(raw))
    codes = [max(c.scalar(0, N.Int8Flags), c.scalar(3, N.Int32Flags))
             for c in _all(root, 1, len(raw))]
    graph = _all(root, 2, len(raw))[0]
    tensors = _all(graph, 0, len(raw))
    conv = next(op for op in _all(graph, 3, len(raw))
                if _REQUANTIZED.get(codes[op.scalar(0, N.Uint32Flags)]) == "CONV_2D")
    x, w, y = (tensors[i].table(4) for i in (*conv.ints(1)[:2], conv.ints(2)[0]))
    weight_scale = 300 * y.floats(2)[0] / x.floats(2)[0]  # requantization scale 300
    start, _ = w.vector(2)
    raw[start:start + 4] = struct.pack("<f", weight_scale)
    bad = tmp_path / "scale.tflite"
    bad.write_bytes(bytes(raw))
    out = _load_in_child(bad)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-1000:]}"
    assert "refused:" in out.stdout and "requantization scale of 300" in out.stdout


def test_a_tflite_input_shape_of_gigabytes_is_refused_before_the_interpreter(tiny_tflite,
                                                                              tmp_path):
    """Found by the fuzz run: one flipped byte made an input 1x64x1048640x3, and the
    interpreter allocated 1.5 GB at load before failing. Shapes are bounded first."""
    from edgepilot.runtime.flatbuffer import _all, _root

    raw = bytearray(Path(tiny_tflite["fp32"]).read_bytes())
    graph = _all(_root(bytes(raw)), 2, len(raw))[0]
    image = _all(graph, 0, len(raw))[graph.ints(1)[0]]
    start, _ = image.vector(0)  # shape (1, 32, 32, 3) as int32
    assert struct.unpack_from("<4i", raw, start) == (1, 32, 32, 3)
    struct.pack_into("<i", raw, start + 8, 1 << 20)
    bad = tmp_path / "wide.tflite"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="input tensor claims 100,663,296 elements"):
        edgepilot.load(bad)


def test_invalid_utf8_in_tflite_labels_and_metadata(tiny_tflite, tmp_path):
    from edgepilot.runtime.tflite_metadata import read_metadata

    raw = Path(tiny_tflite["fp32"]).read_bytes()
    labels = tmp_path / "labels.tflite"
    labels.write_bytes(_with_zip(raw, {"labels.txt": b"red\n\xff\xfe\nx\ny\n"}))
    with pytest.raises(ModelFileError, match="labels.tflite.*labels.txt' is not UTF-8"):
        edgepilot.load(labels)
    entry = read_metadata(raw).edgepilot_json.encode()
    meta = tmp_path / "meta.tflite"
    meta.write_bytes(_patched(raw, entry, entry.replace(b'"tiny"', b'"\xffin\xfe"')))
    with pytest.raises(ModelFileError, match="meta.tflite.*edgepilot metadata is not UTF-8"):
        edgepilot.load(meta)


def test_corrupt_tflite_metadata_flatbuffer(tiny_tflite, tmp_path):
    from edgepilot.runtime.tflite_metadata import STANDARD_NAME, _named_buffers

    raw = Path(tiny_tflite["fp32"]).read_bytes()
    standard = _named_buffers(raw, (STANDARD_NAME,))[STANDARD_NAME]
    at = raw.index(standard)
    # Offsets all pointing far past the end: flatbuffers fails with struct.error/IndexError.
    corrupt = bytearray(raw)
    corrupt[at + 8:at + 8 + 64] = b"\xff" * 64
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(ModelFileError, match="corrupt.tflite"):
        edgepilot.load(bad)


def test_edgepilot_info_on_hostile_files(tmp_path):
    from edgepilot.info import inspect_model

    pytest.importorskip("onnx")
    for entry in ("[1]", "[" * 100_000):
        path = onnx_with_meta(tmp_path, entry)
        with pytest.raises(ModelFileError, match="m.onnx"):
            inspect_model(path)
    raw = shipped_model("stoplight").read_bytes()
    names = tmp_path / "names.onnx"
    names.write_bytes(_patched(raw, b"\x05input", b"\x05\xffnpu\xfe"))
    with pytest.raises(ModelFileError, match="names.onnx"):
        inspect_model(names)


def test_checkpoint_config_is_checked_before_building_the_model(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import edgepilot.train.checkpoint as checkpoint
    from edgepilot.train.models import create_model

    net = create_model("stoplight_cnn", num_classes=4, width=8)
    payload = {"format_version": 1, "arch": "stoplight_cnn",
               "config": {"num_classes": 4, "width": 4000},  # would build a 7.8 GB model
               "meta": STOPLIGHT_META, "metrics": {}, "state_dict": net.state_dict()}
    torch.save(payload, tmp_path / "wide.pt")
    built = []

    def spy(arch, **config):  # records where each model was built
        model = create_model(arch, **config)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(checkpoint, "create_model", spy)
    with pytest.raises(ModelFileError, match="do not fit"):
        checkpoint.load_checkpoint(tmp_path / "wide.pt")
    assert built == ["meta"]  # only the shape-only skeleton, which holds no memory
    payload["meta"] = {**STOPLIGHT_META, "input_size": [20000, 20000]}
    payload["config"] = {"num_classes": 4, "width": 8}
    torch.save(payload, tmp_path / "huge_input.pt")
    with pytest.raises(ModelFileError, match="larger than 4096"):
        checkpoint.load_checkpoint(tmp_path / "huge_input.pt")


def test_info_counts_macs_of_a_large_input_without_allocating(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from edgepilot.info import inspect_model
    from edgepilot.train.checkpoint import save_checkpoint
    from edgepilot.train.models import create_model

    net = create_model("stoplight_cnn", num_classes=4, width=8)
    small, big = (ModelMeta.from_json(meta_json(input_size=[s, s])) for s in (64, 4096))
    save_checkpoint(tmp_path / "small.pt", net, arch="stoplight_cnn",
                    config={"num_classes": 4, "width": 8}, meta=small)
    save_checkpoint(tmp_path / "big.pt", net, arch="stoplight_cnn",
                    config={"num_classes": 4, "width": 8}, meta=big)
    real_zeros = torch.zeros
    devices = []

    def spy(*args, **kwargs):
        if args == (big.input_shape,):  # the input the model is run on
            devices.append(str(kwargs.get("device", "cpu")))
        return real_zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", spy)
    info_big = inspect_model(tmp_path / "big.pt")
    monkeypatch.undo()
    assert devices == ["meta"]
    # Convolution MACs grow with the pixel count (64x64 -> 4096x4096 is 4096 times more);
    # the head's do not, so the ratio is a little under 4096.
    ratio = info_big.macs / inspect_model(tmp_path / "small.pt").macs
    assert 3000 < ratio <= 4096


# --------------------------------------------------------------- 5. external data


def _external(tmp_path: Path, location: str) -> Path:
    onnx = pytest.importorskip("onnx")
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    model = onnx.load(str(shipped_model("stoplight")))
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.data")
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(folder / "m.onnx"))
    return folder / "m.onnx"


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _external(tmp_path, "m.data")
    model = edgepilot.load(path)
    expected = edgepilot.load(shipped_model("stoplight"))
    x = np.random.default_rng(0).normal(size=(1, 3, SIDE, SIDE)).astype(np.float32)
    np.testing.assert_allclose(model(x), expected(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("location,reason", [
    ("../m.data", "a path with '..'"),
    ("sub/../../m.data", "a path with '..'"),
    ("/etc/passwd", "an absolute path"),
    ("C:\\Windows\\win.ini", "an absolute path"),
    ("link.data", "a link that leads outside the model's folder"),
])
def test_external_data_outside_the_folder_is_refused(tmp_path, location, reason):
    path = _external(tmp_path, location)
    os.replace(path.parent / "m.data", tmp_path / "m.data")  # the data now sits outside
    (path.parent / "link.data").symlink_to(tmp_path / "m.data")
    with pytest.raises(ModelFileError, match=f"m.onnx.*{reason}.*refusing"):
        edgepilot.load(path)


# --------------------------------------------------------------- 8. silent wrong answers


class EchoBackend(Backend):
    """Returns what it was fed, so a test sees what the wrapper passed on."""

    description = "echo"
    meta_json = None

    def __init__(self, info: TensorInfo, output=None):
        self.inputs, self.outputs, self.output = [info], [info], output

    def run(self, arrays):
        return [self.output if self.output is not None else arrays[0]]


def _model(info: TensorInfo, output=None, meta=None) -> Model:
    return Model(EchoBackend(info, output), meta=meta, path=Path("m.tflite"),
                 format=FORMATS[0])


def test_uint8_pixels_into_an_int8_model_are_quantized_not_wrapped():
    # TFLite int8 image models: real = 1.0 * (q + 128), so pixel 200 is q = 72.
    model = _model(TensorInfo("x", (1, 3), np.dtype(np.int8), 1.0, -128))
    fed = model(np.array([[0, 200, 255]], np.uint8))
    np.testing.assert_array_equal(fed, [[0, 200, 255]])  # dequantized back: the same pixels
    raw = model._backend.run([model._backend.inputs[0].quantize(np.array([[200.0]]))])
    assert raw[0].tolist() == [[72]]


@pytest.mark.parametrize("x,needle", [
    (np.array([[np.nan, 0, 0]], np.float32), "NaN or infinite"),
    (np.array([[np.inf, 0, 0]], np.float64), "NaN or infinite"),
    (np.array([["a", "b", "c"]]), "real numbers, got dtype <U1"),
    (np.array([[1, None, 3]], dtype=object), "real numbers, got dtype object"),
    (np.array([[1e300, 0, 0]]), "too large for float32"),
    ([[1, 2], [3]], "numeric arrays"),
])
def test_bad_values_are_input_errors(x, needle):
    model = _model(TensorInfo("x", (1, 3), np.dtype(np.float32)))
    with pytest.raises(InputError, match=needle):
        model(x)


def test_values_outside_an_integer_input_are_refused():
    model = _model(TensorInfo("ids", (1, 3), np.dtype(np.int8)))  # not quantized: raw ints
    with pytest.raises(InputError, match="holds -128..127; got values 0..200"):
        model(np.array([[0, 200, 5]], np.int64))
    with pytest.raises(InputError, match="whole numbers"):
        model(np.array([[0.5, 1, 2]], np.float32))
    assert model(np.array([[1, -2, 3]], np.int64)).tolist() == [[1, -2, 3]]


def test_nan_outputs_are_not_a_prediction():
    meta = ModelMeta(name="m", labels=("a", "b", "c"), input_size=(1, 3), layout="NC",
                     color="GRAY", mean=(0.0,), std=(1.0,), preprocess="none")
    model = _model(TensorInfo("x", (1, 3), np.dtype(np.float32)),
                   output=np.array([[np.nan, 0, 1]], np.float32), meta=meta)
    with pytest.raises(ModelFileError, match="non-finite outputs"):
        model.predict_inputs([0, 0, 1])


# --------------------------------------------------------------- issue #16: empty entries


@pytest.mark.parametrize("entry", ["", "{}", " { } "])
def test_empty_edgepilot_entry_is_no_metadata(tmp_path, entry):
    model = edgepilot.load(onnx_with_meta(tmp_path, entry))
    assert model.meta is None
    assert model(np.zeros((1, 3, SIDE, SIDE), np.float32)).shape == (1, 4)
