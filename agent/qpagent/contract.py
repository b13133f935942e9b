"""The one contract between the BPF programs and the agent, read from the C.

bpf/include/*.h define every constant, enum and map layout once; this module
parses them at import, so Python never keeps a copy that could drift:

    constants   every integer #define (MAX_PATHS, PORTS_PER_PATH, ...)
    enums       enum parse_outcome -> PARSE_OUTCOME_NAMES ("roce", ...): the
                members lower-cased without their shared prefix, in value
                order; a last member named like the enum in the plural
                (PARSE_OUTCOMES) is the count, not a name
    structs     ctypes mirrors with C's natural alignment (STRUCTS["qp_key"])
    maps        each BPF_TABLE's type, key and value (MAPS["qp_table"])

The parser knows only what these headers use: fixed-width integer fields,
arrays of them, nested structs, integer arithmetic in #defines. Anything else
raises ContractError at import, and tests/unit/test_contract.py checks every
mirror and value against what BCC compiles.
"""

from __future__ import annotations

import ast
import ctypes
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path

INCLUDE_DIR = Path(os.environ.get("QPAGENT_BPF_DIR", Path(__file__).resolve().parents[2] / "bpf")) / "include"


class ContractError(RuntimeError):
    """The headers use something this parser does not understand."""


@dataclass(frozen=True)
class Enum:
    name: str                       # C tag, e.g. "parse_outcome"
    members: tuple[tuple[str, int], ...]  # (C name, value), count member excluded
    count: int | None               # value of the count member, if any

    @property
    def names(self) -> tuple[str, ...]:
        prefix = _common_prefix([m for m, _ in self.members])
        return tuple(m[len(prefix):].lower() for m, _ in sorted(self.members, key=lambda m: m[1]))

    @property
    def by_value(self) -> dict[int, str]:
        prefix = _common_prefix([m for m, _ in self.members])
        return {v: m[len(prefix):].lower() for m, v in self.members}


@dataclass(frozen=True)
class MapSpec:
    name: str
    kind: str          # BCC table type: "hash", "lru_hash", "percpu_array", ...
    key: type          # ctypes type
    value: type
    max_entries: int

    @property
    def percpu(self) -> bool:
        return self.kind.startswith("percpu") or self.kind.startswith("lru_percpu")


_SCALARS = {
    "__u8": ctypes.c_uint8, "__u16": ctypes.c_uint16, "__u32": ctypes.c_uint32,
    "__u64": ctypes.c_uint64, "__s8": ctypes.c_int8, "__s16": ctypes.c_int16,
    "__s32": ctypes.c_int32, "__s64": ctypes.c_int64,
}
_SCALARS.update({"u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
                 "u64": ctypes.c_uint64, "__be16": ctypes.c_uint16, "__be32": ctypes.c_uint32})

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv,
        ast.LShift: operator.lshift, ast.RShift: operator.rshift,
        ast.BitOr: operator.or_, ast.BitAnd: operator.and_}


def _common_prefix(names: list[str]) -> str:
    if len(names) < 2:
        return names[0].split("_", 1)[0] + "_" if names else ""
    prefix = os.path.commonprefix(names)
    return prefix[:prefix.rfind("_") + 1]


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _eval(expr: str, known: dict[str, int]) -> int | None:
    """An integer C expression over known names, or None."""
    expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr.strip())
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return None

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(expr)
    try:
        return ev(tree)
    except (ValueError, TypeError):
        return None


def parse_headers(texts: dict[str, str]):
    """(constants, enums, structs, maps) from header texts by file name."""
    constants: dict[str, int] = {}
    enums: dict[str, Enum] = {}
    raw_structs: dict[str, str] = {}
    raw_maps: list[tuple[str, ...]] = []
    # Headers in include order matter little: resolve names in passes.
    bodies = {name: _strip_comments(text) for name, text in sorted(texts.items())}
    pending_defines = []
    for body in bodies.values():
        for name, value in re.findall(r"^\s*#\s*define\s+(\w+)[ \t]+([^\n]+)$", body, re.M):
            pending_defines.append((name, value))
        for tag, members in re.findall(r"\benum\s+(\w+)\s*\{(.*?)\}\s*;", body, re.S):
            enums[tag] = members           # resolved below
        for tag, fields in re.findall(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*;", body, re.S):
            raw_structs[tag] = fields
        for args in re.findall(r"\bBPF_TABLE\s*\((.*?)\)\s*;", body, re.S):
            raw_maps.append(tuple(a.strip() for a in args.split(",")))

    for _ in range(4):   # defines and enums may refer to each other
        for name, value in pending_defines:
            got = _eval(value, constants)
            if got is not None:
                constants[name] = got
        for tag, members in list(enums.items()):
            if isinstance(members, str):
                parsed = _parse_enum(tag, members, constants)
                if parsed is not None:
                    enums[tag] = parsed
                    for m, v in parsed.members:
                        constants[m] = v
                    if parsed.count is not None:
                        constants[tag.upper() + "S"] = parsed.count
    unresolved = [tag for tag, e in enums.items() if isinstance(e, str)]
    if unresolved:
        raise ContractError(f"cannot resolve enum {', '.join(unresolved)}")

    structs: dict[str, type] = {}
    for tag in raw_structs:
        try:
            _build_struct(tag, raw_structs, structs, constants)
        except ContractError:
            pass   # a parser-internal struct; a map that uses it fails below
    maps = {}
    for args in raw_maps:
        if len(args) != 5:
            raise ContractError(f"BPF_TABLE with {len(args)} arguments: {args}")
        kind, key, value, name, size = args
        entries = _eval(size, constants)
        if entries is None:
            raise ContractError(f"map {name}: size {size!r} is not a known constant")
        maps[name] = MapSpec(name, kind.strip('"'), _ctype(key, structs, raw_structs, constants),
                             _ctype(value, structs, raw_structs, constants), entries)
    return constants, enums, structs, maps


def _parse_enum(tag: str, body: str, constants: dict[str, int]) -> Enum | None:
    members, value = [], -1
    for item in (i.strip() for i in body.split(",")):
        if not item:
            continue
        name, _, expr = (p.strip() for p in item.partition("="))
        if expr:
            got = _eval(expr, constants)
            if got is None:
                return None
            value = got
        else:
            value += 1
        members.append((name, value))
    count = None
    if members and members[-1][0] == tag.upper() + "S":
        count = members.pop()[1]
    return Enum(tag, tuple(members), count)


def _ctype(decl: str, structs: dict, raw: dict, constants: dict) -> type:
    decl = decl.strip()
    if decl.startswith("struct "):
        tag = decl.split()[1]
        if tag not in raw:
            raise ContractError(f"struct {tag} is not defined in the headers")
        return _build_struct(tag, raw, structs, constants)
    if decl in _SCALARS:
        return _SCALARS[decl]
    raise ContractError(f"type {decl!r} is not one the contract knows")


def _build_struct(tag: str, raw: dict, structs: dict, constants: dict) -> type:
    if tag in structs:
        return structs[tag]
    fields = []
    for decl in (d.strip() for d in raw[tag].split(";")):
        if not decl:
            continue
        m = re.fullmatch(r"((?:struct\s+)?\w+)\s+(\w+)\s*(?:\[\s*([^\]]+)\])?", decl)
        if m is None:
            raise ContractError(f"struct {tag}: cannot read field {decl!r}")
        ctype = _ctype(m.group(1), structs, raw, constants)
        if m.group(3) is not None:
            dim = _eval(m.group(3), constants)
            if dim is None:
                raise ContractError(f"struct {tag}.{m.group(2)}: unknown array size {m.group(3)!r}")
            ctype = ctype * dim
        fields.append((m.group(2), ctype))
    cls = type(tag, (ctypes.Structure,), {"_fields_": fields})
    structs[tag] = cls
    return cls


def load(include_dir: Path = INCLUDE_DIR):
    texts = {p.name: p.read_text() for p in sorted(Path(include_dir).glob("*.h"))}
    if not texts:
        raise ContractError(f"no BPF headers found in {include_dir}")
    return parse_headers(texts)


CONSTANTS, ENUMS, STRUCTS, MAPS = load()


def _need(name: str) -> int:
    try:
        return CONSTANTS[name]
    except KeyError:
        raise ContractError(f"{name} is not defined in the BPF headers") from None


VXLAN_UDP_PORT = _need("VXLAN_UDP_PORT")
ROCE_UDP_PORT = _need("ROCE_UDP_PORT")
MAX_VTEPS = _need("MAX_VTEPS")
MAX_PATHS = _need("MAX_PATHS")
PORTS_PER_PATH = _need("PORTS_PER_PATH")
FLOW_HAS_VNI = _need("FLOW_HAS_VNI")
FLOW_HAS_QP = _need("FLOW_HAS_QP")

PARSE_OUTCOME_NAMES = ENUMS["parse_outcome"].names
STEER_EVENT_NAMES = ENUMS["steer_event"].names
PIN_EVENT_NAMES = ENUMS["pin_event"].names
HOOK_NAMES = ENUMS["hook_id"].by_value     # {0: "xdp_ingress", ...}
