"""A reader and evaluator of the small part of DAX the report's measures use.

No Power BI engine runs in the tests, so the measures of the generated model
are read here and evaluated over rows loaded from the CSV files, under the
filters the page's slicers and visuals put on them. It follows DAX's rules
where the measures depend on them: BLANK for an aggregate over no row, BLANK
equal to 0 and "" in comparisons, text compared without case, a ``col = x``
filter of CALCULATE replacing the filters on that column while
``KEEPFILTERS ( col = x )`` adds to them. Anything else (an unknown function,
an unknown column, a construct not listed) raises :class:`DaxError`, so a
measure the evaluator does not understand fails the test instead of passing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Row = Mapping[str, Any]
Predicate = Callable[[Any], bool]
BLANK = None

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>"(?:[^"]|"")*")
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<column>(?P<table>[A-Za-z_]\w*)\[(?P<col>[^\]]+)\])
  | (?P<measure>\[(?P<mname>[^\]]+)\])
  | (?P<name>[A-Za-z_]\w*)
  | (?P<op><>|>=|<=|&&|\|\||[=<>+\-*/&(),])
    """,
    re.X,
)


class DaxError(Exception):
    pass


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str
    table: str = ""
    col: str = ""


def tokenize(text: str) -> list[Tok]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise DaxError(f"cannot read DAX at {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("space", None):
            continue
        # lastgroup is the outer group of a column or measure reference.
        if kind == "column":
            out.append(Tok("column", m["column"], m["table"], m["col"]))
        elif kind == "measure":
            out.append(Tok("measure", m["mname"]))
        elif kind == "string":
            out.append(Tok("string", m["string"][1:-1].replace('""', '"')))
        else:
            out.append(Tok(str(kind), m.group(kind)))
    return out


# AST nodes are tuples: ("num", v) ("str", v) ("col", table, col) ("measure", name)
# ("name", ident) ("call", NAME, [args]) ("op", op, a, b) ("not", a) ("neg", a)
# ("var", [(name, expr)], body)
Node = tuple[Any, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0

    def peek(self, text: str | None = None) -> Tok | None:
        tok = self.toks[self.i] if self.i < len(self.toks) else None
        if text is not None and (tok is None or tok.text.upper() != text.upper()):
            return None
        return tok

    def take(self, text: str | None = None) -> Tok:
        tok = self.peek(text)
        if tok is None:
            raise DaxError(f"expected {text or 'more'} at token {self.i}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.expr()
        if self.i != len(self.toks):
            raise DaxError(f"unexpected {self.toks[self.i].text!r}")
        return node

    def expr(self) -> Node:
        if self.peek("VAR"):
            bindings = []
            while self.peek("VAR"):
                self.take("VAR")
                name = self.take().text
                self.take("=")
                bindings.append((name, self.expr()))
            self.take("RETURN")
            return ("var", bindings, self.expr())
        return self.binary(0)

    _LEVELS = (("||",), ("&&",), ("=", "<>", "<", ">", "<=", ">="), ("+", "-", "&"), ("*", "/"))

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while (
            (tok := self.peek()) is not None
            and tok.kind == "op"
            and tok.text in self._LEVELS[level]
        ):
            self.take()
            node = ("op", tok.text, node, self.binary(level + 1))
        return node

    def unary(self) -> Node:
        if self.peek("NOT") and not (
            self.i + 1 < len(self.toks) and self.toks[self.i + 1].text == "("
        ):
            self.take()
            return ("not", self.unary())
        if self.peek("-"):
            self.take()
            return ("neg", self.unary())
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "number":
            return ("num", float(tok.text))
        if tok.kind == "string":
            return ("str", tok.text)
        if tok.kind == "column":
            return ("col", tok.table, tok.col)
        if tok.kind == "measure":
            return ("measure", tok.text)
        if tok.text == "(":
            node = self.expr()
            self.take(")")
            return node
        if tok.kind == "name":
            if self.peek("("):
                self.take("(")
                args: list[Node] = []
                if not self.peek(")"):
                    args.append(self.expr())
                    while self.peek(","):
                        self.take(",")
                        args.append(self.expr())
                self.take(")")
                return ("call", tok.text.upper(), args)
            return ("name", tok.text)
        raise DaxError(f"unexpected {tok.text!r}")


def parse(text: str) -> Node:
    return _Parser(text).parse()


def columns_named(node: Any) -> set[tuple[str, str]]:
    """Every ``table[column]`` a measure names."""
    found: set[tuple[str, str]] = set()
    if isinstance(node, tuple) and len(node) == 3 and node[0] == "col":
        found.add((node[1], node[2]))
    if isinstance(node, (tuple, list)):
        for part in node:
            found |= columns_named(part)
    return found


def measures_named(node: Any) -> set[str]:
    """Every ``[measure]`` a measure refers to."""
    found: set[str] = set()
    if isinstance(node, tuple) and len(node) == 2 and node[0] == "measure":
        found.add(node[1])
    if isinstance(node, (tuple, list)):
        for part in node:
            found |= measures_named(part)
    return found


@dataclass
class Context:
    """A filter context: per column, the predicates a row's value must pass."""

    filters: dict[str, list[Predicate]] = field(default_factory=dict)

    def where(self, column: str, pred: Predicate, keep: bool = True) -> Context:
        filters = {c: list(ps) for c, ps in self.filters.items()}
        filters[column] = [*filters.get(column, []), pred] if keep else [pred]
        return Context(filters)


def _key(value: Any) -> Any:
    """DAX compares text without case."""
    return value.casefold() if isinstance(value, str) else value


def _equal(a: Any, b: Any) -> bool:
    if a is BLANK and b is BLANK:
        return True
    if a is BLANK:
        a = "" if isinstance(b, str) else 0
    if b is BLANK:
        b = "" if isinstance(a, str) else 0
    return bool(_key(a) == _key(b))


def format_number(value: Any, fmt: str) -> str:
    """FORMAT for the ``#,0.00##`` family of formats (grouping, min and max decimals)."""
    m = re.fullmatch(r"(#,)?0(?:\.(0*)(#*))?", fmt)
    if not m:
        raise DaxError(f"FORMAT string {fmt!r} not supported here")
    if value is BLANK:
        return ""
    least, most = len(m[2] or ""), len(m[2] or "") + len(m[3] or "")
    text = f"{value:{',' if m[1] else ''}.{most}f}"
    if most > least:
        whole, _, frac = text.partition(".")
        frac = frac[:least] + frac[least:].rstrip("0")
        text = whole + ("." + frac if frac else "")
    return text


class Model:
    """One table's rows and measures, evaluated under a :class:`Context`."""

    def __init__(self, table: str, rows: list[Row], columns: set[str], measures: dict[str, str]):
        self.table = table
        self.all_rows = rows
        self.columns = columns
        self.measures = {name: parse(text) for name, text in measures.items()}
        for name, node in self.measures.items():
            for t, c in columns_named(node):
                if t != table or c not in columns:
                    raise DaxError(f"{name}: no column {t}[{c}]")
            for other in measures_named(node) - set(self.measures):
                raise DaxError(f"{name}: no measure [{other}]")

    def rows(self, ctx: Context) -> list[Row]:
        return [
            r for r in self.all_rows if all(p(r[c]) for c, ps in ctx.filters.items() for p in ps)
        ]

    def measure(self, name: str, ctx: Context) -> Any:
        if name not in self.measures:
            raise DaxError(f"no measure [{name}]")
        return self.eval(self.measures[name], ctx, {})

    # --- evaluation ---------------------------------------------------------------

    def column(self, node: Node) -> str:
        if node[0] != "col":
            raise DaxError(f"a column is needed, not {node[0]}")
        return str(node[2])

    def eval(self, node: Node, ctx: Context, env: dict[str, Any]) -> Any:
        kind = node[0]
        if kind in ("num", "str"):
            return node[1]
        if kind == "measure":
            return self.measure(node[1], ctx)
        if kind == "name":
            if node[1] not in env:
                raise DaxError(f"unknown name {node[1]}")
            return env[node[1]]
        if kind == "var":
            inner = dict(env)
            for name, expr in node[1]:
                inner[name] = self.eval(expr, ctx, inner)
            return self.eval(node[2], ctx, inner)
        if kind == "not":
            return not self.eval(node[1], ctx, env)
        if kind == "neg":
            value = self.eval(node[1], ctx, env)
            return BLANK if value is BLANK else -value
        if kind == "op":
            return self.operator(
                node[1], self.eval(node[2], ctx, env), self.eval(node[3], ctx, env)
            )
        if kind == "call":
            return self.call(node[1], node[2], ctx, env)
        raise DaxError(f"{kind} not supported here")

    @staticmethod
    def operator(op: str, a: Any, b: Any) -> Any:
        if op == "=":
            return _equal(a, b)
        if op == "<>":
            return not _equal(a, b)
        if op in ("&&", "||"):
            return (bool(a) and bool(b)) if op == "&&" else (bool(a) or bool(b))
        if op == "&":
            return f"{'' if a is BLANK else a}{'' if b is BLANK else b}"
        a = 0 if a is BLANK else a
        b = 0 if b is BLANK else b
        ops: dict[str, Callable[[Any, Any], Any]] = {
            "<": lambda x, y: _key(x) < _key(y),
            ">": lambda x, y: _key(x) > _key(y),
            "<=": lambda x, y: _key(x) <= _key(y),
            ">=": lambda x, y: _key(x) >= _key(y),
            "+": lambda x, y: x + y,
            "-": lambda x, y: x - y,
            "*": lambda x, y: x * y,
            "/": lambda x, y: BLANK if y == 0 else x / y,
        }
        return ops[op](a, b)

    def values(self, node: Node, ctx: Context) -> list[Any]:
        return [r[self.column(node)] for r in self.rows(ctx)]

    def table_rows(self, node: Node, ctx: Context) -> list[Row]:
        if node != ("name", self.table):
            raise DaxError(f"a table is needed, not {node}")
        return self.rows(ctx)

    def filter_arg(
        self, node: Node, outer: Context, inner: Context, env: dict[str, Any]
    ) -> Context:
        """``inner`` with one CALCULATE filter; its value is taken in the ``outer`` context."""
        keep = False
        if node[0] == "call" and node[1] == "KEEPFILTERS":
            (node,) = node[2]
            keep = True
        if (
            node[0] != "op"
            or node[1] not in ("=", "<>", "<", ">", "<=", ">=")
            or node[2][0] != "col"
        ):
            raise DaxError(f"CALCULATE filter {node} not supported here")
        column = self.column(node[2])
        value = self.eval(node[3], outer, env)
        op = node[1]
        return inner.where(column, lambda v: bool(self.operator(op, v, value)), keep=keep)

    def call(self, fn: str, args: list[Node], ctx: Context, env: dict[str, Any]) -> Any:
        def arg(i: int) -> Any:
            return self.eval(args[i], ctx, env)

        if fn in ("TRUE", "FALSE", "BLANK") and not args:
            return {"TRUE": True, "FALSE": False, "BLANK": BLANK}[fn]
        if fn == "NOT" and len(args) == 1:
            return not arg(0)
        if fn == "IF" and len(args) in (2, 3):
            if arg(0):
                return arg(1)
            return arg(2) if len(args) == 3 else BLANK
        if fn == "SWITCH" and len(args) >= 3:
            subject = arg(0)
            pairs = args[1:]
            for i in range(0, len(pairs) - 1, 2):
                if _equal(subject, self.eval(pairs[i], ctx, env)):
                    return self.eval(pairs[i + 1], ctx, env)
            return self.eval(pairs[-1], ctx, env) if len(pairs) % 2 else BLANK
        if fn == "COUNTROWS" and len(args) == 1:
            return len(self.table_rows(args[0], ctx)) or BLANK
        if fn == "ISEMPTY" and len(args) == 1:
            return not self.table_rows(args[0], ctx)
        if fn in ("DISTINCTCOUNT", "HASONEVALUE") and len(args) == 1:
            distinct = {_key(v) for v in self.values(args[0], ctx)}
            if fn == "HASONEVALUE":
                return len(distinct) == 1
            return len(distinct) or BLANK
        if fn in ("MAX", "MIN", "AVERAGE") and len(args) == 1:
            present = [v for v in self.values(args[0], ctx) if v is not BLANK]
            if not present:
                return BLANK
            if fn == "AVERAGE":
                return sum(present) / len(present)
            return (max if fn == "MAX" else min)(present, key=_key)
        if fn == "CALCULATE" and args:
            inner = ctx
            for filter_node in args[1:]:
                inner = self.filter_arg(filter_node, ctx, inner, env)
            return self.eval(args[0], inner, env)
        if fn == "FORMAT" and len(args) == 2:
            return format_number(arg(0), arg(1))
        raise DaxError(f"{fn} with {len(args)} argument(s) not supported here")
