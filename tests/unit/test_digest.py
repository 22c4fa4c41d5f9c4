"""manifests.digest gives hashlib's digests and uuid's uuid5, and the daemon's modules load no OpenSSL."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

from isolation import taskdir
from manifests.digest import sha256_hex, uuid5

REPO = Path(__file__).resolve().parents[2]


def test_same_digests_as_hashlib_and_uuid():
    for data in (b"", b"job", "é ünïcode/g/3".encode(), bytes(range(256)) * 100):
        assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
    for name in ("web/g/0", "a/b/12", "é/ü/1", ""):
        assert uuid5(taskdir.ALLOC_NAMESPACE, name) == str(uuid.uuid5(uuid.UUID(taskdir.ALLOC_NAMESPACE), name))
    # Alloc ids name directories that outlive upgrades: this one must never change.
    assert taskdir.alloc_id_for("web", "g", 0) == str(uuid.uuid5(uuid.UUID(taskdir.ALLOC_NAMESPACE), "web/g/0"))
    assert taskdir.alloc_id_for("web", "g", 0) == "d0e256e0-ce3e-5d65-9dfb-a327dd584fc2"


def loaded_by_the_daemon(names: tuple[str, ...], then: str = "") -> list[str]:
    """Which of `names` a fresh interpreter has loaded after importing the daemon's modules (and running `then`)."""
    code = ("import sys, controller.daemon_main, controller.controller, controller.api, controller.watcher, "
            "controller.store, isolation.runtime, isolation.drivers.raw_exec, isolation.drivers.exec, "
            f"isolation.drivers.exec2\n{then}\n"
            f"print(' '.join(sorted(m for m in sys.modules if m in {names!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_daemon_imports_no_openssl_and_no_http_server():
    then = "from isolation import taskdir\ntaskdir.alloc_id_for('j', 'g', 0)"
    assert loaded_by_the_daemon(("_hashlib", "_ssl", "http.server", "http.client", "email"), then) == []


def test_the_daemon_does_not_load_the_launchers_program():
    # The daemon talks to the launcher through isolation.launcher_proto; the launcher's event loop, child setup
    # and their imports would only take the daemon's memory. (isolation.childplan it loads: it compiles the C
    # launcher's plans.)
    assert loaded_by_the_daemon(("isolation.launcher", "isolation.child", "termios")) == []


def test_the_daemon_loads_modules_for_artifacts_and_templates_only_when_a_task_has_them():
    # Each module below is memory every daemon would hold for a feature most tasks do not use (about 1 MB in all).
    assert loaded_by_the_daemon(("isolation.artifacts", "isolation.templates", "uuid", "platform",
                                 "base64")) == []


def test_the_daemon_drops_argparse_once_its_flags_are_read():
    then = ("args = controller.daemon_main.parse_args(['--tasks-dir', '/x', '--log-format', 'json'])\n"
            "assert (args.tasks_dir, args.log_format, args.state_dir) == ('/x', 'json', '/var/lib/tasksd'), args")
    assert loaded_by_the_daemon(("argparse", "gettext"), then) == []
