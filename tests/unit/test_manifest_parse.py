"""HCL and YAML parsing: positions, syntax errors, duplicates and the python-hcl2 quirks we correct."""
from __future__ import annotations

import pytest

from manifests.hcl import parse_hcl
from manifests.loader import load_text
from manifests.yaml_loader import parse_yaml


def _task(result):
    assert result.valid, result.errors
    return result.jobs[0].groups[0].tasks[0]


@pytest.mark.parametrize(
    "text,line,column,words",
    [
        ('job "x" {\n  type = "service"\n', 3, 1, "expected '}'"),
        ('job "x" {\n  type = \n}\n', 2, 10, "expected a value"),
        ('job "x" {\n  type "a"\n}\n', 3, 1, "expected '{'"),
        ('job "x" {\n  type = "a\n}\n', 2, 11, "unterminated string"),
        ('job "x" {\n  ty@pe = 1\n}\n', 2, 5, "expected '=' or '{'"),
        ('job "x" {\n}\n}\n', 3, 1, "one '}' too many"),
        ('job "x" {\n  a = [1,\n}\n', 3, 1, "or ']'"),
        ('task "t" {\n  data = <<EOF\nabc\n}\n', 2, 10, "unterminated heredoc"),
    ],
)
def test_hcl_syntax_errors_have_line_column_and_words(text, line, column, words):
    result = load_text(text, "bad.hcl")
    assert not result.valid
    (err,) = result.errors
    assert (err.line, err.column) == (line, column)
    assert words in err.message
    assert "RBRACE" not in err.message and "DBLQUOTE" not in err.message
    assert err.format("bad.hcl").startswith(f"bad.hcl:{line}:{column}: error: ")


@pytest.mark.parametrize(
    "text,line,column",
    [
        ("job:\n  name: x\n  group: [1\n", 4, 1),
        ("job:\n  name: x\n   type: batch\n", 3, 8),
        ("job:\n\tname: x\n", 2, 1),
    ],
)
def test_yaml_syntax_errors_have_line_and_column(text, line, column):
    result = load_text(text, "bad.yaml")
    (err,) = result.errors
    assert (err.line, err.column) == (line, column)
    assert err.message.startswith("YAML: ")


def test_duplicate_hcl_attribute_is_an_error_with_both_lines():
    text = 'task "t" {\n  driver = "exec"\n  driver = "raw_exec"\n  config { command = "x" }\n}\n'
    result = load_text(text, "dup.hcl")
    (err,) = result.errors
    assert err.line == 3 and err.column == 3
    assert "duplicate attribute 'driver' (first set on line 2)" == err.message
    assert err.where == 'task "t" > driver'


def test_duplicate_yaml_key_is_an_error():
    text = "task:\n  - name: t\n    driver: exec\n    driver: raw_exec\n    config: {command: x}\n"
    result = load_text(text, "dup.yaml")
    (err,) = result.errors
    assert err.line == 4
    assert "duplicate key 'driver'" in err.message


def test_heredoc_keeps_its_trailing_newline():
    text = 'task "t" {\n driver = "exec"\n config { command = "x" }\n template {\n  destination = "local/a"\n' \
           '  data = <<EOF\nline one\n  line two\nEOF\n }\n}\n'
    assert _task(load_text(text, "h.hcl")).templates[0].data == "line one\n  line two\n"


def test_indented_heredoc_strips_common_indent_and_keeps_newline():
    root, problems = parse_hcl('a = <<-EOT\n    x\n      y\n    EOT\n')
    assert not problems
    assert root.attrs["a"].value == "x\n  y\n"


def test_escaped_interpolation_becomes_literal_dollar_brace():
    text = 'task "t" {\n driver = "exec"\n config {\n  command = "/bin/sh"\n' \
           '  args = ["-c", "echo $${HOME} %%{x} ${NOMAD_TASK_DIR}"]\n }\n}\n'
    task = _task(load_text(text, "e.hcl"))
    assert task.config.args == ("-c", "echo ${HOME} %{x} ${NOMAD_TASK_DIR}")


@pytest.mark.parametrize(
    "ref", ["${NOMAD_TASK_DIR}", "${node.unique.name}", "${attr.kernel.name}", "${meta.rack}", '${env["X"]}',
            "${unknown_thing}"],
)
def test_references_stay_symbolic(ref):
    # Inside ${...} HCL quotes are not escaped: `"${env["X"]}"` is how a jobspec writes it.
    hcl = 'task "t" {\n driver = "raw_exec"\n config {\n  command = "x"\n  args = ["%s"]\n }\n}\n' % ref
    yml = "task:\n  - name: t\n    driver: raw_exec\n    config:\n      command: x\n      args: ['%s']\n" % ref
    assert _task(load_text(hcl, "r.hcl")).config.args == (ref,)
    assert _task(load_text(yml, "r.yaml")).config.args == (ref,)


def test_string_escapes_are_decoded():
    root, problems = parse_hcl('a = "tab\\there \\"q\\" nl\\n"\n')
    assert not problems
    assert root.attrs["a"].value == 'tab\there "q" nl\n'


def test_positions_of_blocks_and_attributes():
    root, _ = parse_hcl('job "x" {\n  group "g" {\n    count = 3\n  }\n}\n')
    group = root.blocks[0].blocks[0]
    assert (group.type, group.labels, group.line, group.column) == ("group", ("g",), 2, 3)
    assert (group.attrs["count"].value, group.attrs["count"].line, group.attrs["count"].column) == (3, 3, 5)


def test_yaml_tree_mirrors_hcl_tree():
    hcl, _ = parse_hcl('job "x" {\n  group "g" {\n    count = 3\n    meta { a = "b" }\n  }\n}\n')
    yml, _ = parse_yaml("job:\n  name: x\n  group:\n    - name: g\n      count: 3\n      meta:\n        a: b\n")

    def shape(b):
        return (b.type, b.labels, {k: a.value for k, a in b.attrs.items()}, [shape(c) for c in b.blocks])

    assert shape(hcl) == shape(yml)


def test_yaml_single_mapping_forms_equal_list_forms():
    one = "job:\n  name: x\n  group:\n    name: g\n    task:\n      name: t\n      driver: raw_exec\n" \
          "      config: {command: x}\n"
    many = "job:\n  - name: x\n    group:\n      - name: g\n        task:\n          - name: t\n" \
           "            driver: raw_exec\n            config: {command: x}\n"
    a, b = load_text(one, "a.yaml"), load_text(many, "b.yaml")
    assert a.valid and b.valid
    assert a.jobs[0].groups == b.jobs[0].groups


def test_yaml_labelled_block_needs_a_name():
    result = load_text("job:\n  group:\n    - count: 1\n", "n.yaml")
    assert any("needs a `name:`" in p.message for p in result.errors)


def test_bare_tasks_become_one_job_each():
    text = 'task "a" {\n driver = "raw_exec"\n config { command = "x" }\n}\n' \
           'task "b" {\n driver = "exec"\n config { command = "y" }\n}\n'
    result = load_text(text, "bare.hcl")
    assert result.valid
    assert [(j.name, j.groups[0].name, j.groups[0].tasks[0].name) for j in result.jobs] == [
        ("a", "a", "a"), ("b", "b", "b")]
    assert result.jobs[0].type == "service"


def test_job_and_bare_tasks_do_not_mix():
    text = 'job "j" { group "g" { task "t" {\n driver = "raw_exec"\n config { command = "x" }\n} } }\n' \
           'task "b" {\n driver = "exec"\n config { command = "y" }\n}\n'
    assert any("not both" in p.message for p in load_text(text, "mix.hcl").errors)


def test_empty_file_is_an_error():
    assert any("empty" in p.message for p in load_text("# nothing\n", "e.hcl").errors)
    assert any("empty" in p.message for p in load_text("", "e.yaml").errors)


def test_unknown_top_level_names():
    result = load_text('jobb "x" {\n}\n', "u.hcl")
    assert any("did you mean 'job'" in p.message for p in result.errors)


def test_nul_and_garbage_never_raise():
    for text in ["\x00", "{{{{", "job", 'job "x" { group', "- - -", ": :", "job: [1, 2]", "task: 3"]:
        for fmt in ("hcl", "yaml"):
            result = load_text(text, "g", fmt)
            assert not result.valid, (text, fmt)
