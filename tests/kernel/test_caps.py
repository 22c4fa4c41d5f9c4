"""Capabilities: Nomad's exec arithmetic (pure) and what a task really holds after execve (real kernel).

The kernel checks run a `python -c` helper that applies caps and identity, then execs grep on its own
/proc/self/status, so the values read are the ones the task would have, after execve."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from isolation.caps import (
    NOMAD_DEFAULT_ALLOW_CAPS,
    CapabilityError,
    cap_names,
    caps_mask,
    compute_caps,
    for_user,
    read_proc_caps,
)
from manifests.capabilities import CAPABILITIES

REPO = str(Path(__file__).resolve().parents[2])
NOBODY = 65534
ALL_CAPS = frozenset(CAPABILITIES.values())

_HELPER = """
import os, sys
from isolation import caps
wanted = frozenset(int(c) for c in sys.argv[1].split(",") if c)
caps.apply_caps_and_identity(wanted, int(sys.argv[2]), int(sys.argv[3]), [int(sys.argv[3])])
os.execv(sys.argv[4], sys.argv[4:])
"""


def run_as(caps: frozenset[int], uid: int, gid: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _HELPER, ",".join(map(str, sorted(caps))), str(uid), str(gid),
                           *argv], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True,
                          text=True, timeout=60)


def task_status(caps: frozenset[int], uid: int, gid: int) -> dict[str, int]:
    proc = run_as(caps, uid, gid, "/bin/grep", "-E", "^(Cap|Uid|Gid)", "/proc/self/status")
    assert proc.returncode == 0, proc.stderr
    out: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0], 16 if key.startswith("Cap") else 10)
    return out


def names(caps: frozenset[int]) -> list[str]:
    return cap_names(caps)


# ---- compute_caps: Nomad's Calculate -----------------------------------------------------------------------


def test_default_allow_list_is_nomads():
    assert [n.removeprefix("CAP_") for n in NOMAD_DEFAULT_ALLOW_CAPS] == sorted(
        "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE SETFCAP SETGID SETPCAP "
        "SETUID SYS_CHROOT".split())
    # The mask Nomad's own executor test expects for a task with the defaults.
    assert caps_mask(compute_caps(NOMAD_DEFAULT_ALLOW_CAPS)) == 0xA80405FB


@pytest.mark.parametrize("allow,add,drop,expected", [
    (NOMAD_DEFAULT_ALLOW_CAPS, None, None, sorted(NOMAD_DEFAULT_ALLOW_CAPS)),
    (["all"], None, None, sorted(NOMAD_DEFAULT_ALLOW_CAPS)),  # "all" widens what may be added, not the base
    (["cap_net_raw", "chown", "SYS_TIME"], None, None, ["CAP_CHOWN"]),
    (["cap_net_raw", "chown", "SYS_TIME"], ["net_raw", "sys_time"], None,
     ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_TIME"]),
    (NOMAD_DEFAULT_ALLOW_CAPS, ["chown", "KILL"], None, sorted(NOMAD_DEFAULT_ALLOW_CAPS)),
    (NOMAD_DEFAULT_ALLOW_CAPS, None, ["all"], []),
    (NOMAD_DEFAULT_ALLOW_CAPS, ["chown", "fowner"], ["ALL"], ["CAP_CHOWN", "CAP_FOWNER"]),
    (NOMAD_DEFAULT_ALLOW_CAPS, ["net_bind_service"], ["all"], ["CAP_NET_BIND_SERVICE"]),
    (NOMAD_DEFAULT_ALLOW_CAPS, None, ["chown", "fowner", "CAP_KILL", "SYS_CHROOT", "mknod", "dac_override"],
     ["CAP_AUDIT_WRITE", "CAP_FSETID", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
      "CAP_SETUID"]),
    (["all"], ["all"], None, sorted(CAPABILITIES)),
])
def test_compute_caps_matches_nomad(allow, add, drop, expected):
    assert names(compute_caps(allow, add, drop)) == expected


def test_adding_outside_the_allow_list_is_refused_with_nomads_message():
    with pytest.raises(CapabilityError) as exc:
        compute_caps(NOMAD_DEFAULT_ALLOW_CAPS, ["chown", "net_raw", "CAP_SYS_ADMIN"])
    assert str(exc.value) == "driver does not allow the following capabilities: net_raw, sys_admin"


def test_unknown_capability_name_is_an_error():
    with pytest.raises(ValueError, match="unknown capability"):
        compute_caps(NOMAD_DEFAULT_ALLOW_CAPS, None, ["cap_flying"])


# ---- on the kernel -------------------------------------------------------------------------------------------


@pytest.mark.root
def test_nobody_with_drop_all_add_net_bind_service_holds_exactly_0x400():
    caps = compute_caps(NOMAD_DEFAULT_ALLOW_CAPS, ["net_bind_service"], ["all"])
    st = task_status(caps, NOBODY, NOBODY)
    assert (st["Uid"], st["Gid"]) == (NOBODY, NOBODY)
    assert {k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0x400)


@pytest.mark.root
def test_nobody_given_nomads_whole_default_set_holds_it_as_nomads_executor_would():
    st = task_status(compute_caps(NOMAD_DEFAULT_ALLOW_CAPS), NOBODY, NOBODY)
    assert {st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {0xA80405FB}


@pytest.mark.root
def test_nobody_with_no_caps_holds_nothing():
    st = task_status(frozenset(), NOBODY, NOBODY)
    assert st["Uid"] == NOBODY
    assert {st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {0}


@pytest.mark.root
def test_root_with_all_caps_is_a_plain_root_process():
    own = read_proc_caps()
    st = task_status(ALL_CAPS, 0, 0)
    # Whatever this machine's root holds (here CAP_SYS_RESOURCE is missing from the VM's bounding set).
    assert (st["CapPrm"], st["CapEff"], st["CapBnd"]) == (own["CapPrm"], own["CapEff"], own["CapBnd"])
    assert (st["CapInh"], st["CapAmb"]) == (0, 0)


@pytest.mark.root
def test_root_with_a_reduced_set_keeps_only_that_set():
    caps = compute_caps(NOMAD_DEFAULT_ALLOW_CAPS, ["chown", "net_bind_service"], ["all"])
    st = task_status(caps, 0, 0)
    mask = caps_mask(caps)
    assert (st["CapPrm"], st["CapEff"], st["CapBnd"]) == (mask, mask, mask)
    assert (st["CapInh"], st["CapAmb"]) == (0, 0)


_BIND_LOW_PORT = """
import errno, socket
for port in range(1000, 1024):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print("bound")
        break
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            print(errno.errorcode[e.errno])
            break
    finally:
        s.close()
"""


@pytest.mark.root
@pytest.mark.parametrize("add,expected", [(["net_bind_service"], "bound"), ([], "EACCES")])
def test_net_bind_service_is_effective_for_the_task(add, expected):
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 1000:
        pytest.skip("ports below 1024 are not privileged on this host")
    caps = compute_caps(NOMAD_DEFAULT_ALLOW_CAPS, add, ["all"])
    proc = run_as(caps, NOBODY, NOBODY, "/usr/bin/python3", "-c", _BIND_LOW_PORT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


# ---- what a non-root task keeps (tasksd's rule, stricter than Nomad's executor) ------------------------------


def test_a_non_root_task_keeps_only_the_harmless_defaults_and_what_it_adds():
    defaults = compute_caps(NOMAD_DEFAULT_ALLOW_CAPS)
    assert names(for_user(defaults, 65534, None)) == ["CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"]
    assert for_user(defaults, 0, None) == defaults  # root keeps Nomad's set
    added = compute_caps(NOMAD_DEFAULT_ALLOW_CAPS, ["chown"], ["net_bind_service"])
    assert names(for_user(added, 65534, ["chown"])) == ["CAP_AUDIT_WRITE", "CAP_CHOWN"]


@pytest.mark.root
def test_nobody_under_the_default_exec_config_holds_only_net_bind_service_and_audit_write():
    st = task_status(for_user(compute_caps(NOMAD_DEFAULT_ALLOW_CAPS), NOBODY, None), NOBODY, NOBODY)
    assert {st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {0x20000400}
