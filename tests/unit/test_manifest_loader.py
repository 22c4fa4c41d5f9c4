"""loader: the file filter, directory scan, format detection, hostile input."""
from __future__ import annotations

import os

import pytest

from manifests.loader import MAX_MANIFEST_BYTES, detect_format, is_manifest_name, load_file, load_text, scan_dir

GOOD_HCL = 'task "t" {\n driver = "raw_exec"\n config { command = "/bin/true" }\n}\n'
GOOD_YAML = "task:\n  - name: t\n    driver: raw_exec\n    config:\n      command: /bin/true\n"


@pytest.mark.parametrize("name", ["a.hcl", "a.nomad", "a.yaml", "a.yml", "web-1.job.hcl"])
def test_manifest_names(name):
    assert is_manifest_name(name)
    assert is_manifest_name(f"/etc/tasks.d/{name}")


@pytest.mark.parametrize(
    "name", [".a.hcl", "a.hcl~", "a.hcl.swp", ".a.hcl.swx", "4913", "a.hcl.bak", "a.hcl.dpkg-dist", "a.yaml.rpmnew",
             "a.yml.rpmsave", "a.json", "a.txt", "README", "a.hcl.dpkg-old", ".swp"],
)
def test_ignored_names(name):
    assert not is_manifest_name(name)


def test_scan_dir_is_sorted_follows_symlinks_and_skips_junk(tmp):
    (tmp / "b.yaml").write_text(GOOD_YAML)
    (tmp / "a.hcl").write_text(GOOD_HCL)
    (tmp / ".hidden.hcl").write_text(GOOD_HCL)
    (tmp / "a.hcl~").write_text(GOOD_HCL)
    (tmp / "dir.hcl").mkdir()
    (tmp / "..data").mkdir()
    (tmp / "..data" / "c.nomad").write_text(GOOD_HCL)
    os.symlink("..data/c.nomad", tmp / "c.nomad")
    os.symlink("missing.hcl", tmp / "dangling.hcl")
    assert [p.name for p in scan_dir(tmp)] == ["a.hcl", "b.yaml", "c.nomad"]
    assert load_file(tmp / "c.nomad").valid


def test_format_is_detected_from_name_then_content():
    assert detect_format("x.yml", GOOD_HCL) == "yaml"
    assert detect_format("x.nomad", GOOD_YAML) == "hcl"
    assert detect_format("<stdin>", GOOD_YAML) == "yaml"
    assert detect_format("<stdin>", "# c\n" + GOOD_HCL) == "hcl"
    assert detect_format("<stdin>", "---\n" + GOOD_YAML) == "yaml"


def test_load_result_fields(tmp):
    path = tmp / "t.hcl"
    path.write_text(GOOD_HCL)
    result = load_file(path)
    assert result.valid and result.path == str(path) and len(result.content_hash) == 64
    assert result.jobs[0].source == str(path)
    assert load_file(path).content_hash == result.content_hash
    path.write_text(GOOD_HCL.replace("true", "false"))
    assert load_file(path).content_hash != result.content_hash


def test_invalid_file_yields_no_jobs_but_keeps_names():
    result = load_text(GOOD_HCL.replace("raw_exec", "docker"), "d.hcl")
    assert result.jobs == () and result.names == ("t",)


def test_oversized_file_is_refused_without_parsing(tmp):
    path = tmp / "big.hcl"
    path.write_bytes(b"#" * (MAX_MANIFEST_BYTES + 1))
    (err,) = load_file(path).errors
    assert "larger than 1024 KiB" in err.message


def test_unreadable_and_binary_files_are_errors_not_exceptions(tmp):
    assert "cannot read" in load_file(tmp / "nope.hcl").errors[0].message
    (tmp / "bin.hcl").write_bytes(b"\xff\xfe\x00job")
    assert "not UTF-8" in load_file(tmp / "bin.hcl").errors[0].message


def test_deep_nesting_does_not_crash():
    deep = "a = " + "[" * 5000 + "]" * 5000 + "\n"
    assert not load_text(deep, "deep.hcl").valid
    deep_yaml = "task: " + "[" * 5000 + "]" * 5000 + "\n"
    assert not load_text(deep_yaml, "deep.yaml").valid


def test_crlf_files_parse():
    assert load_text(GOOD_HCL.replace("\n", "\r\n"), "w.hcl").valid
    assert load_text(GOOD_YAML.replace("\n", "\r\n"), "w.yaml").valid
