"""Offline checks of a Power BI Project: JSON schemas and a small TMDL reader.

The JSON files are validated against Microsoft's published schemas, vendored in
``tests/fixtures/powerbi-schemas`` under the folder structure of their ``$id``s.

There is no TMDL validator to run here, so :func:`read_tmdl` implements the
documented syntax the generator uses (learn.microsoft.com, "TMDL overview"):
tab indentation, one object per line (``table``, ``column``, ``measure``,
``hierarchy``/``level``, ``partition``, ``expression``, ``annotation``...),
properties one level below their object as ``name: value`` or a bare flag,
``///`` descriptions, names with anything but letters, digits and ``_`` in
single quotes, and multi-line expressions (M, DAX) two levels below the line
that declares them with ``=``. It rejects what it does not know.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / "tests" / "fixtures" / "powerbi-schemas"
SCHEMA_PREFIX = "https://developer.microsoft.com/json-schemas/"
# Files of a project that are JSON (whatever their extension).
JSON_SUFFIXES = {".json", ".pbip", ".pbir", ".pbism", ".platform"}


def schema_registry() -> Registry[Any]:
    resources = []
    for path in SCHEMA_DIR.rglob("*.json"):
        url = SCHEMA_PREFIX + path.relative_to(SCHEMA_DIR).as_posix()
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((url, Resource(contents=contents, specification=DRAFT7)))
    return Registry().with_resources(resources)


def schema_errors(doc: dict[str, Any], registry: Registry[Any]) -> list[str]:
    """Why ``doc`` does not match the schema its ``$schema`` names (empty: it does)."""
    url = doc.get("$schema")
    if not isinstance(url, str):
        return ["no $schema"]
    try:
        schema = registry.contents(url)
    except Exception:
        return [f"schema not vendored: {url}"]
    validator = Draft7Validator(schema, registry=registry)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def json_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and (p.suffix in JSON_SUFFIXES or p.name == ".platform")
    )


# --- TMDL ------------------------------------------------------------------------

OBJECTS = {
    "database",
    "model",
    "table",
    "column",
    "measure",
    "hierarchy",
    "level",
    "partition",
    "expression",
    "annotation",
    "ref",
    "queryGroup",
    "dataAccessOptions",
}
# Objects that must sit directly inside another kind of object (None: at the top).
PARENTS = {
    "database": {None},
    "model": {None},
    "table": {None},
    "expression": {None},
    "ref": {None},
    "queryGroup": {None},
    "column": {"table"},
    "measure": {"table"},
    "hierarchy": {"table"},
    "partition": {"table"},
    "level": {"hierarchy"},
    "dataAccessOptions": {"model"},
    "annotation": {None, "table", "column", "measure", "partition", "expression", "queryGroup"},
}
NAME = r"(?:[A-Za-z_][A-Za-z0-9_]*|'(?:[^']|'')+')"
_DECL = re.compile(rf"^(?P<kind>[A-Za-z]+)(?: (?P<name>{NAME}))?(?: = ?(?P<value>.*))?$")
_REF = re.compile(rf"^ref (?:table|culture|role|perspective) (?P<name>{NAME})$")
_PROP = re.compile(r"^(?P<key>[A-Za-z][A-Za-z0-9]*): (?P<value>\S.*)$")
_FLAG = re.compile(r"^[a-z][A-Za-z]*$")


class TmdlError(Exception):
    pass


@dataclass
class Node:
    kind: str
    name: str
    depth: int
    line: int
    parent: Node | None
    value: str = ""  # the text after "=" (a one-line expression or annotation value)
    expression: str | None = None  # a multi-line expression, indentation removed
    props: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    children: list[Node] = field(default_factory=list)

    def kids(self, kind: str) -> dict[str, Node]:
        return {c.name: c for c in self.children if c.kind == kind}

    @property
    def text(self) -> str:
        return self.expression if self.expression is not None else self.value


def unquote(name: str) -> str:
    return name[1:-1].replace("''", "'") if name.startswith("'") else name


def read_tmdl(text: str, origin: str = "<tmdl>") -> list[Node]:
    """The top-level objects of one TMDL file (raises :class:`TmdlError` with the line)."""
    lines = text.split("\n")
    top: list[Node] = []
    stack: list[Node] = []
    i = 0

    def fail(n: int, why: str) -> TmdlError:
        return TmdlError(f"{origin}:{n + 1}: {why}: {lines[n]!r}")

    while i < len(lines):
        raw = lines[i]
        if not raw.strip():
            i += 1
            continue
        body = raw.lstrip("\t")
        depth = len(raw) - len(body)
        if body != body.lstrip() or raw != raw.rstrip():
            raise fail(i, "indentation must be tabs, no trailing blanks")
        if body.startswith("///"):
            i += 1
            continue
        while stack and stack[-1].depth >= depth:
            stack.pop()
        parent = stack[-1] if stack else None
        if depth != (parent.depth + 1 if parent else 0):
            raise fail(i, "wrong indentation")
        ref = _REF.match(body)
        decl = _DECL.match(body)
        prop = _PROP.match(body)
        if ref and parent is None:
            top.append(Node("ref", unquote(ref["name"]), depth, i, None))
            i += 1
            continue
        if decl and decl["kind"] in OBJECTS:
            kind = decl["kind"]
            if (parent.kind if parent else None) not in PARENTS[kind]:
                raise fail(i, f"{kind} cannot be inside {parent.kind if parent else 'the file'}")
            node = Node(kind, unquote(decl["name"] or ""), depth, i, parent, decl["value"] or "")
            if decl["value"] is not None and not decl["value"].strip():
                # A multi-line expression: every following line two levels deeper.
                expr, j = _expression(lines, i + 1, depth + 2)
                if not expr.strip():
                    raise fail(i, "empty expression")
                node.expression = expr
                i = j
            else:
                i += 1
            (parent.children if parent else top).append(node)
            stack.append(node)
            continue
        if parent is None:
            raise fail(i, "unknown top-level line")
        if prop:
            key, value = prop["key"], prop["value"]
            if key in parent.props:
                raise fail(i, f"{key} given twice")
            if value.endswith("=") or (value == "" and key == "source"):
                raise fail(i, "expression property without expression")
            parent.props[key] = value
            i += 1
            continue
        if body == "source =":
            expr, j = _expression(lines, i + 1, depth + 2)
            if not expr.strip():
                raise fail(i, "partition without an M expression")
            parent.props["source"] = expr
            i = j
            continue
        if _FLAG.match(body):
            parent.flags.add(body)
            i += 1
            continue
        raise fail(i, "not TMDL")
    return top


def _expression(lines: list[str], start: int, depth: int) -> tuple[str, int]:
    prefix = "\t" * depth
    out: list[str] = []
    j = start
    while j < len(lines):
        line = lines[j]
        if line.strip() and not line.startswith(prefix):
            break
        out.append(line[len(prefix) :] if line.strip() else "")
        j += 1
    while out and not out[-1]:
        out.pop()
        j -= 1
    return "\n".join(out), j


@dataclass
class Model:
    tables: dict[str, Node]
    expressions: dict[str, Node]
    refs: list[str]


def read_model(definition: Path) -> Model:
    """Every TMDL file of a ``definition/`` folder, checked and gathered."""
    tables: dict[str, Node] = {}
    expressions: dict[str, Node] = {}
    refs: list[str] = []
    seen_model = seen_database = False
    for path in sorted(definition.rglob("*.tmdl")):
        for node in read_tmdl(path.read_text(encoding="utf-8"), str(path)):
            if node.kind == "table":
                tables[node.name] = node
            elif node.kind == "expression":
                expressions[node.name] = node
            elif node.kind == "ref":
                refs.append(node.name)
            seen_model |= node.kind == "model"
            seen_database |= node.kind == "database"
    if not (seen_model and seen_database):
        raise TmdlError("model.tmdl and database.tmdl must declare model and database")
    for name, table in tables.items():
        partitions = table.kids("partition")
        if not partitions:
            raise TmdlError(f"table {name}: no partition")
        for p in partitions.values():
            if (
                p.value.strip() != "m"
                or p.props.get("mode") != "import"
                or not p.props.get("source")
            ):
                raise TmdlError(f"table {name}: partition {p.name} is not an import M partition")
        columns = table.kids("column")
        for c in columns.values():
            if "dataType" not in c.props or "sourceColumn" not in c.props:
                raise TmdlError(f"{name}[{c.name}]: dataType and sourceColumn are required")
            sort = c.props.get("sortByColumn")
            if sort and unquote(sort) not in columns:
                raise TmdlError(f"{name}[{c.name}]: sortByColumn {sort} is not a column")
        for m in table.kids("measure").values():
            if not m.text.strip():
                raise TmdlError(f"{name}[{m.name}]: measure without expression")
        for h in table.kids("hierarchy").values():
            for lv in h.kids("level").values():
                if unquote(lv.props.get("column", "")) not in columns:
                    raise TmdlError(f"{name}.{h.name}.{lv.name}: level column missing")
    if sorted(refs) != sorted(tables):
        raise TmdlError(f"model.tmdl refs {sorted(refs)} but tables are {sorted(tables)}")
    return Model(tables, expressions, refs)
