"""Landlock unveil: mode parsing and rights mapping (pure), and confinement on the real kernel (in a `python -c`
child, since a Landlock domain can never be left)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from isolation import landlock as ll

REPO = str(Path(__file__).resolve().parents[2])


def confined(code: str, unveils: list[tuple[str, str]], defaults: bool = False, nnp: bool = True,
             *args: str) -> subprocess.CompletedProcess:
    """Run `code` after no_new_privs + build_ruleset(unveils, optional=defaults) + restrict_self."""
    prologue = textwrap.dedent("""
        import errno, json, os, sys
        from isolation import landlock as ll, sys as ksys
        cfg = json.loads(sys.argv[1])
        if cfg["nnp"]:
            ksys.set_no_new_privs()
        fd = ll.build_ruleset([tuple(u) for u in cfg["unveils"]],
                              optional=ll.EXEC2_DEFAULT_UNVEILS if cfg["defaults"] else ())
        ll.restrict_self(fd)
        os.close(fd)

        def attempt(fn, *a):
            try:
                fn(*a)
                return "ok"
            except OSError as e:
                return errno.errorcode[e.errno]
    """)
    cfg = json.dumps({"unveils": unveils, "defaults": defaults, "nnp": nnp})
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code), cfg, *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=60)


def result(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- pure -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,expected", [
    ("r:/etc/passwd", ("r", "/etc/passwd")),
    ("rwxc:/srv/data", ("rwxc", "/srv/data")),
    ("x:/", ("x", "/")),
])
def test_parse_unveil(spec, expected):
    assert ll.parse_unveil(spec) == expected


@pytest.mark.parametrize("spec", ["/etc/passwd", "rz:/etc", ":/etc", "r:etc", "r:/a:b"])
def test_parse_unveil_rejects(spec):
    # "r:/a:b" splits at the last ':' (as exec2 does), giving modes "r:/a": a path with ':' cannot be unveiled.
    with pytest.raises(ValueError):
        ll.parse_unveil(spec)


def test_handled_rights_grow_with_the_abi():
    assert ll.handled_access_fs(0) == 0
    assert ll.handled_access_fs(1) == (1 << 13) - 1
    assert ll.handled_access_fs(2) == ll.handled_access_fs(1) | ll.ACCESS_FS_REFER
    assert ll.handled_access_fs(3) == ll.handled_access_fs(2) | ll.ACCESS_FS_TRUNCATE
    assert ll.handled_access_fs(4) == ll.handled_access_fs(3)  # ABI 4 added network rights only
    assert ll.handled_access_fs(5) == ll.handled_access_fs(4) | ll.ACCESS_FS_IOCTL_DEV
    assert ll.handled_access_fs(7) == ll.handled_access_fs(5) == (1 << 16) - 1


def test_modes_map_to_rights_per_abi():
    rd = ll.ACCESS_FS_READ_FILE | ll.ACCESS_FS_READ_DIR
    assert ll.access_for("r", is_dir=True, abi=7) == rd
    assert ll.access_for("r", is_dir=False, abi=7) == ll.ACCESS_FS_READ_FILE
    assert ll.access_for("w", is_dir=False, abi=1) == ll.ACCESS_FS_WRITE_FILE
    assert ll.access_for("w", is_dir=False, abi=3) == ll.ACCESS_FS_WRITE_FILE | ll.ACCESS_FS_TRUNCATE
    assert ll.access_for("x", is_dir=True, abi=7) == ll.ACCESS_FS_EXECUTE
    assert ll.access_for("c", is_dir=False, abi=7) == 0  # nothing to create inside a file
    c1 = ll.access_for("c", is_dir=True, abi=1)
    assert c1 & ll.ACCESS_FS_MAKE_REG and c1 & ll.ACCESS_FS_REMOVE_FILE and not c1 & ll.ACCESS_FS_REFER
    c2 = ll.access_for("c", is_dir=True, abi=2)
    assert c2 == c1 | ll.ACCESS_FS_REFER
    assert not c2 & (ll.ACCESS_FS_MAKE_CHAR | ll.ACCESS_FS_MAKE_BLOCK)


def test_default_unveils_are_exec2s():
    paths = dict((p, m) for m, p in ll.EXEC2_DEFAULT_UNVEILS)
    assert paths["/tmp"] == "rwc" and paths["/usr/bin"] == "rx" and paths["/etc/ld.so.cache"] == "r"
    assert "/etc/passwd" not in paths
    for modes, path in ll.EXEC2_DEFAULT_UNVEILS:
        ll.validate_unveil(modes, path)


# ---- real kernel ------------------------------------------------------------------------------------------------


def test_abi_is_detected():
    abi, reason = ll.probe()
    assert abi >= 1, reason  # platform notes: ABI 7 on these machines
    assert ll.abi_version() == abi


def test_defaults_deny_passwd_but_unveiled_file_reads():
    out = result(confined("""
        print(json.dumps([attempt(lambda: open("/etc/mime.types").read()),
                          attempt(lambda: open("/etc/passwd").read()),
                          attempt(os.listdir, "/etc")]))
    """, [("r", "/etc/mime.types")], defaults=True))
    assert out == ["ok", "EACCES", "EACCES"]


def test_ruleset_survives_execve():
    proc = confined("""
        os.execv("/bin/cat", ["cat", "/etc/passwd"])
    """, [("r", "/etc/mime.types")], defaults=True)
    assert proc.returncode == 1
    assert "Permission denied" in proc.stderr
    assert proc.stdout == ""


def test_writes_follow_the_modes(tmp):
    rwc, rw, ro = tmp / "rwc", tmp / "rw", tmp / "ro"
    for d in (rwc, rw, ro):
        d.mkdir()
        (d / "existing").write_text("old")
    out = result(confined("""
        rwc, rw, ro = sys.argv[2:5]
        def write(path, mode="w"):
            with open(path, mode) as f:
                f.write("new")
        print(json.dumps({
            "rwc_create": attempt(write, f"{rwc}/made"),
            "rwc_remove": attempt(os.unlink, f"{rwc}/made"),
            "rwc_mkdir": attempt(os.mkdir, f"{rwc}/sub"),
            "rw_write_existing": attempt(write, f"{rw}/existing", "a"),
            "rw_truncate": attempt(write, f"{rw}/existing", "w"),
            "rw_create": attempt(write, f"{rw}/made"),
            "rw_remove": attempt(os.unlink, f"{rw}/existing"),
            "ro_read": attempt(lambda: open(f"{ro}/existing").read()),
            "ro_write": attempt(write, f"{ro}/existing", "a"),
            "outside": attempt(write, "/var/tmp/tasksd-landlock-probe"),
        }))
    """, [("rwc", str(rwc)), ("rw", str(rw)), ("r", str(ro))], False, True, str(rwc), str(rw), str(ro)))
    assert out == {
        "rwc_create": "ok", "rwc_remove": "ok", "rwc_mkdir": "ok",
        "rw_write_existing": "ok", "rw_truncate": "ok", "rw_create": "EACCES", "rw_remove": "EACCES",
        "ro_read": "ok", "ro_write": "EACCES", "outside": "EACCES",
    }
    assert (rw / "existing").read_text() == "new"
    assert (ro / "existing").read_text() == "old"


def test_execute_needs_x(tmp):
    proc = confined("""
        print(json.dumps(attempt(os.execv, "/bin/true", ["true"])))
    """, [("r", "/bin"), ("r", "/usr/bin"), ("rx", "/lib"), ("rx", "/usr/lib"), ("rx", "/lib64")])
    assert result(proc) == "EACCES"


def test_explicit_missing_path_fails_but_optional_is_skipped(tmp):
    missing = str(tmp / "nope")
    with pytest.raises(OSError) as exc:
        ll.build_ruleset([("r", missing)])
    assert exc.value.errno == errno.ENOENT and missing in str(exc.value)
    fd = ll.build_ruleset([("r", str(tmp))], optional=[("r", missing)])
    os.close(fd)
    fd = ll.build_ruleset([("r", missing)], skip_missing=True)
    os.close(fd)


@pytest.mark.root
def test_restrict_self_without_no_new_privs_is_refused_for_unprivileged():
    # Root holds CAP_SYS_ADMIN and may restrict itself without no_new_privs; a task that already dropped to
    # its uid may not, and the error says what is missing.
    drop = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import errno, os
        from isolation import landlock as ll
        fd = ll.build_ruleset([("r", "/etc/mime.types")])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        try:
            ll.restrict_self(fd)
        except OSError as e:
            print(errno.errorcode[e.errno], e.strerror)
    """)], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=60)
    assert drop.stdout.startswith("EPERM landlock_restrict_self:")
    assert "no_new_privs" in drop.stdout
