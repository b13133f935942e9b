"""The C <-> Python contract cannot drift.

qpagent.contract reads constants, enums, structs and maps from
bpf/include/*.h. These tests hold it to what clang really compiles (BCC's
generated ctypes, map sizes in the kernel), show that a header changed on
one side only is caught, and that no Python module keeps its own copy.
"""

import ast
import ctypes
import os
from pathlib import Path

import pytest

from qpagent import bpfobj, bpfsys, contract

REPO = Path(__file__).resolve().parents[2]
# Every map layout the agent reads or writes through the contract.
MIRRORED = ("qp_key", "qp_state", "path_entry", "flow_key", "flow_counters",
            "parse_key", "parse_counters", "mac_key")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="compiling and loading BPF needs root")


def layout(ctype) -> list:
    """(name, offset, size, inner layout) per field, recursively; arrays by
    element layout and length, so a ctypes array of 16 u16 equals BCC's."""
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        return [("[]", ctype._length_, ctypes.sizeof(ctype), layout(ctype._type_))]
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
        return [(name, getattr(ctype, name).offset, getattr(ctype, name).size, layout(ftype))
                for name, ftype, *_ in ctype._fields_ if not name.startswith("__pad")]
    return [("scalar", ctypes.sizeof(ctype))]


@pytest.fixture(scope="module")
def compiled():
    """Every program's object, compiled as the agent compiles it."""
    objects = {src: bpfobj.compile_source(src) for src in ("qp_steer.c", "path_pin.c", "flow_stats.c")}
    try:
        yield objects
    finally:
        for obj in objects.values():
            obj.cleanup()


def bcc_tables(compiled):
    """{map name: BCC table} over every compiled object."""
    found = {}
    for obj in compiled.values():
        for name in contract.MAPS:
            try:
                found.setdefault(name, obj[name.encode()])
            except KeyError:
                pass
    return found


def single_leaf(table):
    """BCC's Leaf of a per-CPU table is an array over CPUs; sLeaf is one."""
    return getattr(table, "sLeaf", table.Leaf)


@needs_root
def test_every_map_mirror_matches_what_clang_compiled(compiled):
    tables = bcc_tables(compiled)
    assert set(tables) == set(contract.MAPS)
    got = {name: (layout(t.Key), layout(single_leaf(t))) for name, t in tables.items()}
    want = {name: (layout(spec.key), layout(spec.value)) for name, spec in contract.MAPS.items()}
    assert got == want
    mirrored = {m.key.__name__ for m in contract.MAPS.values()} | \
        {m.value.__name__ for m in contract.MAPS.values()}
    assert set(MIRRORED) <= mirrored


@needs_root
def test_map_kinds_and_sizes_match_the_kernel(compiled):
    for name, table in bcc_tables(compiled).items():
        spec = contract.MAPS[name]
        info = bpfsys.map_info(table.map_fd)
        assert (name, info.max_entries, info.key_size, info.value_size) == \
            (name, spec.max_entries, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value))


@needs_root
def test_every_constant_and_enum_value_is_what_clang_sees(tmp_path):
    """Each non-negative #define and enum member becomes a map size in a probe
    program compiled against the real headers: the kernel's max_entries is
    what clang evaluated, compared with what the parser read."""
    names = sorted(n for n, v in contract.CONSTANTS.items() if v >= 0)
    src = tmp_path / "contract_probe.c"
    headers = "".join(f'#include "{p.name}"\n' for p in sorted(contract.INCLUDE_DIR.glob("*.h")))
    src.write_text("#include <uapi/linux/bpf.h>\n#include <linux/pkt_cls.h>\n" + headers
                   + "".join(f"BPF_ARRAY(c_{n}, u32, ({n}) + 1);\n" for n in names)
                   + "int probe(void *ctx) { return 0; }\n")
    from bcc import BPF
    bpf = BPF(src_file=str(src).encode(), cflags=[f"-I{contract.INCLUDE_DIR}"])
    try:
        seen = {n: bpfsys.map_info(bpf[f"c_{n}".encode()].map_fd).max_entries - 1 for n in names}
    finally:
        bpf.cleanup()
    assert seen == {n: contract.CONSTANTS[n] for n in names}


def header_texts():
    return {p.name: p.read_text() for p in contract.INCLUDE_DIR.glob("*.h")}


def test_enum_names_are_lower_case_without_prefix_and_count_left_out():
    _, enums, _, _ = contract.parse_headers({"x.h": """
        enum pin_event { PIN_A = 0, PIN_BEE_C, PIN_EVENTS, };
        enum hook_id { HOOK_ONE = 2, HOOK_TWO, };
    """})
    assert (enums["pin_event"].names, enums["pin_event"].count) == (("a", "bee_c"), 2)
    assert enums["hook_id"].by_value == {2: "one", 3: "two"}


@needs_root
def test_a_constant_changed_on_one_side_only_is_caught(compiled):
    """The mirrors read from a header with PORTS_PER_PATH changed no longer
    match the object compiled from the real one: the check above fails."""
    texts = header_texts()
    edited = {name: text.replace("#define PORTS_PER_PATH   16", "#define PORTS_PER_PATH   8")
              for name, text in texts.items()}
    assert edited != texts, "PORTS_PER_PATH is no longer spelled as this test expects"
    _, _, _, maps = contract.parse_headers(edited)
    compiled_leaf = single_leaf(bcc_tables(compiled)["path_table"])
    assert layout(maps["path_table"].value) != layout(compiled_leaf)
    assert layout(contract.MAPS["path_table"].value) == layout(compiled_leaf)


def test_an_unknown_field_type_is_refused():
    with pytest.raises(contract.ContractError, match="float"):
        contract.parse_headers({"x.h": "struct k { float f; };\n"
                                       'BPF_TABLE("hash", struct k, __u32, m, 4);'})


CONTRACT_NAMES = {"MAX_VTEPS", "MAX_PATHS", "PORTS_PER_PATH", "MAX_PORTS_PER_PATH",
                  "VXLAN_UDP_PORT", "ROCE_UDP_PORT", "HOOK_NAMES", "PARSE_OUTCOMES",
                  "PARSE_OUTCOME_NAMES", "STEER_EVENT_NAMES", "PIN_EVENT_NAMES"}


def test_no_python_module_keeps_its_own_copy():
    """A contract name assigned a literal (a number, a tuple or dict of them)
    anywhere in the product or its tests is a hand copy that can drift."""
    copies = []
    for root in ("agent", "lab", "tests"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path.name == "contract.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Assign):
                    continue
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                if names & CONTRACT_NAMES and _literal(node.value):
                    copies.append(f"{path.relative_to(REPO)}:{node.lineno} {sorted(names)}")
    assert copies == []


def _literal(node) -> bool:
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True
