"""The exec driver on the real kernel: a probe run as the task reports what it sees."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from isolation.drivers.base import StartError
from isolation.launchspec import LaunchSpec
from manifests.model import ExecConfig, Task
from tests.helpers import wait_for
from tests.kernel.conftest import exec_line, make_ctx, spawn_line

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _both_children(child_impl):
    """Every test here runs with the C child and with the Python fallback (see conftest.child_impl)."""

PROBE = r"""
echo "pid=$$"
echo "uid=$(id -u)"
grep CapEff /proc/self/status | tr -d '\t' | sed 's/CapEff:/capeff=/'
echo "procs=$(ls /proc | grep -c '^[0-9]')"
if touch /usr/tasksd-probe 2>/dev/null; then echo usr=rw; else echo usr=ro; fi
if echo hi > /alloc/data/probe; then echo alloc=rw; fi
if [ -s /proc/kcore ]; then echo kcore=visible; else echo kcore=masked; fi
echo "firmware=$(ls /sys/firmware | wc -l)"
echo "sysclass=$(ls /sys/class | wc -l)"
if echo 1 > /proc/sys/kernel/sysrq 2>/dev/null; then echo procsys=rw; else echo procsys=ro; fi
echo "dev=$(ls /dev | tr '\n' ' ')"
echo "host=$NOMAD_TASK_DIR:$NOMAD_ALLOC_DIR:$NOMAD_SECRETS_DIR"
"""


def exec_task(command: str, *args: str, name: str = "t", user: str | None = None, **cfg) -> Task:
    return Task(name=name, driver="exec", config=ExecConfig(command=command, args=tuple(args), **cfg), user=user)


def run_probe(d, cfg, task, **ctx_kw) -> dict[str, str]:
    h = d.start(make_ctx(cfg, task, **ctx_kw))
    res = d.wait(h, 30)
    out = (Path(h.alloc_dir) / "alloc" / "logs" / f"{task.name}.stdout").read_text()
    err = (Path(h.alloc_dir) / "alloc" / "logs" / f"{task.name}.stderr").read_text()
    d.destroy(h)
    assert res is not None and res.exit_code == 0, (res, out, err)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line), h


def test_exec_probe_private_pid_mode(drivers, agent_config):
    seen, h = run_probe(drivers["exec"], agent_config, exec_task("/bin/sh", "-c", PROBE))
    assert seen["pid"] == "1"
    assert seen["uid"] == str(65534)  # nobody
    assert int(seen["procs"]) <= 5  # sh, its subshell, ls, grep: no host process is visible
    assert seen["usr"] == "ro"
    assert seen["alloc"] == "rw"
    assert (Path(h.alloc_dir) / "alloc" / "data" / "probe").read_text() == "hi\n"  # visible on the host
    assert seen["kcore"] == "masked"
    assert seen["firmware"] == "0" and int(seen["sysclass"]) > 0  # /sys is there, /sys/firmware masked
    assert seen["procsys"] == "ro"
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue"):
        assert dev in seen["dev"].split()
    assert seen["host"] == "/local:/alloc:/secrets"
    assert not Path("/usr/tasksd-probe").exists()


def test_exec_host_pid_mode_sees_host_pids(drivers, agent_config):
    seen, _ = run_probe(drivers["exec"], agent_config, exec_task("/bin/sh", "-c", PROBE, pid_mode="host"))
    assert seen["pid"] != "1"
    assert int(seen["procs"]) > 10


def test_exec_capabilities_drop_all_add_one(drivers, agent_config):
    task = exec_task("/bin/sh", "-c", PROBE, cap_drop=("all",), cap_add=("CAP_NET_BIND_SERVICE",))
    seen, _ = run_probe(drivers["exec"], agent_config, task)
    assert seen["capeff"] == "0000000000000400"


def test_exec_cap_add_outside_allow_list_is_refused(drivers, agent_config):
    with pytest.raises(StartError, match="driver does not allow the following capabilities"):
        drivers["exec"].start(make_ctx(agent_config, exec_task("/bin/true", cap_add=("SYS_ADMIN",))))


def test_exec_root_user_is_refused(drivers, agent_config):
    with pytest.raises(StartError, match="denylist"):
        drivers["exec"].start(make_ctx(agent_config, exec_task("/bin/true", user="root")))


def test_setuid_binary_gains_nothing(drivers, agent_config, runtime):
    ctx = make_ctx(agent_config, exec_task("/local/idcopy", "-u"))
    local = runtime.alloc_root / ctx.alloc_id / "t" / "local"
    local.mkdir(parents=True)
    shutil.copy("/usr/bin/id", local / "idcopy")
    os.chown(local / "idcopy", 0, 0)
    os.chmod(local / "idcopy", 0o4755)  # setuid root
    d = drivers["exec"]
    h = d.start(ctx)
    assert d.wait(h, 30).exit_code == 0
    assert (Path(h.alloc_dir) / "alloc" / "logs" / "t.stdout").read_text().strip() == "65534"
    d.destroy(h)


def test_background_children_die_with_main_process_in_private_pid_mode(drivers, agent_config):
    task = exec_task("/bin/sh", "-c", "sleep 1000 & echo $! > /alloc/data/bg; sleep 1000")
    d = drivers["exec"]
    h = d.start(make_ctx(agent_config, task))
    pidfile = Path(h.alloc_dir) / "alloc" / "data" / "bg"
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="background pid")
    cg = d.runtime.cgroups.open(h.cgroup)
    assert len(cg.pids()) == 3
    os.kill(h.pid, 9)  # only the main process
    d.wait(h, 30)
    wait_for(lambda: not cg.pids(), what="namespace torn down")
    d.destroy(h)


def test_exec_command_lookup_and_missing_file(drivers, agent_config):
    seen, _ = run_probe(drivers["exec"], agent_config, exec_task("sh", "-c", "echo found=yes"))
    assert seen["found"] == "yes"
    with pytest.raises(StartError, match="file /nope/x not found under path"):
        drivers["exec"].start(make_ctx(agent_config, exec_task("/nope/x")))


def test_exec_network_none_has_only_lo(drivers, agent_config):
    task = exec_task("/bin/sh", "-c", "echo ifs=$(ls /sys/class/net | tr '\\n' ' ')")
    seen, _ = run_probe(drivers["exec"], agent_config, task, network="none")
    assert seen["ifs"].split() == ["lo"]


def test_exec_into_running_task_sees_the_tasks_view(drivers, agent_config, tmp):
    d = drivers["exec"]
    h = d.start(make_ctx(agent_config, exec_task("/bin/sleep", "1000")))
    out = tmp / "exec.out"
    fd_out = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    fd_in = os.open("/dev/null", os.O_RDONLY)
    try:
        key = d.exec(h, ["/bin/sh", "-c", "id -u; ls /proc | grep -c '^[0-9]'; test -e /local && echo chroot"],
                     [fd_in, fd_out, fd_out])
    finally:
        os.close(fd_out)
        os.close(fd_in)
    res = d.runtime.wait_exec(key, 30)
    assert res is not None and res.exit_code == 0
    uid, nprocs, chroot = out.read_text().split()
    assert uid == "65534" and int(nprocs) <= 5 and chroot == "chroot"
    d.stop(h, "SIGTERM", 5)
    d.destroy(h)


def test_stop_of_pid1_without_handler_does_not_wait_out_kill_timeout(drivers, agent_config):
    # /bin/sleep as PID 1 of its namespace has no SIGTERM handler, so the kernel would drop SIGTERM and stop
    # would wait out kill_timeout; tasksd recognises that case and kills at once. A shell that traps TERM is
    # signalled normally.
    from isolation.drivers.common import _dropped_by_pid1

    d = drivers["exec"]
    plain = d.start(make_ctx(agent_config, exec_task("/bin/sleep", "1000", name="plain")))
    trapping = d.start(make_ctx(agent_config, exec_task(
        "/bin/sh", "-c", "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done", name="trap")))
    wait_for(lambda: "ready" in (Path(trapping.alloc_dir) / "alloc/logs/trap.stdout").read_text(), what="trap")
    assert _dropped_by_pid1(plain, signal.SIGTERM)
    assert not _dropped_by_pid1(trapping, signal.SIGTERM)
    assert d.stop(plain, "SIGTERM", 25).signal == signal.SIGKILL
    res = d.stop(trapping, "SIGTERM", 25)
    assert res.exit_code == 0 and res.signal is None  # its own handler ran
    d.destroy(plain)
    d.destroy(trapping)


def test_a_device_node_the_task_makes_cannot_be_opened(drivers, agent_config):
    # cap_add gives this nobody task CAP_MKNOD (and DAC_OVERRIDE, to write into /dev): it can make nodes, but
    # every place it can write is mounted nodev, so a node for a disk would be useless. 1:3 is /dev/null.
    script = ('for d in /local /tmp /alloc/data /dev; do mknod $d/n c 1 3 || echo "$d=nomknod"; '
              'if echo x > $d/n 2>/dev/null; then echo "$d=opened"; else echo "$d=denied"; fi; done; '
              'echo x > /dev/null && echo "null=ok"')
    task = exec_task("/bin/sh", "-c", script, cap_add=("mknod", "dac_override"))
    seen, _ = run_probe(drivers["exec"], agent_config, task)
    assert seen == {"/local": "denied", "/tmp": "denied", "/alloc/data": "denied", "/dev": "denied",
                    "null": "ok"}, seen


def test_an_exec_into_a_process_that_is_gone_fails_without_leaking_launcher_fds(runtime):
    # The race `tasksctl exec` can lose: the task's main process exits as the request arrives.
    gone = subprocess.Popen(["/bin/true"])
    gone.wait()
    spec = LaunchSpec(key="j.t.exec.1", path="/bin/true", argv=("true",), env=(), cwd="/")
    fds_dir = f"/proc/{runtime.client.launcher_pid}/fd"
    before = len(os.listdir(fds_dir))
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        for _ in range(5):
            with pytest.raises(Exception, match="No such file|not found|exited"):
                runtime.exec_in(spec, gone.pid, None, [devnull] * 3)
    finally:
        os.close(devnull)
    wait_for(lambda: len(os.listdir(fds_dir)) <= before, timeout=10,
             what=f"the launcher's fds back to {before} (now {len(os.listdir(fds_dir))})")


def test_an_exec_whose_target_pid_now_names_another_process_is_refused(runtime):
    # A pid that exists, but with another start time than the task's: what a reused pid looks like.
    spec = LaunchSpec(key="j.t.exec.2", path="/bin/true", argv=("true",), env=(), cwd="/")
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(Exception, match="has exited"):
            runtime.exec_in(spec, os.getpid(), 1, [devnull] * 3)
    finally:
        os.close(devnull)


def alloc_data_after_a_first_run(d, agent_config) -> Path:
    """alloc/data of the tests' alloc dir, made by a first run of a task there, so that links can be planted."""
    first = d.start(make_ctx(agent_config, exec_task("/bin/true")))
    assert d.wait(first, 30).exit_code == 0
    d.destroy(first)
    return Path(first.alloc_dir) / "alloc" / "data"


def test_exec_mounts_from_the_task_config(drivers, agent_config, tmp):
    """`mounts`: read-only and writable binds of directories and of a file, with mount points made inside
    directories the task writes (/alloc/data, /local) and through a symlink that stays inside the task root."""
    from manifests.model import Mount

    ro, rw = tmp / "ro", tmp / "rw"
    ro.mkdir()
    (ro / "hello").write_text("from the host\n")
    rw.mkdir(mode=0o777)
    os.chmod(rw, 0o777)  # nobody writes here
    conf = tmp / "app.conf"
    conf.write_text("key=value\n")
    d = drivers["exec"]
    # A symlink planted in alloc/data (shared by the group's tasks): ../../local from there leads to the task's
    # own /local, inside its root.
    (alloc_data_after_a_first_run(d, agent_config) / "to-local").symlink_to("../../local")
    script = ('cat /data/hello; if touch /data/x 2>/dev/null; then echo ro=writable; else echo ro=readonly; fi; '
              'echo written > /alloc/data/out/w && echo rw=ok; cat /local/conf/app.conf; '
              'ls /local/via-link >/dev/null && echo via=ok')
    task = exec_task("/bin/sh", "-c", script, mounts=(
        Mount(source=str(ro), target="/data", readonly=True),
        Mount(source=str(rw), target="/alloc/data/out", readonly=False),
        Mount(source=str(conf), target="/local/conf/app.conf", readonly=True),
        Mount(source=str(ro), target="/alloc/data/to-local/via-link", readonly=True)))
    seen, h = run_probe(d, agent_config, task)
    assert seen == {"ro": "readonly", "rw": "ok", "key": "value", "via": "ok"}, seen
    assert (rw / "w").read_text() == "written\n"
    assert (rw / "w").stat().st_uid == 65534
    assert (Path(h.task_dir) / "local" / "via-link").is_dir()  # the mount point landed inside the task root
    assert not (ro / "x").exists()


def test_exec_mount_targets_through_symlinks_out_of_the_root_are_refused(drivers, agent_config, tmp):
    """A task (or a sibling in its group) can plant symlinks in /alloc/data. A mount target through one that
    leads out of the task root must neither mount nor create anything there: root would be doing it on the host.
    The kernel resolves the target beneath the root in one step (openat2), so there is no check-then-use window
    for a swap to win either; that race cannot be forced deterministically here, these are its static forms."""
    from manifests.model import Mount

    src_dir = tmp / "src"
    src_dir.mkdir()
    src_file = tmp / "file"
    src_file.write_text("x\n")
    outside = tmp / "outside"
    outside.mkdir()
    d = drivers["exec"]
    data = alloc_data_after_a_first_run(d, agent_config)
    (data / "abs").symlink_to(outside)  # absolute: resolved against the host, it is outside
    (data / "rel").symlink_to(os.path.relpath(outside, data))  # relative, climbing out of the root
    (data / "final-file").symlink_to(outside / "created-file")  # the last component itself
    cases = [("/alloc/data/abs/dir", src_dir), ("/alloc/data/rel/dir", src_dir), ("/alloc/data/rel/f", src_file),
             ("/alloc/data/final-file", src_file)]
    for target, source in cases:
        task = exec_task("/bin/true", mounts=(Mount(source=str(source), target=target, readonly=False),))
        with pytest.raises(StartError, match="escapes the task root"):
            d.start(make_ctx(agent_config, task))
        assert list(outside.iterdir()) == [], f"{target}: created {list(outside.iterdir())} outside the root"


_FLIPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = (os.fsencode(p) for p in sys.argv[1:3])
print("ready", flush=True)
while True:  # swap the real directory and the symlink out of the root, atomically, as fast as possible
    libc.renameat2(-100, a, -100, b, 2)  # RENAME_EXCHANGE
"""


def test_exec_mount_target_swapped_for_a_symlink_while_starting_never_lands_outside(drivers, agent_config, tmp):
    """The race itself: a sibling process swaps a directory on the mount target's path with a symlink out of the
    root (renameat2 RENAME_EXCHANGE in a tight loop) while tasks with that mount start. Each start either mounts
    inside the root or fails; nothing may ever be created or mounted outside. Probabilistic by nature: a path
    checked first and used after (realpath, then mkdir and mount) loses this race now and then."""
    from manifests.model import Mount

    src = tmp / "src"
    src.mkdir()
    outside = tmp / "outside"
    outside.mkdir()
    d = drivers["exec"]
    data = alloc_data_after_a_first_run(d, agent_config)
    (data / "x").mkdir()
    (data / "x.alt").symlink_to(outside)
    flipper = subprocess.Popen([sys.executable, "-c", _FLIPPER, str(data / "x"), str(data / "x.alt")],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert flipper.stdout.readline().strip() == "ready"
        outcomes = set()
        for i in range(60):
            task = exec_task("/bin/true", mounts=(Mount(source=str(src), target=f"/alloc/data/x/m{i}",
                                                        readonly=True),))
            try:
                h = d.start(make_ctx(agent_config, task))
            except StartError as e:
                outcomes.add("refused" if "escapes the task root" in str(e) else str(e))
            else:
                d.wait(h, 30)
                d.destroy(h)
                outcomes.add("started")
            assert list(outside.iterdir()) == [], f"start {i} created {list(outside.iterdir())} outside the root"
    finally:
        flipper.kill()
        flipper.wait()
    assert outcomes <= {"started", "refused"}, outcomes


def test_requests_queued_behind_a_connection_that_closed_are_dropped(runtime, tmp):
    """A client sends two requests and six descriptors in one message and hangs up before the launcher reads
    (it is stopped meanwhile, so the order is certain). The first request fails at once (its target is gone), and
    its error reply finds the connection closed, which closes the descriptors still queued. The second must be
    dropped with them: nobody is there to hear its answer, and a request that takes descriptors would get closed
    numbers, by then reused by the launcher's own pipes."""
    from isolation.launcher import socket_path

    gone = subprocess.Popen(["/bin/true"])
    gone.wait()
    marker = tmp / "spawned"
    first = LaunchSpec(key="j.t.exec.q1", path="/bin/true", argv=("true",), env=(), cwd="/")
    second = LaunchSpec(key="j.t.q2", path="/bin/touch", argv=("touch", str(marker)), env=(), cwd="/")
    lines = [exec_line(runtime, first, gone.pid, 1, 3), spawn_line(runtime, second, 2)]
    launcher = runtime.client.launcher_pid
    fds_dir = f"/proc/{launcher}/fd"
    before = len(os.listdir(fds_dir))
    devnull = os.open("/dev/null", os.O_RDWR)
    os.kill(launcher, signal.SIGSTOP)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(socket_path(runtime.state_dir)))
            socket.send_fds(s, [("\n".join(lines) + "\n").encode()], [devnull] * 6)
    finally:
        os.kill(launcher, signal.SIGCONT)
        os.close(devnull)
    assert runtime.client.request("ping")["pid"] == launcher  # answered after the dead connection was handled
    wait_for(lambda: len(os.listdir(fds_dir)) <= before, timeout=10,
             what=f"the launcher's fds back to {before} (now {len(os.listdir(fds_dir))})")
    listed = runtime.client.request("list")
    assert not any(t["key"] == second.key for t in listed["tasks"] + listed["exits"]), listed
    assert not marker.exists()


def test_descriptors_of_a_malformed_request_are_not_left_for_the_next_one(runtime):
    # The spec is parsed after the request's descriptors are taken: a request that fails to parse must not leave
    # them queued on the connection, where the next request (the next exec's stdio) would pick them up.
    fds_dir = f"/proc/{runtime.client.launcher_pid}/fd"
    before = len(os.listdir(fds_dir))
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        for op in ("exec", "spawn"):
            # Both launchers' forms: a spec (the Python launcher's) and a plan (the C launcher's), both broken.
            with pytest.raises(Exception, match="KeyError|TypeError|malformed|compiled spawn requests only"):
                runtime.client.request(op, spec={"no": "such"}, target_pid=1, fds=[devnull] * 3, nfds=3)
            with pytest.raises(Exception, match="KeyError|plan.ops"):
                runtime.client.request(op, key="j.t.bad", plan={"ops": 5}, target_pid=1, fds=[devnull] * 3, nfds=3)
    finally:
        os.close(devnull)
    wait_for(lambda: len(os.listdir(fds_dir)) <= before, timeout=10,
             what=f"the launcher's fds back to {before} (now {len(os.listdir(fds_dir))})")


def test_the_launcher_uses_the_child_it_was_asked_for(runtime, child_impl, request):
    """`make test` builds the C launcher and child in place; a launcher that silently fell back to Python would
    leave the C one untested by everything in this module."""
    pong = runtime.client.request("ping")
    assert pong["child"] == child_impl
    want = "c" if request.node.callspec.params["child_impl"] == "c" else "python"
    assert pong.get("launcher", "python") == want
    assert runtime.client.launcher == want


def test_the_runtime_says_when_tasks_start_through_the_python_child(tmp, cgroup_parent, child_impl, request):
    """The daemon logs what Runtime.open returns: an operator whose install lacks the C extension hears why
    starts are slower, and one whose launcher is the Python one why it takes more memory."""
    from isolation.runtime import Runtime
    from tests.kernel.conftest import teardown_runtime

    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    try:
        notes = rt.open()
    finally:
        teardown_runtime(rt)
    assert any("Python child" in n for n in notes) == (child_impl == "python")
    python_launcher_note = any("launcher is the Python one" in n for n in notes)
    assert python_launcher_note == (request.node.callspec.params["child_impl"] == "py-launcher")
