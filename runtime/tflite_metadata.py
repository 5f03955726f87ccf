"""The standard TFLite model metadata, read and written with `flatbuffers` alone.

A ".tflite with metadata" (what Android/iOS task libraries and MediaPipe read) holds:
  * a `ModelMetadata` flatbuffer (file identifier "M001", metadata_schema.fbs) in one of the
    model's buffers, named "TFLITE_METADATA" in the model's `metadata` list;
  * associated files (labels.txt) in an uncompressed zip appended after the flatbuffer.
edgepilot adds its own `ModelMeta` JSON as a second named buffer, "edgepilot".

Tables are addressed by field slot (declaration order in the .fbs; a union takes two slots,
type then value). Reading needs only `flatbuffers`, so the runtime can read the metadata of any
file; writing repacks the model with the TFLite schema that ai-edge-litert ships.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import numpy as np

from edgepilot.errors import ModelFileError, require

__all__ = ["TfliteMetadata", "read_metadata", "write_metadata", "build_metadata"]

STANDARD_NAME = "TFLITE_METADATA"
EDGEPILOT_NAME = "edgepilot"
_METADATA_ID = b"M001"
_MODEL_ID = b"TFL3"
# Enum values from metadata_schema.fbs
_COLOR = {1: "RGB", 2: "GRAYSCALE"}
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2
_UNIT_NORMALIZATION = 1
_TENSOR_AXIS_LABELS = 2
# Field slots of the tables used (schema.fbs and metadata_schema.fbs)
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6


@dataclass
class TfliteMetadata:
    """What edgepilot reads back from a .tflite file."""

    name: str | None = None
    color: str | None = None
    image_size: tuple[int, int] | None = None  # (width, height) as the schema stores it
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    edgepilot_json: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)


class _Table:
    """Reads a flatbuffers table by slot number."""

    def __init__(self, buf: bytes, pos: int):
        from flatbuffers.table import Table

        self.t = Table(buf, pos)

    def _offset(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot)

    def scalar(self, slot: int, flags, default=0):
        o = self._offset(slot)
        return self.t.Get(flags, o + self.t.Pos) if o else default

    def string(self, slot: int) -> str | None:
        o = self._offset(slot)
        return self.t.String(o + self.t.Pos).decode() if o else None

    def table(self, slot: int) -> _Table | None:
        o = self._offset(slot)
        return _Table(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot: int) -> list[_Table]:
        o = self._offset(slot)
        if not o:
            return []
        start = self.t.Vector(o)
        return [_Table(self.t.Bytes, self.t.Indirect(start + 4 * i))
                for i in range(self.t.VectorLen(o))]

    def floats(self, slot: int) -> list[float]:
        from flatbuffers import number_types as N

        o = self._offset(slot)
        if not o:
            return []
        start = self.t.Vector(o)
        return [self.t.Get(N.Float32Flags, start + 4 * i) for i in range(self.t.VectorLen(o))]

    def bytes(self, slot: int) -> bytes:
        o = self._offset(slot)
        if not o:
            return b""
        start = self.t.Vector(o)
        return bytes(self.t.Bytes[start:start + self.t.VectorLen(o)])


def _root(buf: bytes) -> _Table:
    from flatbuffers import encode
    from flatbuffers import number_types as N

    return _Table(buf, encode.Get(N.UOffsetTFlags.packer_type, buf, 0))


def _named_buffers(model: bytes) -> dict[str, bytes]:
    """The model's `metadata` entries: name -> bytes of the buffer they point to."""
    from flatbuffers import number_types as N

    root = _root(model)
    buffers = root.tables(_MODEL_BUFFERS)
    named = {}
    for entry in root.tables(_MODEL_METADATA):
        index = entry.scalar(1, N.Uint32Flags)
        if entry.string(0) and index < len(buffers):
            named[entry.string(0)] = buffers[index].bytes(0)
    return named


def _appended_files(model: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


def read_metadata(model: bytes) -> TfliteMetadata:
    """Read the standard metadata (labels, normalisation) and edgepilot's JSON of a model."""
    from flatbuffers import number_types as N

    if model[4:8] != _MODEL_ID:
        raise ModelFileError("not a TFLite flatbuffer (file identifier is not TFL3)")
    named = _named_buffers(model)
    result = TfliteMetadata(files=_appended_files(model))
    if EDGEPILOT_NAME in named:
        result.edgepilot_json = named[EDGEPILOT_NAME].decode()
    standard = named.get(STANDARD_NAME)
    if not standard or standard[4:8] != _METADATA_ID:
        return result
    root = _root(standard)
    result.name = root.string(0)
    for subgraph in root.tables(3)[:1]:
        for tensor in subgraph.tables(2)[:1]:  # the image input
            content = tensor.table(3)
            if content and content.scalar(0, N.Uint8Flags) == _CONTENT_IMAGE:
                props = content.table(1)
                result.color = _COLOR.get(props.scalar(0, N.Int8Flags))
                size = props.table(1)
                if size:
                    result.image_size = (size.scalar(0, N.Uint32Flags),
                                         size.scalar(1, N.Uint32Flags))
            for unit in tensor.tables(4):
                if unit.scalar(0, N.Uint8Flags) == _UNIT_NORMALIZATION:
                    result.mean, result.std = unit.table(1).floats(0), unit.table(1).floats(1)
        for tensor in subgraph.tables(3)[:1]:  # the scores output
            for afile in tensor.tables(6):
                if afile.scalar(2, N.Int8Flags) == _TENSOR_AXIS_LABELS:
                    text = result.files.get(afile.string(0), b"").decode()
                    result.labels = [line for line in text.splitlines() if line]
    return result


# --------------------------------------------------------------------------- writing


def _table(builder, fields: list[tuple[int, str, object]]) -> int:
    """Build a table from (slot, kind, value); kind is off, u8, i8, u32 or i32."""
    builder.StartObject(max((s for s, _, _ in fields), default=-1) + 1)
    prepend = {"off": builder.PrependUOffsetTRelativeSlot, "u8": builder.PrependUint8Slot,
               "i8": builder.PrependInt8Slot, "u32": builder.PrependUint32Slot,
               "i32": builder.PrependInt32Slot}
    for slot, kind, value in fields:
        if value is not None:
            prepend[kind](slot, value, 0)
    return builder.EndObject()


def _offsets(builder, items: list[int]) -> int:
    builder.StartVector(4, len(items), 4)
    for item in reversed(items):
        builder.PrependUOffsetTRelative(item)
    return builder.EndVector()


def _float_vector(builder, values) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(list(values)):
        builder.PrependFloat32(float(value))
    return builder.EndVector()


def build_metadata(*, name: str, description: str, version: str, width: int, height: int,
                   mean: list[float], std: list[float], num_classes: int,
                   labels_file: str = "labels.txt", output_is_probability: bool = True) -> bytes:
    """The ModelMetadata flatbuffer of an image classifier: RGB image input with
    `NormalizationOptions` (input = (pixel - mean) / std) and a scores output whose labels are
    in `labels_file` (TENSOR_AXIS_LABELS)."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    size = _table(b, [(0, "u32", width), (1, "u32", height)])
    image = _table(b, [(0, "i8", 1), (1, "off", size)])  # ImageProperties(RGB, default_size)
    content_in = _table(b, [(0, "u8", _CONTENT_IMAGE), (1, "off", image)])
    norm = _table(b, [(0, "off", _float_vector(b, mean)), (1, "off", _float_vector(b, std))])
    unit = _table(b, [(0, "u8", _UNIT_NORMALIZATION), (1, "off", norm)])
    stats_in = _table(b, [(0, "off", _float_vector(b, [(255 - m) / s for m, s in zip(mean, std)])),
                          (1, "off", _float_vector(b, [-m / s for m, s in zip(mean, std)]))])
    tensor_in = _table(b, [(0, "off", b.CreateString("image")),
                           (1, "off", b.CreateString("RGB image, channels last.")),
                           (3, "off", content_in), (4, "off", _offsets(b, [unit])),
                           (5, "off", stats_in)])
    labels = _table(b, [(0, "off", b.CreateString(labels_file)),
                        (1, "off", b.CreateString("Class labels, one per line.")),
                        (2, "i8", _TENSOR_AXIS_LABELS)])
    content_out = _table(b, [(0, "u8", _CONTENT_FEATURE), (1, "off", _table(b, []))])
    stats_out = None
    if output_is_probability:
        stats_out = _table(b, [(0, "off", _float_vector(b, [1.0])),
                               (1, "off", _float_vector(b, [0.0]))])
    kind = "Probabilities" if output_is_probability else "Scores (logits)"
    tensor_out = _table(b, [(0, "off", b.CreateString("scores")),
                            (1, "off", b.CreateString(f"{kind} of the {num_classes} labels.")),
                            (3, "off", content_out), (5, "off", stats_out),
                            (6, "off", _offsets(b, [labels]))])
    subgraph = _table(b, [(2, "off", _offsets(b, [tensor_in])),
                          (3, "off", _offsets(b, [tensor_out]))])
    root = _table(b, [(0, "off", b.CreateString(name)), (1, "off", b.CreateString(description)),
                      (2, "off", b.CreateString(version)), (3, "off", _offsets(b, [subgraph])),
                      (7, "off", b.CreateString("1.0.0"))])  # min_parser_version
    b.Finish(root, file_identifier=_METADATA_ID)
    return bytes(b.Output())


def write_metadata(model: bytes, *, standard: bytes | None, edgepilot_json: str,
                   files: dict[str, bytes]) -> bytes:
    """Model bytes with the metadata buffers and the associated files appended as a zip.

    `standard` None writes edgepilot's entry only (models whose input is not an image).
    Writing twice replaces the entries rather than adding more."""
    flatbuffers = require("flatbuffers", "tflite", "Writing TFLite metadata")
    schema = require("ai_edge_litert.schema_py_generated", "tflite", "Writing TFLite metadata")
    model = _strip_zip(model)
    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    for buffer in tree.buffers or []:
        # Newer writers (ai-edge-quantizer on larger models) keep weights after the flatbuffer,
        # addressed by absolute offset; bring them inline so the repacked file is whole.
        if (getattr(buffer, "offset", 0) or 0) > 1:
            end = buffer.offset + buffer.size
            if end > len(model):
                raise ModelFileError("the .tflite's weights point past the end of the file")
            buffer.data = np.frombuffer(model[buffer.offset:end], np.uint8)
            buffer.offset = buffer.size = 0
    tree.metadata = [m for m in tree.metadata or []]
    entries = [(EDGEPILOT_NAME, edgepilot_json.encode())]
    if standard is not None:
        entries.insert(0, (STANDARD_NAME, standard))
    for name, payload in entries:
        data = np.frombuffer(payload, np.uint8)
        existing = [m for m in tree.metadata if _text(m.name) == name]
        if existing:
            tree.buffers[existing[0].buffer].data = data
            continue
        buffer = schema.BufferT()
        buffer.data = data
        tree.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(tree.buffers) - 1
        tree.metadata.append(entry)

    class AlignedBuilder(flatbuffers.Builder):
        # The object API packs Buffer.data 1-byte aligned; the TFLite schema asks for 16
        # (force_align), which memory-mapping interpreters rely on.
        def CreateNumpyVector(self, x):
            if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.size):
                return super().CreateNumpyVector(x)
            data = x.tobytes()
            self.StartVector(1, len(data), 16)
            self.head = self.Head() - len(data)
            self.Bytes[self.Head():self.Head() + len(data)] = data
            self.vectorNumElems = len(data)
            return self.EndVector()

    builder = AlignedBuilder(len(model) + len(standard or b"") + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=_MODEL_ID)
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _strip_zip(model: bytes) -> bytes:
    """The flatbuffer part of a model, without a previously appended zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            infos = archive.infolist()
            return model[:min(i.header_offset for i in infos)] if infos else model
    except zipfile.BadZipFile:
        return model
