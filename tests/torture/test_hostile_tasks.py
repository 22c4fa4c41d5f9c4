"""Hostile tasks: each is contained by the kernel, reported by tasksd, and harms neither tasksd nor a neighbour.

Every test runs a quiet neighbour task next to the hostile one and checks at the end that the neighbour kept its pid
and tasksd still answers. Probes print key=value lines to their stdout and then `done`; the test reads the task's
log file (the kernel's answer, not tasksd's report, is what is checked).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import psutil
import pytest

from isolation import cgroups, taskdir
from tests.e2e.conftest import raw_job
from tests.helpers import wait_for
from tests.torture.conftest import launcher_pids, task_cgroups

pytestmark = [pytest.mark.root, pytest.mark.slow]

NEIGHBOUR = "neighbour/g/0/t"


def sh_job(name: str, driver: str, script: str, config_extra: str = "", task_extra: str = "",
           kill: str = 'kill_timeout = "2s"') -> str:
    return (f'job "{name}" {{\n  group "g" {{\n    restart {{\n      attempts = 0\n      mode = "fail"\n    }}\n'
            f'    task "t" {{\n      driver = "{driver}"\n      {kill}\n'
            f'      config {{\n        command = "/bin/sh"\n        args = ["-c", {json.dumps(script)}]\n'
            f'        {config_extra}\n      }}\n      {task_extra}\n    }}\n  }}\n}}\n')


def logs_dir(daemon, job: str) -> Path:
    return daemon.state_dir / "alloc" / taskdir.alloc_id_for(job, "g", 0) / "alloc" / "logs"


def probe_output(daemon, job: str, stream: str = "stdout", timeout: float = 60) -> dict[str, str]:
    path = logs_dir(daemon, job) / f"t.{stream}"

    def done():
        t = daemon.task(f"{job}/g/0/t")
        assert t is None or t["state"] not in ("failed", "dead"), (t, _read(path), _read(path.with_suffix(
            ".stderr")))
        return "done" in _read(path).splitlines()

    wait_for(done, timeout=timeout, what=f"{job} probe output")
    return dict(line.split("=", 1) for line in _read(path).splitlines() if "=" in line)


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@pytest.fixture
def neighbour(daemon):
    daemon.start()
    daemon.write("neighbour.hcl", raw_job("neighbour"))
    pid = daemon.wait_state(NEIGHBOUR, "running")["pid"]
    yield pid
    # The hostile task harmed neither tasksd nor its neighbour.
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
    assert daemon.client.get("/v1/health")["ready"]
    t = daemon.task(NEIGHBOUR)
    assert (t["state"], t["pid"], t["restarts"]) == ("running", pid, 0)


def remove_and_wait_gone(daemon, job: str) -> None:
    (daemon.tasks_dir / f"{job}.hcl").unlink()
    wait_for(lambda: f"{job}/g/0/t" not in daemon.tasks(), timeout=60, what=f"{job} stopped and forgotten")
    cg = f"{taskdir.alloc_id_for(job, 'g', 0)}.t"
    # Gone with the task, or at the latest with the alloc's GC (gc_grace 1 s here): after a fork bomb the kernel
    # can refuse the rmdir (EBUSY) for longer than destroy's 5 s on a loaded machine, and GC removes it then (a
    # fresh-clone CI run saw the empty cgroup still there the moment the task was forgotten).
    wait_for(lambda: cg not in task_cgroups(daemon.cgroup_parent), timeout=60,
             what=f"{job}'s cgroup removed (by destroy, or by the alloc's GC)")


def _pids_file(cgroup_parent: str, name: str, file: str) -> str | None:
    cg = cgroups.CgroupManager(cgroups.detect(), cgroup_parent).open(name)
    for path in (cg.paths.values() if cg is not None else ()):
        if (Path(path) / file).exists():
            return (Path(path) / file).read_text()
    return None


def _pids_limit_hits(cgroup_parent: str, name: str) -> int:
    """How many forks the kernel refused because of pids.max (pids.events `max`), in whichever hierarchy holds
    the pids controller. A bomb grows and collapses faster than any poll of its process list, so the counter of
    refused forks, not a head count, proves the limit was reached and held."""
    cg = cgroups.CgroupManager(cgroups.detect(), cgroup_parent).open(name)
    if cg is None:
        return 0
    for path in cg.paths.values():
        events = Path(path) / "pids.events"
        if events.exists():
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
    return 0


@pytest.mark.parametrize("driver", ["exec", "exec2", "raw_exec"])
def test_fork_bomb_is_held_by_the_pids_limit(daemon, neighbour, driver):
    daemon.write("bomb.hcl", sh_job("bomb", driver, "b() { b | b & }; b; sleep 1000", "pids_limit = 40"))
    cg = f"{taskdir.alloc_id_for('bomb', 'g', 0)}.t"
    wait_for(lambda: _pids_limit_hits(daemon.cgroup_parent, cg) > 0, timeout=60, what="the bomb hit pids.max")
    # The pids controller's own count (atomic), not a listing of cgroup.procs: while a bomb churns, reading the
    # procs files of several hierarchies one after the other sees dead and newborn processes together.
    assert int(_pids_file(daemon.cgroup_parent, cg, "pids.current")) <= 40
    # /v1/stats always exists: an error there fails the test instead of skipping the check.
    stats = {s["id"]: s for s in daemon.client.get("/v1/stats")}
    if "bomb/g/0/t" in stats and stats["bomb/g/0/t"].get("pids") is not None:
        assert stats["bomb/g/0/t"]["pids"] <= 40
    remove_and_wait_gone(daemon, "bomb")  # cgroup.kill takes the whole tree at once


@pytest.mark.parametrize("driver", ["exec", "raw_exec"])
def test_memory_hog_is_oom_killed_and_reported(daemon, neighbour, driver):
    hog = "python3 -c 'b = []\nwhile True: b.append(bytearray(16 << 20))'"
    daemon.write("hog.hcl", sh_job("hog", driver, f"exec {hog}", task_extra="resources {\n memory = 32\n }"))
    t = wait_for(lambda: (t := daemon.task("hog/g/0/t")) and t["state"] == "failed" and t, timeout=60,
                 what="hog failed")
    assert t["oom_killed"] is True and t["signal"] == 9, t
    events = daemon.client.get("/v1/events?task=hog/g/0/t")
    assert any("OOM" in e["message"] for e in events if e["type"] == "exited"), events


def test_sigterm_ignorer_is_killed_after_kill_timeout(daemon, neighbour):
    script = "trap '' TERM; echo ready; while :; do sleep 1; done"
    daemon.write("stubborn.hcl", sh_job("stubborn", "raw_exec", script, kill='kill_signal = "SIGTERM"\n'
                                        '      kill_timeout = "1s"'))
    pid = daemon.wait_state("stubborn/g/0/t", "running")["pid"]
    wait_for(lambda: "ready" in _read(logs_dir(daemon, "stubborn") / "t.stdout"), timeout=30, what="trap set")
    remove_and_wait_gone(daemon, "stubborn")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    events = daemon.client.get("/v1/events")
    killed = [e for e in events if e["task_id"] == "stubborn/g/0/t" and e["type"] == "killed"]
    assert killed and "signal 9" in killed[-1]["message"], killed  # SIGTERM was ignored: SIGKILL ended it


@pytest.mark.parametrize("driver", ["raw_exec", "exec"])
def test_double_forking_daemoniser_dies_with_its_task(daemon, neighbour, driver):
    mark = str(900000 + uuid.uuid4().int % 99999)
    script = f"(setsid sh -c 'sleep {mark} &' &); echo ready; exec sleep 1000"
    daemon.write("daemoniser.hcl", sh_job("daemoniser", driver, script))
    daemon.wait_state("daemoniser/g/0/t", "running")

    def escaped() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-1:] == [mark]]

    wait_for(escaped, timeout=30, what="the daemonised grandchild")
    remove_and_wait_gone(daemon, "daemoniser")
    wait_for(lambda: not escaped(), timeout=10, what="the daemonised grandchild gone")


def rss(pids: list[int]) -> int:
    return sum(psutil.Process(p).memory_info().rss for p in pids)


def test_stdout_flood_rotates_and_memory_stays_flat(daemon, neighbour):
    watched = [daemon.proc.pid, *launcher_pids(daemon)]
    assert len(watched) == 2
    # 200 MiB through max_file_size 1 MiB x 2 files; the marker on stderr says the flood is over.
    script = "head -c 209715200 /dev/zero | tr '\\0' 'x' | fold -w 120; echo flooded >&2; exec sleep 1000"
    logs = 'logs {\n        max_files = 2\n        max_file_size = 1\n      }'
    daemon.write("flood.hcl", sh_job("flood", "raw_exec", "true", task_extra=logs))  # warm up the same paths
    daemon.wait_state("flood/g/0/t", "failed")  # exits 0 as a service with attempts 0: it is done
    before = rss(watched)
    daemon.write("flood.hcl", sh_job("flood", "raw_exec", script, task_extra=logs))
    wait_for(lambda: "flooded" in _read(logs_dir(daemon, "flood") / "t.stderr"), timeout=300, what="flood end")
    after = rss(watched)
    files = sorted(p.name for p in logs_dir(daemon, "flood").iterdir() if p.name.startswith("t.stdout"))
    assert files == ["t.stdout", "t.stdout.1"], files
    for f in files:
        assert (logs_dir(daemon, "flood") / f).stat().st_size <= (1 << 20) + 121
    print(f"daemon+launcher RSS before {before >> 10} KiB, after 200 MiB of stdout {after >> 10} KiB")
    assert after - before < 32 << 20, (before, after)  # flat: nowhere near the 200 MiB that went through


def test_a_task_writing_as_fast_as_it_can_does_not_stall_the_launcher(daemon, neighbour):
    # cat refills its pipe faster than the launcher empties it into a file: reading until the pipe is empty
    # never returned to the launcher's loop (no spawns, no other task's output, no reaping).
    logs = 'logs {\n        max_files = 2\n        max_file_size = 1\n      }'
    daemon.write("gush.hcl", sh_job("gush", "raw_exec", "exec cat /dev/zero", task_extra=logs))
    daemon.wait_state("gush/g/0/t", "running")
    wait_for(lambda: (logs_dir(daemon, "gush") / "t.stdout.1").exists(), timeout=60, what="the flood rotating")
    daemon.write("after.hcl", sh_job("after", "raw_exec", "echo alive; exec sleep 1000"))
    wait_for(lambda: "alive" in _read(logs_dir(daemon, "after") / "t.stdout"), timeout=30,
             what="another task started and its output written during the flood")
    assert daemon.task("gush/g/0/t")["state"] == "running"


def test_task_closing_its_stdout_keeps_running_and_logging(daemon, neighbour):
    script = "exec 1>&-; echo still-here >&2; exec sleep 1000"
    daemon.write("closer.hcl", sh_job("closer", "raw_exec", script))
    pid = daemon.wait_state("closer/g/0/t", "running")["pid"]
    wait_for(lambda: "still-here" in _read(logs_dir(daemon, "closer") / "t.stderr"), timeout=30, what="stderr")
    assert daemon.task("closer/g/0/t")["pid"] == pid
    daemon.write("after.hcl", raw_job("after"))  # the launcher still spawns and pipes
    daemon.wait_state("after/g/0/t", "running")


ESCAPE = r"""
cd /; for i in $(seq 64); do cd .. 2>/dev/null; done
if [ -e "{marker}" ]; then echo dotdot=host; else echo dotdot=jail; fi
if [ -e "/proc/1/root{marker}" ]; then echo proc1root=host; else echo proc1root=jail; fi
echo procs=$(ls /proc | grep -c '^[0-9]')
if cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ' | grep -q 'daemon[_]main'; then echo sees_tasksd=yes; else echo sees_tasksd=no; fi
if echo x > "{tasks_dir}/evil.hcl" 2>/dev/null; then echo write_tasks=yes; else echo write_tasks=no; fi
if echo x > "{state_dir}/evil" 2>/dev/null; then echo write_state=yes; else echo write_state=no; fi
if python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "{socket}" 2>/dev/null
then echo socket=connected; else echo socket=denied; fi
if echo -1000 > /proc/self/oom_score_adj 2>/dev/null; then echo oom_lowered=yes; else echo oom_lowered=no; fi
for f in $(find /sys/fs/cgroup -maxdepth 2 -name cgroup.procs 2>/dev/null); do echo $$ > $f 2>/dev/null && echo moved=$f; done
if cat /etc/shadow >/dev/null 2>&1; then echo shadow=read; else echo shadow=denied; fi
if mknod "$NOMAD_TASK_DIR/blk" b 8 0 2>/dev/null; then echo mknod=yes; else echo mknod=no; fi
cp /bin/true "$NOMAD_TASK_DIR/suid" 2>/dev/null
if chown 0:0 "$NOMAD_TASK_DIR/suid" 2>/dev/null && chmod 4755 "$NOMAD_TASK_DIR/suid" 2>/dev/null
then echo suid_root=yes; else echo suid_root=no; fi
echo uid=$(id -u)
echo done
exec sleep 1000
"""


@pytest.mark.parametrize("driver", ["exec", "exec2"])
def test_escape_snoop_and_tamper_attempts_fail(daemon, neighbour, driver):
    marker = daemon.root / "host-only-marker"
    marker.write_text("x")
    script = ESCAPE.format(marker=marker, tasks_dir=daemon.tasks_dir, state_dir=daemon.state_dir,
                           socket=daemon.socket)
    daemon.write("hostile.hcl", sh_job("hostile", driver, script))
    seen = probe_output(daemon, "hostile")
    pid = daemon.task("hostile/g/0/t")["pid"]
    if driver == "exec":  # chrooted in a private pid namespace: the host tree and its processes are not there
        assert seen["dotdot"] == "jail" and seen["proc1root"] == "jail", seen
        assert int(seen["procs"]) <= 6, seen
    assert seen["sees_tasksd"] == "no", seen
    assert seen["write_tasks"] == "no" and not (daemon.tasks_dir / "evil.hcl").exists(), seen
    assert seen["write_state"] == "no" and not (daemon.state_dir / "evil").exists(), seen
    assert seen["socket"] == "denied", seen
    assert seen["oom_lowered"] == "no", seen
    assert "moved" not in seen, seen
    assert seen["uid"] != "0"
    # With Nomad's default capabilities as ambient ones (what Nomad's exec gives "nobody"), each of these worked.
    assert (seen["shadow"], seen["mknod"], seen["suid_root"]) == ("denied", "no", "no"), seen
    # The kernel's view from outside: still in its own cgroup, score not lowered.
    cg = f"{taskdir.alloc_id_for('hostile', 'g', 0)}.t"
    assert pid in task_cgroups(daemon.cgroup_parent)[cg]
    assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) >= 0


def test_escape_probe_control_raw_exec_sees_the_host(daemon, neighbour):
    """The control for the probe above: unconfined, the same script does see the host (so the probe can fail)."""
    marker = daemon.root / "host-only-marker"
    marker.write_text("x")
    script = ESCAPE.format(marker=marker, tasks_dir=daemon.root / "scratch", state_dir=daemon.root,
                           socket=daemon.socket)
    (daemon.root / "scratch").mkdir()
    daemon.write("control.hcl", sh_job("control", "raw_exec", script))
    seen = probe_output(daemon, "control")
    assert seen["dotdot"] == "host" and seen["sees_tasksd"] == "yes" and seen["socket"] == "connected", seen
    assert (seen["shadow"], seen["mknod"], seen["suid_root"]) == ("read", "yes", "yes"), seen
    assert seen["write_tasks"] == "yes", seen


@pytest.mark.parametrize("driver", ["exec", "exec2"])
def test_setuid_binary_gains_nothing(daemon, neighbour, driver):
    where = "/alloc/data" if driver == "exec" else "$NOMAD_ALLOC_DIR/data"
    script = (f'while [ ! -e "{where}/ready" ]; do sleep 0.05; done; '
              f'echo euid=$("{where}/sid" -u 2>&1); echo done; exec sleep 1000')
    daemon.write("suid.hcl", sh_job("suid", driver, script))
    daemon.wait_state("suid/g/0/t", "running")
    data = logs_dir(daemon, "suid").parent / "data"
    shutil.copy("/usr/bin/id", data / "sid")
    os.chown(data / "sid", 0, 0)
    os.chmod(data / "sid", 0o4755)
    assert os.stat(data / "sid").st_mode & stat.S_ISUID
    (data / "ready").write_text("")
    seen = probe_output(daemon, "suid")
    assert seen["euid"] != "0", seen  # no_new_privs and/or nosuid: the setuid bit is ignored (or exec refused)
