"""Hostile manifests against the pure loader: thousands of generated and mutated inputs; it never raises, and
every input it does not accept comes back with at least one error naming the file it was given."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests.loader import MAX_MANIFEST_BYTES, load_bytes, load_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").rglob("*.hcl")) + sorted(
    (REPO / "manifests" / "examples").rglob("*.yaml"))
TEXTS = [p.read_text() for p in EXAMPLES]
NASTY = ["../", "../../etc/passwd", "\x00", "}", "{", '"', "${", "%{", "<<EOF\n", "\ufeff", "\udcff", "-",
         "\n", "job", "group", "task", "destination", "= [", "1e999", "-1", "99999999999999999999"]


def check(result, path: str) -> None:
    assert result.path == path
    if not result.valid:
        assert result.errors and not result.jobs
        assert all(isinstance(e.message, str) and e.message for e in result.errors)
    for job in result.jobs:
        for name in [job.name, *(g.name for g in job.groups), *(t.name for g in job.groups for t in g.tasks)]:
            assert "/" not in name and name not in (".", ".."), name  # names become path parts


@st.composite
def mutated(draw):
    i = draw(st.integers(0, len(TEXTS) - 1))
    text = TEXTS[i]
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(NASTY), st.text(max_size=8)))
        end = min(len(text), pos + draw(st.integers(0, 20)))
        text = (text[:pos] + piece + text[pos:] if op == "insert" else
                text[:pos] + text[end:] if op == "delete" else text[:pos] + piece + text[end:])
    return EXAMPLES[i].suffix, text


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_examples_never_crash_the_loader(case):
    suffix, text = case
    path = f"/etc/tasks.d/fuzz{suffix}"
    check(load_text(text, path), path)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=2048), st.sampled_from([".hcl", ".yaml"]))
def test_binary_garbage_is_rejected_with_the_file_named(data, suffix):
    path = f"/etc/tasks.d/garbage{suffix}"
    check(load_bytes(data, path), path)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["../x", "a/../../b", "..", ".", "a/b", "x\x00y"]), st.sampled_from(["job", "group", "task"]))
def test_path_tricks_in_names_are_rejected(name, where):
    names = {"job": "j", "group": "g", "task": "t", where: name}
    text = (f'job "{names["job"]}" {{\n group "{names["group"]}" {{\n  task "{names["task"]}" {{\n'
            f'   driver = "raw_exec"\n   config {{\n    command = "/bin/true"\n   }}\n  }}\n }}\n}}\n')
    r = load_text(text, "/etc/tasks.d/trick.hcl")
    assert not r.valid, (name, where)


def test_artifact_destination_escaping_the_task_dir_is_rejected():
    text = ('job "j" {\n group "g" {\n  task "t" {\n   driver = "raw_exec"\n   config {\n    command = "/bin/true"\n'
            '   }\n   artifact {\n    source = "https://example.com/x"\n    destination = "../../../etc"\n   }\n'
            '  }\n }\n}\n')
    r = load_text(text, "/etc/tasks.d/dest.hcl")
    assert not r.valid and any("destination" in e.message or ".." in e.message for e in r.errors), r.errors


def test_huge_and_deeply_nested_inputs():
    huge = b"# " + b"x" * MAX_MANIFEST_BYTES + b"\n"
    r = load_bytes(huge, "/etc/tasks.d/huge.hcl")
    assert not r.valid
    deep = "job \"j\" {\n" + "meta {\n" * 5000 + "}\n" * 5000 + "}\n"
    check(load_text(deep, "/etc/tasks.d/deep.hcl"), "/etc/tasks.d/deep.hcl")
    deep_yaml = "job:\n" + "".join("  " * i + "- \n" for i in range(1, 3000))
    check(load_text(deep_yaml, "/etc/tasks.d/deep.yaml"), "/etc/tasks.d/deep.yaml")


def test_deep_yaml_flow_nesting_does_not_kill_the_process():
    # In a child: a segfault here would otherwise take the whole test run down with it.
    code = ("from manifests.loader import load_text; r = load_text('[' * 100000, '/etc/tasks.d/b.yaml'); "
            "assert not r.valid and r.errors")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
