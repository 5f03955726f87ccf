"""Checks that refuse a hostile .tflite before the LiteRT interpreter loads it: names that are
not UTF-8, quantized ops XNNPACK cannot requantize and tensor shapes claiming gigabytes, each
of which crashes or exhausts the interpreter; they raise ValueError, which
`tflite_metadata.read_metadata` turns into a ModelFileError."""

from __future__ import annotations

from edgepilot.runtime.flatbuffer import _all, _root, _Table


def _check_names(model: bytes) -> None:
    """Every name in the model (tensors, subgraphs, signatures, custom ops) must be UTF-8:
    LiteRT 2.3 corrupts its heap and aborts the process (a double free in
    allocate_tensors) on a tensor name that is not, so this runs before the interpreter."""
    root = _root(model)
    whole = len(model)  # a real model may have thousands of tensors: bound by the file

    def check(table: _Table, slot: int, what: str) -> None:
        try:
            table.string(slot)
        except ValueError as err:
            raise ValueError(f"{what} is not UTF-8 text") from err

    for code in _all(root, 1, whole):
        check(code, 1, "a custom op's name")
    for subgraph in _all(root, 2, whole):
        check(subgraph, 4, "a subgraph's name")
        for tensor in _all(subgraph, 0, whole):
            check(tensor, 3, "a tensor's name")
    for signature in _all(root, 7, whole):
        check(signature, 2, "a signature's name")
        for slot in (0, 1):
            for tensor_map in _all(signature, slot, whole):
                check(tensor_map, 0, "a signature's tensor name")


# Builtin codes of the ops XNNPACK requantizes as in * weight / out (schema.fbs).
_REQUANTIZED = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED",
                67: "TRANSPOSE_CONV"}
#: XNNPACK refuses a requantization scale of 256 or more; LiteRT 2.3 then frees memory twice
#: and aborts the process, so such a file must not reach the interpreter.
MAX_REQUANTIZATION_SCALE = 256.0


def _check_quantization(model: bytes) -> None:
    """Refuse quantized convolutions and fully connected layers whose scales XNNPACK cannot
    requantize (in_scale * weight_scale / out_scale >= 256): real models stay far below 1."""
    from flatbuffers import number_types as N

    root = _root(model)
    whole = len(model)
    codes = [max(c.scalar(0, N.Int8Flags), c.scalar(3, N.Int32Flags))
             for c in _all(root, 1, whole)]
    for subgraph in _all(root, 2, whole):
        tensors = _all(subgraph, 0, whole)

        def scales(index: int, tensors=tensors) -> list[float]:
            if not 0 <= index < len(tensors):
                return []
            quantization = tensors[index].table(4)
            return quantization.floats(2) if quantization else []

        for op in _all(subgraph, 3, whole):
            index = op.scalar(0, N.Uint32Flags)
            name = _REQUANTIZED.get(codes[index] if index < len(codes) else -1)
            ins, outs = op.ints(1, whole), op.ints(2, whole)
            if not name or len(ins) < 2 or not outs:
                continue
            x, w, y = scales(ins[0]), scales(ins[1]), scales(outs[0])
            if len(x) != 1 or len(y) != 1 or not w or y[0] <= 0:
                continue  # float, or quantized in a way the interpreter checks itself
            worst = max(x[0] * s / y[0] for s in w)
            if not worst < MAX_REQUANTIZATION_SCALE:  # also catches NaN
                raise ValueError(f"a quantized {name} has a requantization scale of "
                                 f"{worst:.3g}; LiteRT supports less than "
                                 f"{MAX_REQUANTIZATION_SCALE:g}")


#: Most bytes of all the activation tensors (not constants) a model's shapes may claim: the
#: interpreter allocates them at load, before edgepilot could compare them with anything.
MAX_ACTIVATION_BYTES = 1 << 30
#: Most elements of one input tensor: a 4096x4096 RGB image.
MAX_INPUT_ELEMENTS = 4096 * 4096 * 3
# TensorType -> bytes per element (schema.fbs); 8 for types not listed.
_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 6: 1, 7: 2, 9: 1, 15: 4, 16: 2, 17: 1, 18: 2}


def _check_sizes(model: bytes) -> None:
    """Refuse a model whose tensor shapes claim more than MAX_ACTIVATION_BYTES of
    activations (one flipped byte in a shape can ask for gigabytes)."""
    from flatbuffers import number_types as N

    root = _root(model)
    whole = len(model)
    buffers = _all(root, 4, whole)

    def constant(index: int) -> bool:
        if not 0 < index < len(buffers):
            return False
        return buffers[index].vector(0, whole)[1] > 0 or \
            buffers[index].scalar(1, N.Uint64Flags) > 1  # weights stored after the flatbuffer

    def elements(tensor: _Table) -> int:
        count = 1
        for dim in tensor.ints(0, whole):
            count *= max(dim, 1)
        return count

    total = 0
    for subgraph in _all(root, 2, whole):
        tensors = _all(subgraph, 0, whole)
        # The inputs drive the shapes the interpreter computes at load: bound them as
        # ModelMeta bounds what predict feeds (4096x4096, 3 channels).
        for index in subgraph.ints(1, whole):
            if 0 <= index < len(tensors) and elements(tensors[index]) > MAX_INPUT_ELEMENTS:
                raise ValueError(f"an input tensor claims {elements(tensors[index]):,} "
                                 f"elements, more than {MAX_INPUT_ELEMENTS:,}")
        for tensor in tensors:
            if constant(tensor.scalar(2, N.Uint32Flags)):
                continue  # its bytes are in the file, whose size bounds them
            total += elements(tensor) * _ITEMSIZE.get(tensor.scalar(1, N.Int8Flags), 8)
            if total > MAX_ACTIVATION_BYTES:
                raise ValueError(f"its tensor shapes claim more than {MAX_ACTIVATION_BYTES:,} "
                                 "bytes of activations (a corrupt shape?)")
