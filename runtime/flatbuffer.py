"""A bounded flatbuffers table reader for model files that may be hostile: tables are read by
field slot (declaration order in the .fbs; a union takes two slots, type then value), every
read is bounds-checked and vector lengths are capped, so a corrupt file raises rather than
allocating or looping without end."""

from __future__ import annotations

#: Most entries in any flatbuffer vector read (tables, floats); the model's buffers excepted.
MAX_VECTOR = 4096


class _Table:
    """Reads a flatbuffers table by slot number. Every read is bounds-checked by the
    flatbuffers runtime (struct.error, IndexError); vector lengths are bounded here."""

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
        return _utf8(self.t.String(o + self.t.Pos), "a string") if o else None

    def table(self, slot: int) -> _Table | None:
        o = self._offset(slot)
        return _Table(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def vector(self, slot: int, limit: int = MAX_VECTOR) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        o = self._offset(slot)
        if not o:
            return 0, 0
        start, length = self.t.Vector(o), self.t.VectorLen(o)
        if length > limit or start + length > len(self.t.Bytes):
            raise ValueError(f"a vector of {length:,} entries does not fit the file")
        return start, length

    def table_at(self, start: int, i: int) -> _Table:
        return _Table(self.t.Bytes, self.t.Indirect(start + 4 * i))

    def tables(self, slot: int) -> list[_Table]:
        start, length = self.vector(slot)
        return [self.table_at(start, i) for i in range(length)]

    def floats(self, slot: int) -> list[float]:
        from flatbuffers import number_types as N

        start, length = self.vector(slot)
        return [self.t.Get(N.Float32Flags, start + 4 * i) for i in range(length)]

    def ints(self, slot: int, limit: int = MAX_VECTOR) -> list[int]:
        from flatbuffers import number_types as N

        start, length = self.vector(slot, limit)
        return [self.t.Get(N.Int32Flags, start + 4 * i) for i in range(length)]

    def bytes(self, slot: int) -> bytes:
        start, length = self.vector(slot, limit=len(self.t.Bytes))
        return bytes(self.t.Bytes[start:start + length])


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} is not UTF-8 text ({err.reason} at byte {err.start})") from err


def _root(buf: bytes) -> _Table:
    from flatbuffers import encode
    from flatbuffers import number_types as N

    return _Table(buf, encode.Get(N.UOffsetTFlags.packer_type, buf, 0))


def _all(table: _Table, slot: int, limit: int) -> list[_Table]:
    start, length = table.vector(slot, limit)
    return [table.table_at(start, i) for i in range(length)]
