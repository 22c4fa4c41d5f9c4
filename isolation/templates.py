"""Render `template` blocks: the part of consul-template's language (Go text/template) that needs no Consul,
Vault or Nomad servers. Pure: text and variables in, text out; no file or network access.

Supported syntax
    {{ pipeline }}  {{- trims whitespace before  -}} trims whitespace after  {{/* comment */}}
    {{ if P }} .. {{ else if P }} .. {{ else }} .. {{ end }}
    {{ range P }} / {{ range $i, $v := P }} .. {{ else }} .. {{ end }}   (lists, maps by sorted key, ints)
    {{ with P }} .. {{ else }} .. {{ end }}      {{ $x := P }}  {{ $x = P }}
    pipelines `a | f b` (the piped value becomes the last argument), ( sub pipelines ), strings "..." and `...`,
    numbers, true, false, nil, `.` and `.Field` on maps, `$` the root.

Functions (consul-template's argument order: the value being worked on comes last, so it can be piped)
    task:      env NAME, envOrDefault NAME DEFAULT (the task's environment, as Nomad gives it to templates)
    strings:   toUpper toLower toTitle trimSpace trim CUTSET S, trimPrefix P S, trimSuffix P S,
               split SEP S, join SEP LIST, replaceAll OLD NEW S, contains NEEDLE S|LIST, hasPrefix P S,
               hasSuffix P S, indent N S, regexMatch RE S, regexReplaceAll RE REPL S, default DEFAULT VALUE
    data:      parseInt parseFloat parseBool parseJSON toJSON toJSONPretty base64Encode base64Decode sha256Hex
               md5sum
    numbers:   add subtract multiply divide modulo (b op a, as consul-template), loop [START] END
    Go:        print printf println len index eq ne lt le gt ge and or not

Rejected with a clear error (they need a cluster, or would act on the host as root): see
manifests.validate.TEMPLATE_FORBIDDEN and TEMPLATE_UNSAFE (validation rejects them when the manifest loads).
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from manifests.digest import sha256_hex
from manifests.validate import forbidden_template_function
class TemplateError(ValueError):
    """The template cannot be parsed or rendered. The message names the function or the position."""


# ---- lexing ------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<decl>:=)
  | (?P<op>[|(),=])
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<field>\.(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.X)


@dataclass(frozen=True)
class Tok:
    kind: str
    value: str


def _tokens(src: str, where: str) -> list[Tok]:
    out, pos = [], 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise TemplateError(f"{where}: unexpected {src[pos:pos + 10]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append(Tok(m.lastgroup or "", m.group()))
    return out


def _split(text: str, left: str, right: str) -> list[tuple[str, str, int]]:
    """Text and action pieces: ("text", s, line) / ("action", s, line), with trim markers applied."""
    pieces: list[tuple[str, str, int]] = []
    pos = 0
    while True:
        i = text.find(left, pos)
        if i < 0:
            pieces.append(("text", text[pos:], text.count("\n", 0, pos) + 1))
            return pieces
        line = text.count("\n", 0, i) + 1
        body_start = i + len(left)
        chunk = text[pos:i]
        if text.startswith("- ", body_start) or text.startswith("-\n", body_start):
            chunk = chunk.rstrip()
            body_start += 1
        pieces.append(("text", chunk, line))
        if text[body_start:].lstrip().startswith("/*"):
            end = text.find("*/", body_start)
            j = text.find(right, end + 2 if end >= 0 else body_start)
        else:
            j = _find_close(text, body_start, right)
        if j < 0:
            raise TemplateError(f"line {line}: unclosed action (no {right!r})")
        body = text[body_start:j]
        pos = j + len(right)
        if body.endswith(" -") or body.endswith("\n-"):
            body = body[:-1]
            k = pos
            while k < len(text) and text[k].isspace():
                k += 1
            pos = k
        pieces.append(("action", body.strip(), line))


def _find_close(text: str, start: int, right: str) -> int:
    """The closing delimiter, skipping over string literals (which may contain it)."""
    i = start
    while i < len(text):
        c = text[i]
        if c in "\"`":
            end = i + 1
            while end < len(text) and text[end] != c:
                end += 2 if (c == '"' and text[end] == "\\") else 1
            i = end + 1
            continue
        if text.startswith(right, i):
            return i
        i += 1
    return -1


# ---- parsing -----------------------------------------------------------------------------------------------
@dataclass
class Pipeline:
    decl: tuple[str, ...]  # variables declared (":=") or assigned ("=")
    assign: bool
    cmds: list[list[Any]]  # each command: operands (Tok or Pipeline)


@dataclass
class Node:
    kind: str  # text | action | if | range | with
    text: str = ""
    pipe: Pipeline | None = None
    body: list["Node"] = field(default_factory=list)
    orelse: list["Node"] = field(default_factory=list)
    line: int = 0


class _Parser:
    def __init__(self, pieces: list[tuple[str, str, int]]):
        self.pieces = pieces
        self.i = 0

    def parse(self) -> list[Node]:
        nodes, stop = self.block()
        if stop is not None:
            raise TemplateError(f"line {stop[1]}: unexpected {{{{{stop[0]}}}}}")
        return nodes

    def block(self) -> tuple[list[Node], tuple[str, int] | None]:
        nodes: list[Node] = []
        while self.i < len(self.pieces):
            kind, s, line = self.pieces[self.i]
            self.i += 1
            if kind == "text":
                if s:
                    nodes.append(Node("text", text=s, line=line))
                continue
            if s.startswith("/*"):
                continue
            word = s.split(None, 1)[0] if s else ""
            if word in ("end", "else"):
                return nodes, (s, line)
            if word in ("if", "range", "with"):
                nodes.append(self.control(word, s[len(word):], line))
                continue
            if word in ("define", "template", "block", "break", "continue"):
                raise TemplateError(f"line {line}: {{{{{word}}}}} is not supported by tasksd's template renderer")
            nodes.append(Node("action", pipe=self.pipeline(s, line), line=line))
        return nodes, None

    def control(self, word: str, rest: str, line: int) -> Node:
        node = Node(word, pipe=self.pipeline(rest.strip(), line, allow_two=(word == "range")), line=line)
        node.body, stop = self.block()
        if stop is None:
            raise TemplateError(f"line {line}: {{{{{word}}}}} without {{{{end}}}}")
        if stop[0] == "else":
            node.orelse, stop = self.block()
        elif stop[0].startswith("else "):
            # "else if X" chains: the else branch is a nested if that owns the final {{end}}.
            inner = stop[0][5:].strip()
            w = inner.split(None, 1)[0]
            if w not in ("if", "with"):
                raise TemplateError(f"line {stop[1]}: unexpected {{{{{stop[0]}}}}}")
            node.orelse = [self.control(w, inner[len(w):], stop[1])]
            return node
        if stop is None or stop[0] != "end":
            raise TemplateError(f"line {line}: {{{{{word}}}}} without {{{{end}}}}")
        return node

    def pipeline(self, s: str, line: int, allow_two: bool = False) -> Pipeline:
        toks = _tokens(s, f"line {line}")
        if not toks:
            raise TemplateError(f"line {line}: empty action")
        decl: list[str] = []
        assign = False
        for j, t in enumerate(toks):
            if t.kind in ("decl",) or (t.kind == "op" and t.value == "="):
                names = [x for x in toks[:j] if not (x.kind == "op" and x.value == ",")]
                if names and all(x.kind == "var" for x in names) and len(names) <= (2 if allow_two else 1):
                    decl = [x.value for x in names]
                    assign = t.value == "="
                    toks = toks[j + 1:]
                break
            if t.kind not in ("var",) and not (t.kind == "op" and t.value == ","):
                break
        pos = 0

        def parse_cmds(end: str | None) -> list[list[Any]]:
            nonlocal pos
            cmds: list[list[Any]] = [[]]
            while pos < len(toks):
                t = toks[pos]
                pos += 1
                if t.kind == "op" and t.value == "|":
                    cmds.append([])
                elif t.kind == "op" and t.value == "(":
                    sub = parse_cmds(")")
                    cmds[-1].append(Pipeline((), False, sub))
                elif t.kind == "op" and t.value == ")":
                    if end != ")":
                        raise TemplateError(f"line {line}: unexpected )")
                    break
                elif t.kind == "op":
                    raise TemplateError(f"line {line}: unexpected {t.value!r}")
                else:
                    cmds[-1].append(t)
            else:
                if end == ")":
                    raise TemplateError(f"line {line}: unclosed (")
            if any(not c for c in cmds):
                raise TemplateError(f"line {line}: empty command in pipeline")
            for c in cmds:
                if isinstance(c[0], Tok) and c[0].kind == "ident":
                    _check_function(c[0].value, line)
                for op in c[1:]:
                    if isinstance(op, Tok) and op.kind == "ident" and op.value not in ("true", "false", "nil"):
                        _check_function(op.value, line)
            return cmds

        return Pipeline(tuple(decl), assign, parse_cmds(None))


def _check_function(name: str, line: int) -> None:
    if name in ("true", "false", "nil"):
        return
    msg = forbidden_template_function(name)
    if msg:
        raise TemplateError(f"line {line}: {msg}")
    if name not in FUNCS:
        raise TemplateError(f"line {line}: function {name!r} is not defined (see isolation/templates.py for the "
                            f"functions tasksd supports)")


def parse(text: str, left: str = "{{", right: str = "}}") -> list[Node]:
    return _Parser(_split(text, left, right)).parse()


# ---- values ------------------------------------------------------------------------------------------------
def go_str(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_str(x)}" for k, x in sorted(v.items())) + "]"
    return str(v)


def truthy(v: Any) -> bool:
    return bool(v) if v is not None else False


def _md5_hex(s: Any) -> str:
    import hashlib  # loads OpenSSL: only templates that use md5sum pay for it

    return hashlib.md5(str(s).encode()).hexdigest()


def _num(v: Any) -> int | float:
    if isinstance(v, bool):
        raise TemplateError(f"expected a number, got {v!r}")
    if isinstance(v, (int, float)):
        return v
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return float(v)
        except (TypeError, ValueError):
            raise TemplateError(f"expected a number, got {v!r}") from None


def _printf(fmt: str, *args: Any) -> str:
    out, it = [], iter(args)

    def sub(m: re.Match) -> str:
        spec, verb = m.group(1), m.group(2)
        if verb == "%":
            return "%"
        try:
            a = next(it)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        if verb in ("v", "s"):
            return ("%" + spec + "s") % go_str(a)
        if verb == "q":
            return json.dumps(go_str(a))
        if verb == "d":
            return ("%" + spec + "d") % int(_num(a))
        if verb in "feEgxXo":
            return ("%" + spec + verb) % (_num(a) if verb in "feEg" else int(_num(a)))
        if verb == "t":
            return go_str(bool(a))
        return m.group(0)

    out.append(re.sub(r"%([-+# 0]*\d*(?:\.\d+)?)([a-zA-Z%])", sub, fmt))
    return "".join(out)


def _contains(needle: Any, hay: Any) -> bool:
    if isinstance(hay, (list, tuple, dict)):
        return needle in hay
    return str(needle) in str(hay)


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        try:
            v = v[int(k)] if isinstance(v, (list, tuple, str)) else v.get(k)
        except (IndexError, ValueError, AttributeError):
            raise TemplateError(f"index {k!r} out of range") from None
    return v


def _loop(*a: Any) -> list[int]:
    if len(a) == 1:
        return list(range(int(_num(a[0]))))
    if len(a) == 2:
        return list(range(int(_num(a[0])), int(_num(a[1]))))
    raise TemplateError("loop takes END or START END")


def _div(b: Any, a: Any) -> int | float:
    if _num(b) == 0:
        raise TemplateError("division by zero")
    x, y = _num(a), _num(b)
    return x // y if isinstance(x, int) and isinstance(y, int) else x / y


def _cmp(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def f(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) or isinstance(b, (int, float)):
            try:
                return op(_num(a), _num(b))
            except TemplateError:
                pass
        return op(a, b)
    return f


# `env` and `envOrDefault` are bound per render (they read the task's environment, not the daemon's).
FUNCS: dict[str, Callable[..., Any]] = {
    "env": lambda name: "",
    "envOrDefault": lambda name, default: default,
    "toUpper": lambda s: str(s).upper(),
    "toLower": lambda s: str(s).lower(),
    "toTitle": lambda s: str(s).title(),
    "trimSpace": lambda s: str(s).strip(),
    "trim": lambda cut, s: str(s).strip(str(cut)),
    "trimPrefix": lambda p, s: str(s).removeprefix(str(p)),
    "trimSuffix": lambda p, s: str(s).removesuffix(str(p)),
    "split": lambda sep, s: str(s).split(str(sep)) if str(s) else [],
    "join": lambda sep, items: str(sep).join(go_str(x) for x in items),
    "replaceAll": lambda old, new, s: str(s).replace(str(old), str(new)),
    "contains": _contains,
    "hasPrefix": lambda p, s: str(s).startswith(str(p)),
    "hasSuffix": lambda p, s: str(s).endswith(str(p)),
    "indent": lambda n, s: "\n".join(" " * int(_num(n)) + line for line in str(s).split("\n")),
    "regexMatch": lambda rx, s: re.search(str(rx), str(s)) is not None,
    "regexReplaceAll": lambda rx, repl, s: re.sub(str(rx), re.sub(r"\$\{?(\d+)\}?", r"\\\1", str(repl)), str(s)),
    "default": lambda d, v=None: v if truthy(v) else d,
    "parseInt": lambda s: int(str(s).strip(), 0),
    "parseFloat": lambda s: float(str(s).strip()),
    "parseBool": lambda s: {"1": True, "t": True, "true": True, "0": False, "f": False,
                            "false": False}[str(s).strip().lower()],
    "parseJSON": lambda s: json.loads(str(s)),
    "toJSON": lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")),
    "toJSONPretty": lambda v: json.dumps(v, sort_keys=True, indent=2),
    "base64Encode": lambda s: base64.b64encode(str(s).encode()).decode(),
    "base64Decode": lambda s: base64.b64decode(str(s)).decode(),
    "sha256Hex": lambda s: sha256_hex(str(s).encode()),
    "md5sum": _md5_hex,
    "add": lambda b, a: _num(a) + _num(b),
    "subtract": lambda b, a: _num(a) - _num(b),
    "multiply": lambda b, a: _num(a) * _num(b),
    "divide": _div,
    "modulo": lambda b, a: _num(a) % _num(b),
    "loop": _loop,
    "print": lambda *a: "".join(go_str(x) for x in a),
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "printf": _printf,
    "len": lambda v: len(v) if v is not None else 0,
    "index": _index,
    "eq": lambda a, *bs: any(_cmp(lambda x, y: x == y)(a, b) for b in bs),
    "ne": _cmp(lambda a, b: a != b),
    "lt": _cmp(lambda a, b: a < b),
    "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b),
    "ge": _cmp(lambda a, b: a >= b),
    "not": lambda v: not truthy(v),
    "and": None,  # short-circuit: evaluated specially
    "or": None,
}


# ---- evaluation --------------------------------------------------------------------------------------------
class _Renderer:
    def __init__(self, env: Mapping[str, str], data: Any):
        self.funcs = dict(FUNCS)
        self.funcs["env"] = lambda name: env.get(str(name), "")
        self.funcs["envOrDefault"] = lambda name, default: env.get(str(name)) or default
        self.scopes: list[dict[str, Any]] = [{"$": data}]

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise TemplateError(f"undefined variable {name}")

    def run(self, nodes: list[Node], dot: Any, out: list[str]) -> None:
        for n in nodes:
            try:
                if n.kind == "text":
                    out.append(n.text)
                elif n.kind == "action":
                    v = self.pipe(n.pipe, dot)
                    if not n.pipe.decl:
                        out.append(go_str(v))
                elif n.kind in ("if", "with"):
                    self.scopes.append({})
                    v = self.pipe(n.pipe, dot)
                    if truthy(v):
                        self.run(n.body, v if n.kind == "with" else dot, out)
                    else:
                        self.run(n.orelse, dot, out)
                    self.scopes.pop()
                elif n.kind == "range":
                    self.range(n, dot, out)
            except TemplateError as e:
                if str(e).startswith("line "):
                    raise
                raise TemplateError(f"line {n.line}: {e}") from None
            except (TypeError, ValueError, KeyError, ZeroDivisionError) as e:
                raise TemplateError(f"line {n.line}: {type(e).__name__}: {e}") from None

    def range(self, n: Node, dot: Any, out: list[str]) -> None:
        assert n.pipe is not None
        decl, n.pipe.decl = n.pipe.decl, ()
        try:
            v = self.pipe(n.pipe, dot)
        finally:
            n.pipe.decl = decl
        if isinstance(v, dict):
            items = [(k, v[k]) for k in sorted(v)]
        elif isinstance(v, int) and not isinstance(v, bool):
            items = list(enumerate(range(v)))
        elif v is None:
            items = []
        elif isinstance(v, (list, tuple)):
            items = list(enumerate(v))
        else:
            raise TemplateError(f"range can't iterate over {go_str(v)}")
        if not items:
            self.run(n.orelse, dot, out)
            return
        for k, x in items:
            scope: dict[str, Any] = {}
            if len(decl) == 1:
                scope[decl[0]] = x
            elif len(decl) == 2:
                scope[decl[0]], scope[decl[1]] = k, x
            self.scopes.append(scope)
            self.run(n.body, x, out)
            self.scopes.pop()

    def pipe(self, p: Pipeline, dot: Any) -> Any:
        value: Any = _NOTHING
        for cmd in p.cmds:
            value = self.command(cmd, dot, value)
        if p.decl:
            if p.assign:
                for scope in reversed(self.scopes):
                    if p.decl[0] in scope:
                        scope[p.decl[0]] = value
                        break
                else:
                    raise TemplateError(f"undefined variable {p.decl[0]}")
            else:
                self.scopes[-1][p.decl[0]] = value
        return value

    def command(self, cmd: list[Any], dot: Any, piped: Any) -> Any:
        head = cmd[0]
        if isinstance(head, Tok) and head.kind == "ident" and head.value not in ("true", "false", "nil"):
            name = head.value
            if name in ("and", "or"):
                args = [lambda o=o: self.operand(o, dot) for o in cmd[1:]]
                if piped is not _NOTHING:
                    args.append(lambda: piped)
                v: Any = None
                for a in args:
                    v = a()
                    if truthy(v) != (name == "and"):
                        return v
                return v
            vals = [self.operand(o, dot) for o in cmd[1:]]
            if piped is not _NOTHING:
                vals.append(piped)
            try:
                return self.funcs[name](*vals)
            except TypeError as e:
                raise TemplateError(f"wrong arguments for {name}: {e}") from None
        if len(cmd) > 1 or piped is not _NOTHING:
            raise TemplateError(f"can't give arguments to non-function {self.describe(head)}")
        return self.operand(head, dot)

    def describe(self, o: Any) -> str:
        return o.value if isinstance(o, Tok) else "(...)"

    def operand(self, o: Any, dot: Any) -> Any:
        if isinstance(o, Pipeline):
            return self.pipe(o, dot)
        k, s = o.kind, o.value
        if k == "str":
            return json.loads(s)
        if k == "raw":
            return s[1:-1]
        if k == "num":
            return float(s) if "." in s else int(s)
        if k == "ident":
            if s in ("true", "false"):
                return s == "true"
            if s == "nil":
                return None
            return self.command([o], dot, _NOTHING)
        if k == "field":
            return _fields(dot, s[1:].split(".") if s != "." else [])
        if k == "var":
            name, *path = s.split(".")
            return _fields(self.lookup(name), path)
        raise TemplateError(f"unexpected {s!r}")


_NOTHING = object()


def _fields(v: Any, path: list[str]) -> Any:
    for p in path:
        if isinstance(v, dict):
            v = v.get(p)
        elif v is None:
            return None
        else:
            raise TemplateError(f"can't evaluate field {p} in {go_str(v)}")
    return v


def render(text: str, env: Mapping[str, str], *, left: str = "{{", right: str = "}}", data: Any = None) -> str:
    """Render one template with the task's environment `env` (what `env "X"` returns)."""
    nodes = parse(text, left, right)
    out: list[str] = []
    _Renderer(env, data).run(nodes, data, out)
    return "".join(out)


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines of an `env = true` template: blank lines and # comments skipped, optional `export `,
    single quotes literal, double quotes with \\n \\" \\\\ escapes."""
    env: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", key):
            raise TemplateError(f"env template line {n}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), value[1:-1])
        else:
            value = re.sub(r"\s+#.*$", "", value)
        env[key] = value
    return env
