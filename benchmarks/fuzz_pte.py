"""Mutations of ExecuTorch programs (.pte) for benchmarks/fuzz_models.py: the flatbuffer walked
with its schema, segments, XNNPACK's blob, and program edits written by ExecuTorch's own
serializer."""

import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from fuzz_mutations import BYTE_KINDS, _get, _interesting, _meta_attacks, _mutate_bytes, _put

# executorch/schema/program.fbs, as much of it as finding every field of a program takes:
# per table its fields in slot order, as name:type. A type is a struct format letter (a
# scalar; "B" also for bool), "s" a string, "[x]" a vector of x, a capitalised name a table,
# "union" a union (two slots: its type byte, then its table, named in _PTE_UNIONS by the byte).
_PTE_SCHEMA = {
    "Program": "version:I execution_plan:[ExecutionPlan] constant_buffer:[Buffer] "
               "backend_delegate_data:[BackendDelegateInlineData] segments:[DataSegment] "
               "constant_segment:SubsegmentOffsets mutable_data_segments:[SubsegmentOffsets] "
               "named_data:[NamedData]",
    "ExecutionPlan": "name:s container_meta_type:ContainerMetadata values:[EValue] "
                     "inputs:[i] outputs:[i] chains:[Chain] operators:[Operator] "
                     "delegates:[BackendDelegate] non_const_buffer_sizes:[q] "
                     "non_const_buffer_device:[NonConstBufferDevice]",
    "ContainerMetadata": "encoded_inp_str:s encoded_out_str:s",
    "EValue": "val:union",
    "Null": "", "Int": "int_val:q", "Bool": "bool_val:B", "Double": "double_val:d",
    "String": "string_val:s", "IntList": "items:[q]", "DoubleList": "items:[d]",
    "BoolList": "items:[B]", "TensorList": "items:[i]", "OptionalTensorList": "items:[i]",
    "Tensor": "scalar_type:b storage_offset:i sizes:[i] dim_order:[B] requires_grad:B "
              "data_buffer_idx:I allocation_info:AllocationDetails layout:b shape_dynamism:b "
              "extra_tensor_info:ExtraTensorInfo",
    "AllocationDetails": "memory_id:I memory_offset_low:I memory_offset_high:I",
    "ExtraTensorInfo": "mutable_data_segments_idx:Q fully_qualified_name:s location:b "
                       "device_type:b device_index:b",
    "Chain": "inputs:[i] outputs:[i] instructions:[Instruction] stacktrace:[FrameList]",
    "Instruction": "instr_args:union",
    "KernelCall": "op_index:i args:[i]", "DelegateCall": "delegate_index:i args:[i]",
    "MoveCall": "move_from:i move_to:i",
    "JumpFalseCall": "cond_value_index:i destination_instruction:i",
    "FreeCall": "value_index:i",
    "FrameList": "items:[Frame]", "Frame": "filename:s lineno:i name:s context:s",
    "Operator": "name:s overload:s",
    "BackendDelegate": "id:s processed:BackendDelegateDataReference "
                       "compile_specs:[CompileSpec]",
    "BackendDelegateDataReference": "location:b index:I",
    "CompileSpec": "key:s value:[B]",
    "NonConstBufferDevice": "buffer_idx:i device_type:b device_index:b",
    "Buffer": "storage:[B]", "BackendDelegateInlineData": "data:[B]",
    "DataSegment": "offset:Q size:Q",
    "SubsegmentOffsets": "segment_index:I offsets:[Q]",
    "NamedData": "key:s segment_index:I",
}
_SCALARS = "bBhHiIqQd"
_PTE_UNIONS = {
    "EValue.val": [None, "Null", "Int", "Bool", "Double", "Tensor", "String", "IntList",
                   "DoubleList", "BoolList", "TensorList", "OptionalTensorList"],
    "Instruction.instr_args": [None, "KernelCall", "DelegateCall", "MoveCall", "JumpFalseCall",
                               "FreeCall"],
}


@dataclass(frozen=True)
class Site:
    """A field of a flatbuffer: where, how many bytes, what it is, the table that holds it."""

    at: int
    size: int
    role: str  # "offset:<Table.field>", "length:<Table.field>", "vtable:<Table>", "Table.field"
    table: int = 0


def _fields(table: str) -> list[tuple[str, str]]:
    """A table's fields in slot order; a union takes two slots (its type byte, its table)."""
    out = []
    for token in _PTE_SCHEMA[table].split():
        name, kind = token.split(":")
        if kind == "union":
            out.append((f"{name}_type", "B"))
        out.append((name, kind))
    return out


def _pte_sites(data: bytes) -> list[Site]:
    """Every field of the program flatbuffer at the start of `data`, by walking it from its
    root with the schema (it is an exported seed: well formed), each place once."""
    sites = [Site(0, 4, "offset:root")]
    seen: set[int] = set()

    def read(fmt: str, at: int) -> int:
        return struct.unpack_from("<" + fmt, data, at)[0]

    def table(at: int, name: str) -> None:
        if at in seen:
            return
        seen.add(at)
        vtable = at - read("i", at)
        sites.extend(Site(where, size, f"vtable:{name}", at)
                     for where, size in ((at, 4), (vtable, 2), (vtable + 2, 2)))
        values: dict[str, int] = {}
        for slot, (name_, kind) in enumerate(_fields(name)):
            entry = vtable + 4 + 2 * slot
            if entry + 2 > vtable + read("H", vtable):
                break
            sites.append(Site(entry, 2, f"vtable:{name}", at))
            if read("H", entry):
                values[name_] = value(at + read("H", entry), name, name_, kind, values, at)

    def value(at: int, name: str, name_: str, kind: str, values: dict, owner: int) -> int:
        role = f"{name}.{name_}"
        if kind in _SCALARS:
            sites.append(Site(at, struct.calcsize(kind), role, owner))
            return read(kind, at)
        target = at + read("I", at)
        sites.append(Site(at, 4, f"offset:{role}", owner))
        if kind == "union":
            member = _PTE_UNIONS[role][values.get(f"{name_}_type", 0)]
            if member:
                table(target, member)
        elif kind == "s":
            sites.append(Site(target, 4, f"length:{role}", owner))
        elif kind.startswith("["):
            sites.append(Site(target, 4, f"length:{role}", owner))
            item, count = kind[1:-1], read("I", target)
            if len(item) > 1:  # a table
                for i in range(count):
                    slot = target + 4 + 4 * i
                    sites.append(Site(slot, 4, f"offset:{role}[]", owner))
                    table(slot + read("I", slot), item)
            elif item != "B":  # not bytes (a blob): too many to list, and byte flips reach them
                step = struct.calcsize(item)
                sites.extend(Site(target + 4 + step * i, step, f"{role}[]", owner)
                             for i in range(count))
        else:
            table(target, kind)
        return target

    table(read("I", 0), "Program")
    unique: dict[int, Site] = {}
    for site in sites:
        unique.setdefault(site.at, site)
    return list(unique.values())


def _plan(program, name: str = "forward"):
    return next(plan for plan in program.execution_plan if plan.name == name)


def _forward_input(program):
    plan = _plan(program)
    return plan.values[plan.inputs[0]].val


def _program_edits() -> list[tuple[str, object]]:
    """(what, edit) pairs: each edit changes a deserialized .pte (a PTEFile) in place."""
    from executorch.exir import schema as s

    def setter(get, attribute, value):
        def edit(pte):
            p = pte.program
            setattr(get(p), attribute, value(p) if callable(value) else value)
        return edit

    def forward(attribute, value):
        return setter(_plan, attribute, value)

    def method(attribute, value):
        return setter(lambda p: _plan(p, "edgepilot_meta"), attribute, value)

    def program(change):
        return lambda pte: change(pte.program)

    def instructions(p):
        return _plan(p).chains[0].instructions

    def prepend(make):  # an instruction run before the program's own
        return program(lambda p: instructions(p).insert(0, s.Instruction(make(p))))

    def jump(destination):
        def edit(p):
            values = _plan(p).values
            values.append(s.EValue(s.Bool(False)))
            instructions(p).insert(0, s.Instruction(s.JumpFalseCall(len(values) - 1,
                                                                    destination)))
        return program(edit)

    def call(attribute, value):
        return setter(lambda p: instructions(p)[0].instr_args, attribute, value)

    def unknown_operator(p):
        plan = _plan(p)
        plan.operators.append(s.Operator("aten::no_such_op", "out"))
        instructions(p).insert(0, s.Instruction(s.KernelCall(len(plan.operators) - 1,
                                                             [plan.inputs[0]])))

    def no_methods(p):
        p.execution_plan, p.backend_delegate_data = [], []

    def rename(old, new):
        return setter(lambda p: _plan(p, old), "name", new)

    def named(change):  # the named data (XNNPACK's weights): key -> entry of a buffer
        return lambda pte: change(pte.named_data.pte_data, list(pte.named_data.pte_data))

    def swap(entries, a, b):
        entries[a], entries[b] = entries[b], entries[a]

    def sizes(value):
        return setter(_forward_input, "sizes", value)

    return [
        ("input sizes 2^20 x 2^20", sizes(lambda p: [*_forward_input(p).sizes[:2],
                                                     1 << 20, 1 << 20])),
        ("input size -1", sizes(lambda p: [-1, *_forward_input(p).sizes[1:]])),
        ("input size 0", sizes(lambda p: [0, *_forward_input(p).sizes[1:]])),
        ("input of rank 0", sizes([])),
        ("input of rank 16", sizes([1] * 16)),
        ("input sizes int32 max", sizes([2**31 - 1] * 4)),
        ("input dim order too short", setter(_forward_input, "dim_order", [0])),
        ("input dim order repeated", setter(_forward_input, "dim_order", [3, 3, 3, 3])),
        ("input storage offset 2^30", setter(_forward_input, "storage_offset", 1 << 30)),
        ("planned memory 8 GiB", forward("non_const_buffer_sizes", [0, 1 << 33])),
        ("planned memory 2^62 bytes", forward("non_const_buffer_sizes", [0, 1 << 62])),
        ("planned memory -1 bytes", forward("non_const_buffer_sizes", [0, -1])),
        ("100,000 planned buffers", forward("non_const_buffer_sizes", [0] + [64] * 100_000)),
        ("no planned buffers", forward("non_const_buffer_sizes", [])),
        ("no forward method", rename("forward", "backward")),
        ("two forward methods", rename("edgepilot_meta", "forward")),
        ("forward input out of range", forward("inputs", [10**6])),
        ("forward input -1", forward("inputs", [-1])),
        ("forward output out of range", forward("outputs", [10**6])),
        ("forward input is its output", forward("inputs", lambda p: list(_plan(p).outputs))),
        ("no methods", program(no_methods)),
        ("unknown delegate", setter(lambda p: _plan(p).delegates[0], "id", "NoSuchBackend")),
        ("delegate call index out of range", call("delegate_index", 10**6)),
        ("delegate call args out of range", call("args", [10**6, -5])),
        ("delegate call without args", call("args", [])),
        ("an instruction that jumps to itself", jump(0)),
        ("a jump out of range", jump(10**6)),
        ("the input freed first", prepend(lambda p: s.FreeCall(_plan(p).inputs[0]))),
        ("the output moved onto the input",
         prepend(lambda p: s.MoveCall(_plan(p).outputs[0], _plan(p).inputs[0]))),
        ("an unknown operator", program(unknown_operator)),
        ("operator index out of range", prepend(lambda p: s.KernelCall(10**6, []))),
        ("100,000 instructions",
         program(lambda p: instructions(p).extend(instructions(p)[:1] * 100_000))),
        ("100,000 values",
         program(lambda p: _plan(p).values.extend([s.EValue(s.Null())] * 100_000))),
        ("named data swapped (first and last)", named(lambda e, k: swap(e, k[0], k[-1]))),
        ("named data swapped (first two)", named(lambda e, k: swap(e, k[0], k[1]))),
        ("named data renamed", named(lambda e, k: e.update({"no-such-key": e.pop(k[0])}))),
        ("named data dropped", named(lambda e, k: [e.pop(key) for key in k[1:]])),
        ("metadata method returns an int", method("values", [s.EValue(s.Int(7))])),
        ("metadata method returns the forward input",
         method("values", lambda p: [_plan(p).values[_plan(p).inputs[0]]])),
        ("metadata method takes an input", method("inputs", [0])),
        ("metadata method output out of range", method("outputs", [5])),
        ("program version 2^32 - 1", setter(lambda p: p, "version", 2**32 - 1)),
    ]


class PteMutator:
    """Deterministic mutants of one .pte: `make(i)` -> (kind, what was done, bytes, size to
    make the file sparse to, or 0)."""

    kinds = [*BYTE_KINDS, "header", "offset", "vtable", "length", "field", "segments",
             "xnnpack", "meta", "program", "sparse"]
    #: The extended header after the 8-byte flatbuffer header: (offset, bytes, name).
    HEADER = ((0, 4, "root offset"), (12, 4, "extended header length"),
              (16, 8, "program_size"), (24, 8, "segment_base_offset"),
              (32, 8, "segment_data_size"))
    SPARSE = (3 << 30, 20 << 30, 1 << 40)

    def __init__(self, seed: bytes, meta: dict, seed_value: int):
        self.seed, self.seed_value = seed, seed_value
        self.attacks = _meta_attacks(meta)
        self.edits = _program_edits()
        self.program_size, self.base = (struct.unpack_from("<QQ", seed, 16)
                                        if seed[8:12] == b"eh00" else (len(seed), 0))
        self.sites = _pte_sites(seed)
        self.groups: dict[str, list[Site]] = {"offset": [], "vtable": [], "length": [],
                                              "field": []}
        for site in self.sites:
            prefix = site.role.split(":")[0]
            self.groups[prefix if prefix in self.groups else "field"].append(site)
        tables: dict[int, dict[str, Site]] = {}
        for site in self.sites:
            if site.role in ("DataSegment.offset", "DataSegment.size"):
                tables.setdefault(site.table, {})[site.role.split(".")[1]] = site
        self.segment_tables = [t for t in tables.values() if len(t) == 2]
        # The program's segments: (start in the file, size), in order.
        segments = next((s for s in self.sites if s.role == "offset:Program.segments"), None)
        self.segments = []
        if segments is not None:
            vector = segments.at + _get(seed, segments.at, 4)
            for i in range(_get(seed, vector, 4)):
                slot = vector + 4 + 4 * i
                t = slot + _get(seed, slot, 4)
                found = tables.get(t, {})
                offset, size = (_get(seed, found[f].at, 8) if f in found else 0
                                for f in ("offset", "size"))
                self.segments.append((self.base + offset, size))
        # XNNPACK's blob: "XH00" at byte 4, then its flatbuffer's and its constants' places.
        at = seed.find(b"XH00", self.base)
        self.xnnpack = None
        if at >= 4:
            lo = at - 4
            fb_offset, fb_size, c_offset = struct.unpack_from("<III", seed, lo + 10)
            c_size = _get(seed, lo + 22, 8)
            self.xnnpack = (lo, lo + fb_offset, lo + fb_offset + fb_size,
                            lo + max(fb_offset + fb_size, c_offset + c_size))

    def _region(self, rng: random.Random) -> tuple[int, int]:
        """Where a byte mutation starts: half the time in the program flatbuffer, a quarter in
        XNNPACK's blob, else anywhere (mostly weights)."""
        r = rng.random()
        if r < 0.5:
            return 8, self.program_size  # past the 8-byte header (see "header")
        if r < 0.75 and self.xnnpack:
            return self.xnnpack[0], self.xnnpack[3]
        return 0, len(self.seed)

    def make(self, i: int) -> tuple[str, str, bytes, int]:
        rng = random.Random(self.seed_value * 1_000_003 + i)
        kind = self.kinds[i % len(self.kinds)]
        turn = i // len(self.kinds)
        if kind in BYTE_KINDS:
            lo, hi = self._region(rng)
            return kind, f"{kind} from [{lo}, {hi})", _mutate_bytes(kind, self.seed, rng, lo,
                                                                    hi), 0
        if kind == "sparse":
            size = self.SPARSE[turn % len(self.SPARSE)]
            return kind, f"the file made sparse to {size:,} bytes", self.seed, size
        if kind == "meta":
            text = self.attacks[turn % len(self.attacks)]

            def rewrite(pte):
                _plan(pte.program, "edgepilot_meta").values[0].val.string_val = text

            return kind, f"metadata {text[:60]!r}", self._program(rewrite), 0
        if kind == "program":
            what, edit = self.edits[turn % len(self.edits)]
            return kind, what, self._program(edit), 0
        out = bytearray(self.seed)
        if kind == "header":
            what = self._header(out, rng)
        elif kind == "segments":
            what = self._segments(out, rng, turn)
        elif kind == "xnnpack" and self.xnnpack:
            what = self._xnnpack(out, rng)
        else:  # offset, vtable, length, field (and xnnpack without XNNPACK)
            group = self.groups["field" if kind == "xnnpack" else kind]
            what = "; ".join(self._set(out, rng.choice(group), rng)
                             for _ in range(rng.choice((1, 1, 1, 2, 3))))
        return kind, what, bytes(out), 0

    def write(self, i: int, folder: Path) -> tuple[str, Path]:
        kind, what, data, size = self.make(i)
        path = folder / "m.pte"
        path.write_bytes(data)
        if size:
            os.truncate(path, size)
        (folder / "mutation.txt").write_text(f"{kind}: {what}\n")
        return kind, path

    def _set(self, out: bytearray, site: Site, rng: random.Random, value: int | None = None,
             name: str = "") -> str:
        old = _get(out, site.at, site.size)
        new = _interesting(old, site.size, rng, len(out)) if value is None else value
        _put(out, site.at, site.size, new)
        return f"{name or site.role} at {site.at}: {old} -> {new}"

    def _header(self, out: bytearray, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.15:
            out[4:8] = new = rng.choice([b"ET99", b"ET00", b"ET1\0", b"ETAB"])
            return f"file identifier {new!r}"
        if r < 0.3:
            out[8:12] = new = rng.choice([b"eh01", b"\0\0\0\0", b"EH00"])
            return f"extended header magic {new!r}"
        at, size, name = rng.choice(self.HEADER)
        return self._set(out, Site(at, size, name), rng)

    def _segments(self, out: bytearray, rng: random.Random, turn: int) -> str:
        variant = turn % 6
        named = [s for s in self.sites if s.role == "NamedData.segment_index"]
        if variant == 0 and len(self.segment_tables) >= 2:
            a, b = rng.sample(self.segment_tables, 2)
            for f in ("offset", "size"):
                x, y = _get(out, a[f].at, 8), _get(out, b[f].at, 8)
                _put(out, a[f].at, 8, y)
                _put(out, b[f].at, 8, x)
            return f"segments at {a['offset'].at} and {b['offset'].at} swapped"
        if variant == 1 and len(named) >= 2:
            a, b = rng.sample(named, 2)
            x, y = _get(out, a.at, 4), _get(out, b.at, 4)
            _put(out, a.at, 4, y)
            _put(out, b.at, 4, x)
            return f"named data segments {x} and {y} swapped"
        if variant == 2 and self.segment_tables:
            table = rng.choice(self.segment_tables)
            other = rng.choice(self.segments)
            f = rng.choice(("offset", "size"))
            value = rng.choice([None, other[0] - self.base, other[1] + 1])
            return self._set(out, table[f], rng, value)
        if variant == 3:
            refs = [s for s in self.sites if s.role.startswith("BackendDelegateDataReference")]
            if refs:
                site = rng.choice(refs)
                value = rng.randrange(len(self.segments) or 1) if rng.random() < 0.5 else None
                return self._set(out, site, rng, value)
        if variant == 4:
            by_size: dict[int, list[int]] = {}
            for start, size in self.segments:
                by_size.setdefault(size, []).append(start)
            pairs = [(size, starts) for size, starts in by_size.items() if len(starts) >= 2]
            if pairs:
                size, starts = rng.choice(pairs)
                a, b = rng.sample(starts, 2)
                out[a:a + size], out[b:b + size] = out[b:b + size], out[a:a + size]
                return f"the data of two {size}-byte segments at {a} and {b} swapped"
        subsegments = [s for s in self.sites if s.role.startswith("SubsegmentOffsets")
                       or s.role.startswith("NamedData")]
        return self._set(out, rng.choice(subsegments or self.groups["field"]), rng)

    def _xnnpack(self, out: bytearray, rng: random.Random) -> str:
        lo, fb_lo, fb_hi, _ = self.xnnpack
        if rng.random() < 0.4:
            at, size, name = rng.choice(((lo + 4, 4, "XNNPACK magic"),
                                         (lo + 8, 2, "XNNPACK header length"),
                                         (lo + 10, 4, "XNNPACK flatbuffer offset"),
                                         (lo + 14, 4, "XNNPACK flatbuffer size"),
                                         (lo + 18, 4, "XNNPACK constant offset"),
                                         (lo + 22, 8, "XNNPACK constant size")))
            return self._set(out, Site(at, size, name), rng)
        changes = []
        for _ in range(rng.randint(1, 3)):  # offsets, lengths, ids and dims of its graph
            size = 4 if rng.random() < 0.7 else 2
            at = fb_lo + rng.randrange((fb_hi - fb_lo) // size) * size
            changes.append(self._set(out, Site(at, size, "XNNPACK graph"), rng))
        return "; ".join(changes)

    def _program(self, edit) -> bytes:
        """The seed deserialized, edited and serialized again by ExecuTorch (a seed goes
        through unchanged byte for byte)."""
        from executorch.exir._serialize._program import (
            deserialize_pte_binary,
            serialize_pte_binary,
        )

        pte = deserialize_pte_binary(self.seed)
        edit(pte)
        return bytes(serialize_pte_binary(pte, extract_delegate_segments=True))


