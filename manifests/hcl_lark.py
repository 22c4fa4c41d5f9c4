"""The general HCL parser: python-hcl2's lark grammar -> RawBlock tree, with positions, duplicate detection and
readable syntax errors. manifests.hcl tries a much faster parser for plain jobspecs first and comes here for
everything else (and for every error, so messages come from one place).

python-hcl2 gives either a position-less dict (last duplicate silently wins) or a lark parse tree. We walk the
lark tree for structure and positions, and hand each attribute's expression to python-hcl2's own serializer so
string escapes, numbers, lists and objects are decoded exactly as the library decodes them.
"""
from __future__ import annotations

from typing import Any

import hcl2
import lark
from hcl2.api import serialize, transform
from hcl2.utils import SerializationOptions
from lark import Token, Tree

from manifests.problems import Problem
from manifests.raw import RawAttr, RawBlock, block_where, join_where

_OPTIONS = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, preserve_heredocs=False, with_comments=False
)

# What a user would call each terminal the parser may expect.
_TERMINAL_WORDS = {
    "RBRACE": "'}'",
    "LBRACE": "'{'",
    "RSQB": "']'",
    "LSQB": "'['",
    "RPAR": "')'",
    "LPAR": "'('",
    "EQ": "'='",
    "COLON": "':'",
    "COMMA": "','",
    "DBLQUOTE": "'\"'",
    "NAME": "a name",
    "$END": "end of file",
    "NL_OR_COMMENT": "a new line",
}
_VALUE_STARTS = {"DBLQUOTE", "INT_LITERAL", "FLOAT_LITERAL", "LSQB", "HEREDOC_TEMPLATE"}
_STRING_INSIDE = {"STRING_CHARS", "INTERP_START"}


def parse_hcl(text: str) -> tuple[RawBlock | None, list[Problem]]:
    """Parse HCL text. Returns the root block (type "") and problems; root is None on a syntax error."""
    try:
        tree = hcl2.parses_to_tree(text)
    except lark.exceptions.UnexpectedInput as e:
        return None, [_syntax_problem(e)]
    except Exception as e:  # the library's own errors on input it accepted (e.g. odd heredocs)
        return None, [Problem(f"cannot parse HCL: {e}", line=getattr(e, "line", None))]
    problems: list[Problem] = []
    root = RawBlock(type="", line=1, column=1)
    body = tree.children[0] if tree.children else Tree("body", [])
    _fill_body(root, body, problems, "")
    return root, problems


def _fill_body(block: RawBlock, body: Tree, problems: list[Problem], where: str) -> None:
    for node in body.children:
        if not isinstance(node, Tree):
            continue
        if node.data == "attribute":
            name = _name_of(node.children[0])
            line, col = node.meta.line, node.meta.column
            if name in block.attrs:
                first = block.attrs[name]
                problems.append(
                    Problem(
                        f"duplicate attribute {name!r} (first set on line {first.line})",
                        where=join_where(where, name),
                        line=line,
                        column=col,
                    )
                )
                continue
            block.attrs[name] = RawAttr(_evaluate(node.children[-1]), line, col)
        elif node.data == "block":
            block.blocks.append(_block(node, problems, where))


def _block(node: Tree, problems: list[Problem], where: str) -> RawBlock:
    children = [c for c in node.children if not (isinstance(c, Tree) and c.data == "new_line_or_comment")]
    type_ = _name_of(children[0])
    labels: list[str] = []
    body: Tree | None = None
    for c in children[1:]:
        if isinstance(c, Token):
            continue
        if c.data == "body":
            body = c
        elif c.data == "string":
            labels.append(str(_evaluate(Tree("expr_term", [c]))))
        else:
            labels.append(_name_of(c))
    raw = RawBlock(type=type_, labels=tuple(labels), line=node.meta.line, column=node.meta.column)
    if body is not None:
        _fill_body(raw, body, problems, block_where(where, raw))
    return raw


def _name_of(node: Tree | Token) -> str:
    if isinstance(node, Token):
        return str(node)
    tokens = [t for t in node.scan_values(lambda v: isinstance(v, Token))]
    return "".join(str(t) for t in tokens)


_MISS = object()


def _literal(expr: Any) -> Any:
    """Plain literals (strings without escapes or interpolation, numbers, booleans, lists of those) straight from
    the parse tree. Most manifest values are such literals, and the general path below costs a document
    transform per value: this made parsing a manifest several times faster. Anything else returns _MISS."""
    if not isinstance(expr, Tree) or expr.data != "expr_term" or len(expr.children) != 1:
        return _MISS
    node = expr.children[0]
    if not isinstance(node, Tree):
        return _MISS
    kind = node.data
    if kind == "string":
        out = []
        for part in node.children[1:-1]:
            if not (isinstance(part, Tree) and part.data == "string_part" and len(part.children) == 1
                    and isinstance(part.children[0], Token)):
                return _MISS
            text = str(part.children[0])
            if "\\" in text or "${" in text or "%{" in text:
                return _MISS
            out.append(text)
        return "".join(out)
    if kind in ("int_lit", "float_lit") and len(node.children) == 1:
        text = str(node.children[0])
        try:
            return int(text) if kind == "int_lit" else float(text)
        except ValueError:
            return _MISS
    if kind == "literal_value" and len(node.children) == 1:
        return {"true": True, "false": False, "null": None}.get(str(node.children[0]), _MISS)
    if kind == "tuple":
        items = []
        for child in node.children:
            if isinstance(child, Tree):
                v = _literal(child)
                if v is _MISS:
                    return _MISS
                items.append(v)
            elif str(child) not in ("[", "]", ","):
                return _MISS
        return items
    return _MISS


def _evaluate(expr: Tree) -> Any:
    fast = _literal(expr)
    if fast is not _MISS:
        return fast
    # Serialize a one-attribute document around the expression: python-hcl2 only evaluates whole documents.
    attr = Tree("attribute", [Tree("identifier", [Token("NAME", "v")]), Token("EQ", " ="), expr])
    doc = Tree("start", [Tree("body", [attr])])
    value = serialize(transform(doc), serialization_options=_OPTIONS)["v"]
    if _is_heredoc(expr) and isinstance(value, str):
        # HCL keeps the newline before the closing marker; python-hcl2 drops it.
        value += "\n"
    return _unescape(value)


def _is_heredoc(expr: Tree) -> bool:
    return (
        isinstance(expr, Tree)
        and expr.data == "expr_term"
        and len(expr.children) == 1
        and isinstance(expr.children[0], Tree)
        and expr.children[0].data in ("heredoc_template", "heredoc_template_trim")
    )


def _unescape(value: Any) -> Any:
    """HCL's template escapes: `$${` is a literal `${`, `%%{` a literal `%{` (python-hcl2 keeps them doubled)."""
    if isinstance(value, str):
        return value.replace("$${", "${").replace("%%{", "%{")
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    if isinstance(value, dict):
        return {_unescape(k): _unescape(v) for k, v in value.items()}
    return value


def _syntax_problem(e: lark.exceptions.UnexpectedInput) -> Problem:
    line, col = getattr(e, "line", None), getattr(e, "column", None)
    if line is not None and line < 0:
        line, col = None, None
    return Problem(_reword(e), line=line, column=col)


def _reword(e: lark.exceptions.UnexpectedInput) -> str:
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        return f"unexpected character {e.char!r}"
    expected: set[str] = set(getattr(e, "expected", None) or getattr(e, "allowed", None) or ())
    token = getattr(e, "token", None)
    found = _describe_token(token)
    expected.discard("NL_OR_COMMENT") if len(expected) > 1 else None
    if expected <= {"RBRACE"} and expected:
        return f"expected '}}' to close a block, found {found}"
    if token is not None and str(token).lstrip().startswith("<<"):
        return "unterminated heredoc: the closing marker must stand alone on its own line"
    if "DBLQUOTE" in expected and expected & _STRING_INSIDE:
        return "unterminated string: expected a closing '\"'"
    if "EQ" in expected and "LBRACE" in expected:
        return f"expected '=' or '{{' after a name, found {found}"
    if "INT_LITERAL" in expected and "DBLQUOTE" in expected:
        close = " or ']'" if "RSQB" in expected else (" or '}'" if "RBRACE" in expected else "")
        return f"expected a value (string, number, list, object){close}, found {found}"
    if expected == {"$END"}:
        return f"unexpected {found}: no block is open here (one '}}' too many?)"
    if "NAME" in expected and ("$END" in expected or "RBRACE" in expected):
        return f"expected an attribute or block name, found {found}"
    words = sorted({_TERMINAL_WORDS.get(t, t) for t in expected})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return f"expected {' or '.join(words)}, found {found}" if words else f"unexpected {found}"


def _describe_token(token: Token | None) -> str:
    if token is None:
        return "something unexpected"
    if token.type == "$END":
        return "end of file"
    text = str(token).strip()
    first = text.split("\n", 1)[0][:20] if text else ""
    if not first:
        return "end of line" if "\n" in str(token) else "nothing"
    return f"{first!r}"
