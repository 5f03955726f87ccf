"""The standard TFLite model metadata, read and written with `flatbuffers` alone.

A ".tflite with metadata" (what Android/iOS task libraries and MediaPipe read) holds:
  * a `ModelMetadata` flatbuffer (file identifier "M001", metadata_schema.fbs) in one of the
    model's buffers, named "TFLITE_METADATA" in the model's `metadata` list;
  * associated files (labels.txt) in an uncompressed zip appended after the flatbuffer.
edgepilot adds its own `ModelMeta` JSON as a second named buffer, "edgepilot".

Reading needs only `flatbuffers` (through the bounded reader in flatbuffer.py, after the
checks in tflite_guards.py), so the runtime can read the metadata of any file; writing
repacks the model with the TFLite schema that ai-edge-litert ships.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import numpy as np

from edgepilot.errors import ModelFileError, require
from edgepilot.runtime.flatbuffer import _root, _utf8
from edgepilot.runtime.tflite_guards import _check_names, _check_quantization, _check_sizes

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
    files: dict[str, bytes] = field(default_factory=dict)  # the associated files read


# Bounds on what is read from a file, so that a hostile one cannot make the reader allocate
# or loop without end (flatbuffer.py bounds the flatbuffer's vectors). Real files hold a
# handful of entries and a labels.txt of kilobytes.
#: Most members in the appended zip, and the largest associated file read (uncompressed).
MAX_ZIP_MEMBERS = 1024
MAX_FILE_BYTES = 16 << 20


def _named_buffers(model: bytes, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The model's `metadata` entries named in `wanted`: name -> bytes of their buffer."""
    from flatbuffers import number_types as N

    root = _root(model)
    # Large models have many buffers: index into the vector rather than read them all.
    start, count = root.vector(_MODEL_BUFFERS, limit=len(model))
    named = {}
    for entry in root.tables(_MODEL_METADATA):
        name, index = entry.string(0), entry.scalar(1, N.Uint32Flags)
        if name in wanted and index < count:
            named[name] = root.table_at(start, index).bytes(0)
    return named


def _associated_files(model: bytes, names: set[str]) -> dict[str, bytes]:
    """The members `names` of the zip appended to the model, read within bounds: no more
    than MAX_FILE_BYTES each however large the zip claims (or inflates) them to be."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(model))
    except zipfile.BadZipFile:
        return {}  # no zip appended: the files are simply missing
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise ValueError(f"the appended zip has {len(infos):,} members, more than "
                             f"{MAX_ZIP_MEMBERS:,}")
        files = {}
        for info in infos:
            if info.filename not in names or info.filename in files:
                continue
            if info.file_size > MAX_FILE_BYTES:
                raise ValueError(f"'{info.filename}' in the appended zip is "
                                 f"{info.file_size:,} bytes, more than {MAX_FILE_BYTES:,}")
            with archive.open(info) as member:  # a lying header: read no more than the bound
                data = member.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"'{info.filename}' in the appended zip inflates to more "
                                 f"than {MAX_FILE_BYTES:,} bytes")
            files[info.filename] = data
        return files


def read_metadata(model: bytes, source: object = "the model") -> TfliteMetadata:
    """Read the standard metadata (labels, normalisation) and edgepilot's JSON of a model.

    Args:
        model: the .tflite file's bytes.
        source: the file's name, for error messages.

    Raises:
        ModelFileError: the file is not a TFLite flatbuffer, or its metadata, names or
            appended zip are corrupt or exceed the bounds above.
    """
    if model[4:8] != _MODEL_ID:
        raise ModelFileError(f"'{source}' is not a TFLite flatbuffer (file identifier is not "
                             "TFL3)")
    # The one place where this parser's failures become an edgepilot error: a corrupt
    # flatbuffer fails with struct.error, IndexError, TypeError...; a corrupt zip with
    # BadZipFile, zlib.error, EOFError, NotImplementedError...
    try:
        return _read(model)
    except MemoryError as err:
        raise ModelFileError(f"Reading the TFLite metadata of '{source}' needs more memory "
                             "than allowed") from err
    except Exception as err:  # noqa: BLE001 - see above
        from edgepilot.runtime.backend import describe

        raise ModelFileError(f"Corrupt TFLite file '{source}': {describe(err)}") from err


def _read(model: bytes) -> TfliteMetadata:
    from flatbuffers import number_types as N

    from edgepilot.meta import MAX_LABELS

    _check_names(model)
    _check_quantization(model)
    _check_sizes(model)
    named = _named_buffers(model, (EDGEPILOT_NAME, STANDARD_NAME))
    result = TfliteMetadata()
    if EDGEPILOT_NAME in named:
        result.edgepilot_json = _utf8(named[EDGEPILOT_NAME], "the edgepilot metadata")
    standard = named.get(STANDARD_NAME)
    if not standard or standard[4:8] != _METADATA_ID:
        return result
    root = _root(standard)
    result.name = root.string(0)
    label_files = []
    for subgraph in root.tables(3)[:1]:
        for tensor in subgraph.tables(2)[:1]:  # the image input
            content = tensor.table(3)
            if content and content.scalar(0, N.Uint8Flags) == _CONTENT_IMAGE:
                props = content.table(1)
                if props:
                    result.color = _COLOR.get(props.scalar(0, N.Int8Flags))
                    size = props.table(1)
                    if size:
                        result.image_size = (size.scalar(0, N.Uint32Flags),
                                             size.scalar(1, N.Uint32Flags))
            for unit in tensor.tables(4):
                options = unit.table(1)
                if unit.scalar(0, N.Uint8Flags) == _UNIT_NORMALIZATION and options:
                    result.mean, result.std = options.floats(0), options.floats(1)
        for tensor in subgraph.tables(3)[:1]:  # the scores output
            label_files += [afile.string(0) for afile in tensor.tables(6)
                            if afile.scalar(2, N.Int8Flags) == _TENSOR_AXIS_LABELS]
    if label_files:
        result.files = _associated_files(model, set(label_files))
        text = _utf8(result.files.get(label_files[0], b""), f"'{label_files[0]}'")
        result.labels = [line for line in text.splitlines() if line]
        if len(result.labels) > MAX_LABELS:
            raise ValueError(f"'{label_files[0]}' has {len(result.labels):,} labels, more "
                             f"than {MAX_LABELS:,}")
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
