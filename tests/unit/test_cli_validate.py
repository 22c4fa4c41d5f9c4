"""`tasksctl validate`: exit codes, output formats, stdin, directories, the --version/--help skeleton."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import manifests
from controller import cli
from manifests.version import __version__

EXAMPLES = Path(manifests.__file__).parent / "examples"
REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_examples_are_valid(capsys):
    code, out, err = run(capsys, "validate", str(EXAMPLES), str(EXAMPLES / "yaml"))
    assert code == 0, out + err
    assert out.count(": ok (job ") == len(list(EXAMPLES.glob("*.hcl"))) + len(list((EXAMPLES / "yaml").glob("*.yaml")))


def test_broken_copy_of_an_example_is_rejected_with_where_and_line(tmp, capsys):
    text = (EXAMPLES / "sleep-exec.hcl").read_text().replace("memory = 32", "memory = 4")
    (tmp / "broken.hcl").write_text(text)
    code, out, _ = run(capsys, "validate", str(tmp / "broken.hcl"))
    assert code == 1
    line = next(n for n, s in enumerate(text.splitlines(), 1) if "memory = 4" in s)
    assert f'{tmp}/broken.hcl:{line}:9: error: job "sleep-exec" > group "sleep" > task "sleep" > resources.memory: ' \
           f"memory must be at least 10 MB, got 4" in out


def test_broken_yaml_example_is_rejected(tmp, capsys):
    text = (EXAMPLES / "yaml" / "http-exec2.yaml").read_text().replace("r:/etc/mime.types", "read:/etc/mime.types")
    (tmp / "broken.yaml").write_text(text)
    code, out, _ = run(capsys, "validate", str(tmp / "broken.yaml"))
    assert code == 1
    assert "config.unveil[0]: unveil entry 'read:/etc/mime.types'" in out


def test_syntax_error_format(tmp, capsys):
    (tmp / "s.hcl").write_text('job "x" {\n  type = "service"\n')
    code, out, _ = run(capsys, "validate", str(tmp / "s.hcl"))
    assert code == 1
    assert out.startswith(f"{tmp}/s.hcl:3:1: error: expected '}}'")


def test_semantic_error_without_a_line_uses_where(tmp, capsys):
    (tmp / "g.hcl").write_text('job "x" {\n}\n')
    code, out, _ = run(capsys, "validate", str(tmp / "g.hcl"))
    assert code == 1
    assert f'{tmp}/g.hcl:1:1: error: job "x" > group: a job needs at least one group' in out


def test_warnings_go_to_stderr_and_do_not_fail(tmp, capsys):
    text = (EXAMPLES / "sleep-exec.hcl").read_text().replace('type = "service"', 'type = "service"\n  region = "eu"')
    (tmp / "w.hcl").write_text(text)
    code, out, err = run(capsys, "validate", str(tmp / "w.hcl"))
    assert code == 0
    assert 'warning: job "sleep-exec" > region: region is ignored by tasksd' in err
    assert "warning" not in out


def test_one_invalid_among_many_fails(tmp, capsys):
    shutil.copy(EXAMPLES / "sleep-exec.hcl", tmp / "a.hcl")
    (tmp / "b.yaml").write_text("task:\n  - name: t\n    driver: java\n    config: {command: x}\n")
    (tmp / "b.yaml~").write_text("garbage {")
    code, out, _ = run(capsys, "validate", str(tmp))
    assert code == 1
    assert "a.hcl: ok" in out
    assert "driver 'java' is not supported by tasksd" in out
    assert "b.yaml~" not in out


def test_json_report(tmp, capsys):
    shutil.copy(EXAMPLES / "yaml" / "sleep-exec.yaml", tmp / "a.yaml")
    (tmp / "b.hcl").write_text('task "t" {\n driver = "exec"\n config { command = "x" }\n kill_signal = "x"\n'
                               ' vault { policies = ["a"] }\n}\n')
    code, out, err = run(capsys, "validate", "--json", str(tmp / "a.yaml"), str(tmp / "b.hcl"))
    assert code == 1 and err == ""
    report = json.loads(out)
    assert [r["valid"] for r in report] == [True, False]
    assert report[0] == {"path": str(tmp / "a.yaml"), "valid": True, "errors": [], "warnings": []}
    assert report[1]["errors"] == [
        {"message": "unknown signal 'x'", "line": 4, "column": 2, "where": 'task "t" > kill_signal'}]
    assert report[1]["warnings"][0]["where"] == 'task "t" > vault'


def test_stdin(monkeypatch, capsys):
    text = (EXAMPLES / "yaml" / "raw-exec-unlimited.yaml").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    code, out, _ = run(capsys, "validate", "-")
    assert code == 0 and "<stdin>: ok" in out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'task "t" {\n')))
    code, out, _ = run(capsys, "validate", "-")
    assert code == 1 and out.startswith("<stdin>:2:1: error:")


@pytest.mark.parametrize("argv", [["validate"], ["validate", "/nonexistent/x.hcl"], ["validate", "-", "-"],
                                  [], ["frobnicate"], ["validate", "--bogus", "x"]])
def test_usage_errors_exit_2(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    assert code == 2
    assert capsys.readouterr().err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"tasksctl {__version__}"
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0 and "validate" in capsys.readouterr().out


def test_every_subcommand_is_registered_in_the_table():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS)


def test_module_entry_point_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "validate", str(EXAMPLES / "sleep-exec.hcl")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_a_fifo_given_as_a_manifest_is_refused_not_waited_on(tmp, capsys):
    import os

    fifo = tmp / "pipe.hcl"
    os.mkfifo(fifo)
    code, out, err = run(capsys, "validate", str(fifo))
    assert code == 1 and "not a regular file" in out
