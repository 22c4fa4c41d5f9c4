"""A small, strict HCL parser for plain jobspecs; None means "not sure, ask python-hcl2".

It accepts blocks (identifier or simple-string labels; bodies on their own lines, `{}` or a one-attribute
`{ a = 1 }`), attributes one per line, and literal values: strings without escapes or template directives (a plain
`${name.path}` interpolation is kept verbatim, as python-hcl2 renders it), integers and decimals with an optional
minus, true/false/null, lists and objects of those. Comments: `#` and `//`. Anything else (heredocs, escapes,
expressions, functions, block comments, duplicates, syntax errors, odd layout) gives None and the caller uses the
general parser, which also writes every error message. tests/unit/test_hcl_fast.py holds this parser to
python-hcl2's results on generated and mutated documents: whenever it answers, it answers the same.
"""
from __future__ import annotations

import re
from typing import Any

from manifests.raw import RawAttr, RawBlock
from manifests.sharing import short

_TOKEN = re.compile(
    r"""
    (?P<nl>\r?\n)
    |(?P<ws>[ \t]+)
    |(?P<comment>(?:\#|//)[^\r\n]*)
    |(?P<num>-?[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.]))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
    |(?P<str>"(?:[^"\\\r\n$%]|\$(?![{$])|%(?![{%])|\$\{[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\})*")
    |(?P<punct>[={}\[\],])
    """,
    re.VERBOSE,
)
_CONSTANTS = {"true": True, "false": False, "null": None}
_EOF = ("eof", "", 0, 0)


class _GiveUp(Exception):
    pass


def parse(text: str) -> RawBlock | None:
    try:
        tokens = _tokenize(text)
        return _Parser(tokens).document()
    except _GiveUp:
        return None


def _tokenize(text: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, line, column) of every significant token; whitespace and comments dropped, newlines kept."""
    out: list[tuple[str, str, int, int]] = []
    line, line_start, pos, end = 1, 0, 0, len(text)
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise _GiveUp
        kind = m.lastgroup
        if kind == "nl":
            out.append(("nl", "", line, pos - line_start + 1))
            line += 1
            line_start = m.end()
        elif kind == "punct":
            out.append((m.group(), m.group(), line, pos - line_start + 1))
        elif kind != "ws" and kind != "comment":
            out.append((kind, m.group(), line, pos - line_start + 1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str, int, int]]):
        self.tokens = tokens
        self.i = 0

    def peek(self, ahead: int = 0) -> tuple[str, str, int, int]:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else _EOF

    def take(self, kind: str) -> tuple[str, str, int, int]:
        tok = self.peek()
        if tok[0] != kind:
            raise _GiveUp
        self.i += 1
        return tok

    def skip_newlines(self) -> None:
        while self.peek()[0] == "nl":
            self.i += 1

    def end_of_item(self) -> None:
        """An attribute or a block ends its line (python-hcl2 is laxer here; leave such text to it)."""
        kind = self.peek()[0]
        if kind == "nl":
            self.i += 1
        elif kind != "eof":
            raise _GiveUp

    # ---- structure -------------------------------------------------------------------------------------------
    def document(self) -> RawBlock:
        root = RawBlock(type="", line=1, column=1)
        self.body(root, nested=False)
        return root

    def body(self, block: RawBlock, nested: bool) -> None:
        while True:
            self.skip_newlines()
            kind = self.peek()[0]
            if kind == "eof":
                if nested:
                    raise _GiveUp
                return
            if kind == "}" and nested:
                return
            self.item(block)

    def item(self, block: RawBlock) -> None:
        _, name, line, col = self.take("ident")
        if self.peek()[0] == "=":
            self.i += 1
            self.attribute(block, name, line, col)
            self.end_of_item()
            return
        labels: list[str] = []
        while self.peek()[0] in ("ident", "str"):
            kind, text, _, _ = self.peek()
            self.i += 1
            if kind == "str":
                if "${" in text:
                    raise _GiveUp
                labels.append(short(text[1:-1]))
            else:
                labels.append(text)
        self.take("{")
        child = RawBlock(type=name, labels=tuple(labels), line=line, column=col)
        nxt = self.peek()[0]
        if nxt == "}":
            self.i += 1
        elif nxt == "nl":
            self.body(child, nested=True)
            self.take("}")
        elif nxt == "ident" and self.peek(1)[0] == "=":
            # The one-line form `resources { memory = 64 }`: exactly one attribute.
            _, aname, aline, acol = self.take("ident")
            self.i += 1
            self.attribute(child, aname, aline, acol)
            self.take("}")
        else:
            raise _GiveUp
        block.blocks.append(child)
        self.end_of_item()

    def attribute(self, block: RawBlock, name: str, line: int, col: int) -> None:
        if name in block.attrs:
            raise _GiveUp  # the general parser reports duplicates
        block.attrs[name] = RawAttr(self.value(), line, col)

    # ---- values ----------------------------------------------------------------------------------------------
    def value(self) -> Any:
        kind, text, _, _ = self.peek()
        self.i += 1
        if kind == "str":
            return short(text[1:-1])
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "ident":
            if text not in _CONSTANTS:
                raise _GiveUp  # a variable or function: an expression
            return _CONSTANTS[text]
        if kind == "[":
            return self.list_()
        if kind == "{":
            return self.object_()
        raise _GiveUp

    def list_(self) -> list:
        items: list = []
        while True:
            self.skip_newlines()
            if self.peek()[0] == "]":
                self.i += 1
                return items
            items.append(self.value())
            self.skip_newlines()
            kind = self.peek()[0]
            if kind == ",":
                self.i += 1
            elif kind != "]":
                raise _GiveUp

    def object_(self) -> dict:
        out: dict = {}
        while True:
            self.skip_newlines()
            kind, text, _, _ = self.peek()
            if kind == "}":
                self.i += 1
                return out
            if kind == "str" and "${" not in text:
                key = text[1:-1]
            elif kind == "ident":
                key = text
            else:
                raise _GiveUp
            self.i += 1
            self.take("=")
            if key in out:
                raise _GiveUp
            out[key] = self.value()
            kind = self.peek()[0]
            if kind in (",", "nl"):
                self.i += 1
            elif kind != "}":
                raise _GiveUp
