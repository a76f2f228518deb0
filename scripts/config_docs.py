"""Render docs/configuration.md's table of every key from the configuration schema.

The schema (``cryptostream/config.py``) is the one source of truth: each key's
default and allowed values come from its msgspec struct, and its description from
the ``#:`` comment above the field. ``tests/unit/test_config_docs.py`` fails when
the committed page differs from what this renders, or a key has no description.

    python3 scripts/config_docs.py            # rewrite docs/configuration.md
    python3 scripts/config_docs.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import ast
import sys
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"
#: Secrets read from the environment only, never from a file or a CRYPTOSTREAM_ variable.
ENV_ONLY = {"coincap.api_key": "COINCAP_API_KEY", "kafka.sasl_password": "KAFKA_SASL_PASSWORD"}
BEGIN = "<!-- generated: the keys (scripts/config_docs.py) -->"
END = "<!-- end of the generated keys -->"


def descriptions(source: str) -> dict[str, dict[str, str]]:
    """``{class name: {field: its #: comment}}`` from the module's source."""
    lines = source.splitlines()
    found: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, str] = {}
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                comment: list[str] = []
                i = stmt.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#:"):
                    comment.insert(0, lines[i].strip()[2:].strip())
                    i -= 1
                fields[stmt.target.id] = " ".join(comment)
        found[node.name] = fields
    return found


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return "`" + ", ".join(str(v) for v in value) + "`" if value else "*(none)*"
    if value == "":
        return "*(none)*"
    return f"`{value}`"


def _choices(hint: Any) -> str:
    """The allowed values of a ``Literal`` (or a tuple of one), else ''."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args:
        return _choices(args[0])
    if typing.get_origin(hint) is typing.Literal:
        return ", ".join(f"`{a}`" for a in args)
    return ""


def rows() -> list[tuple[str, str, str, str]]:
    """(key, environment variable, default, description) of every key, in schema order."""
    import msgspec

    from cryptostream import config as cfg

    docs = descriptions(Path(cfg.__file__).read_text(encoding="utf-8"))
    out = []
    defaults = cfg.Config()
    for section in msgspec.structs.fields(cfg.Config):
        struct = type(getattr(defaults, section.name))
        hints = typing.get_type_hints(struct, include_extras=True)
        for field in msgspec.structs.fields(struct):
            key = f"{section.name}.{field.name}"
            if key in ENV_ONLY:
                continue  # from the environment only: see the page's text
            default = getattr(getattr(defaults, section.name), field.name)
            if isinstance(default, cfg.Secret):
                default = ""
            text = docs.get(struct.__name__, {}).get(field.name, "").replace("``", "`")
            hint = hints[field.name]
            while typing.get_origin(hint) is typing.Annotated:
                hint = typing.get_args(hint)[0]
            choices = _choices(hint)
            if choices and choices not in text:
                text = f"{text} One of {choices}." if text else f"One of {choices}."
            env = f"CRYPTOSTREAM_{section.name.upper()}__{field.name.upper()}"
            out.append((key, env, _value(default), text))
    return out


def render_table() -> str:
    lines = [
        BEGIN,
        "",
        "| key | environment variable | default | what it does |",
        "|---|---|---|---|",
    ]
    for key, env, default, text in rows():
        cell = text.replace("|", "\\|")
        lines.append(f"| `{key}` | `{env}` | {default} | {cell} |")
    lines += ["", END]
    return "\n".join(lines)


def render(page: str) -> str:
    """``page`` with its generated part replaced by the table of today's schema."""
    head, sep, rest = page.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"{PAGE} has no generated part ({BEGIN} … {END})")
    return head + render_table() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    current = PAGE.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{PAGE.relative_to(REPO)} is out of date: run scripts/config_docs.py")
            return 1
        return 0
    PAGE.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
