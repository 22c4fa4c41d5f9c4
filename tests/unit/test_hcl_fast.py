"""The fast HCL parser against python-hcl2 (the lark path): whenever the fast one answers, it answers the same tree,
positions and value types included; and it does answer for plain jobspecs, or it would buy nothing."""
from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests import hcl_fast
from manifests.hcl import parse_hcl
from manifests.hcl_lark import parse_hcl as parse_lark
from manifests.raw import RawBlock

REPO = Path(__file__).resolve().parents[2]


def canon(value):
    """A comparable form that tells 1 from 1.0 from True (== does not)."""
    if isinstance(value, RawBlock):
        return ("block", value.type, value.labels, value.line, value.column,
                tuple((k, canon(a.value), a.line, a.column) for k, a in value.attrs.items()),
                tuple(canon(b) for b in value.blocks))
    if isinstance(value, list):
        return ("list", tuple(canon(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, canon(v)) for k, v in value.items()))
    return (type(value).__name__, value)


def check_same(text: str) -> bool:
    """True when the fast parser answered (and then it must agree with the lark path)."""
    fast = hcl_fast.parse(text)
    if fast is None:
        return False
    root, problems = parse_lark(text)
    assert root is not None and not problems, f"fast parser accepted what python-hcl2 rejects: {text!r}: {problems}"
    assert canon(fast) == canon(root), f"fast and lark trees differ for {text!r}"
    return True


def repo_hcl_files() -> list[Path]:
    skip = {".venv", "build", ".git"}
    return [p for p in REPO.rglob("*.hcl") if not skip & set(p.relative_to(REPO).parts)]


def test_every_hcl_file_in_the_repository_parses_the_same():
    files = repo_hcl_files()
    assert len(files) >= 3
    for path in files:
        check_same(path.read_text())


def test_plain_jobspecs_take_the_fast_path():
    for name in ("sleep-exec.hcl", "raw-exec-unlimited.hcl"):
        assert check_same((REPO / "manifests" / "examples" / name).read_text()), name
    # The bench's manifest, and interpolation of a plain variable.
    assert check_same('job "j" {\n  group "g" {\n    restart {\n      attempts = 10\n      delay = "0s"\n    }\n'
                      '    task "t" {\n      driver = "raw_exec"\n      config {\n        command = "/bin/sleep"\n'
                      '        args = ["${NOMAD_TASK_DIR}/x", "100"]\n      }\n'
                      '      resources { memory = 16 }\n      env {\n        A = "b"\n      }\n    }\n  }\n}\n')


def test_what_the_fast_parser_leaves_to_python_hcl2():
    # Each is valid HCL the fast parser does not decode itself; parse_hcl still gets it right via the lark path.
    cases = {
        'a = "x\\ty"\n': "x\ty",                      # escapes
        'a = <<EOF\nhi\nEOF\n': "hi\n",               # heredoc
        'a = "$${x}"\n': "${x}",                      # escaped interpolation
        'a = 1e3\n': 1000.0,                          # exponent
        'a = "${upper(x)}"\n': "${upper(x)}",        # a function in a template
    }
    for text, want in cases.items():
        assert hcl_fast.parse(text) is None, text
        root, problems = parse_hcl(text)
        assert not problems and root.attrs["a"].value == want, text
    for text in ('a = 1\na = 2\n', 'a = "x" b = 2\n', 'job "x" {\n', '/* c */ a = 1\n', 'a = 1\rb = 2\n'):
        assert hcl_fast.parse(text) is None, text


def test_errors_come_from_the_general_parser():
    root, problems = parse_hcl('job "x" {\n  a = 1\n  a = 2\n}\n')
    assert "duplicate attribute 'a'" in problems[0].message and problems[0].line == 3
    root, problems = parse_hcl('job "x" {\n  a = \n}\n')
    assert root is None and problems[0].line is not None


# ---- generated documents -------------------------------------------------------------------------------------
_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,6}", fullmatch=True).filter(
    lambda s: s not in ("true", "false", "null", "for", "if", "in"))
_plain = st.text(st.characters(blacklist_characters='"\\\r\n$%{}', blacklist_categories=("Cs", "Cc")), max_size=8)
_strings = st.one_of(_plain, st.builds(lambda a, v, b: f"{a}${{{v}}}{b}", _plain,
                                       st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}(\.[a-z0-9_]{1,4}){0,2}",
                                                     fullmatch=True), _plain))
_scalars = st.one_of(
    _strings.map(lambda s: f'"{s}"'),
    st.integers(-10**12, 10**12).map(str),
    st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False).map(
        lambda d: f"{d:f}" if "." in f"{d:f}" else f"{d:f}.0"),
    st.sampled_from(["true", "false", "null", "007", "-0"]),
)
_seps = st.sampled_from([",", ", ", " ,", ",\n", "\n,", ",  # c\n"])


def _values(depth: int):
    if depth == 0:
        return _scalars
    inner = _values(depth - 1)
    lists = st.tuples(st.lists(inner, max_size=4), _seps, st.booleans(), st.sampled_from(["", "\n", " "])).map(
        lambda t: "[" + t[3] + t[1].join(t[0]) + ("," if t[2] and t[0] else "") + t[3] + "]")
    objects = st.tuples(st.dictionaries(st.one_of(_names, _plain.map(lambda s: f'"{s}"')), inner, max_size=3),
                        st.sampled_from([", ", "\n", ",\n"])).map(
        lambda t: "{" + t[1].join(f"{k} = {v}" for k, v in t[0].items()) + "}")
    return st.one_of(inner, lists, objects)


_ws = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def documents(draw, depth: int = 3) -> str:
    lines: list[str] = []
    used: set[str] = set()
    indent = draw(_ws)
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["attr", "block", "oneline", "blank", "comment"] if depth else ["attr"]))
        if kind == "attr":
            name = draw(_names)
            if name in used:
                continue
            used.add(name)
            tail = draw(st.sampled_from(["", " ", " # note", " // note"]))
            lines.append(f"{indent}{name}{draw(_ws)}={draw(_ws)}{draw(_values(2))}{tail}")
        elif kind == "block":
            labels = draw(st.lists(st.one_of(_names, _plain.map(lambda s: f'"{s}"')), max_size=2))
            body = draw(documents(depth - 1))
            head = " ".join([draw(_names), *labels])
            lines.append(f"{indent}{head} {{\n{body}{indent}}}")
        elif kind == "oneline":
            head = " ".join([draw(_names), *draw(st.lists(_plain.map(lambda s: f'"{s}"'), max_size=1))])
            inner = draw(st.one_of(st.just(""), st.just(" "),
                                   st.builds(lambda n, v: f" {n} = {v} ", _names, _values(1))))
            lines.append(f"{indent}{head} {{{inner}}}")
        elif kind == "blank":
            lines.append(draw(_ws))
        else:
            lines.append(f"{indent}# {draw(_plain)}")
    nl = "\r\n" if draw(st.integers(0, 9)) == 0 else "\n"
    return "".join(line + nl for line in lines)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_documents_parse_the_same(text):
    check_same(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.integers(0, 2**32 - 1))
def test_mutated_documents_parse_the_same_or_fall_back(text, seed):
    # Damage a valid document: the fast parser must refuse, or agree with python-hcl2 on what it accepts.
    rng = random.Random(seed)
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(3)
        pos = rng.randrange(len(chars) + 1)
        if op == 0 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op == 1:
            chars.insert(pos, rng.choice('"{}[]=,\n#/$\\-. a1\r*<'))
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice('"{}[]=,\n#$ x9')
    check_same("".join(chars))


def test_mutated_examples_parse_the_same_or_fall_back():
    rng = random.Random(20261123)
    bases = [p.read_text() for p in repo_hcl_files()]
    accepted = 0
    for _ in range(3000):
        chars = list(rng.choice(bases))
        pos = rng.randrange(len(chars))
        op = rng.randrange(3)
        if op == 0:
            del chars[pos]
        elif op == 1:
            chars.insert(pos, rng.choice('"{}[]=,\n#/$\\-. a1'))
        else:
            chars[pos] = rng.choice('"{}[]=,\n#$ x9')
        accepted += check_same("".join(chars))
    assert accepted > 100  # the mutations that stay valid are mostly still plain jobspecs
