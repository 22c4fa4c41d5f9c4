"""The exec2 driver on the real kernel: a probe run as the task reports what Landlock, the dynamic user and the
namespaces let it see and do."""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from isolation import landlock
from isolation.drivers.base import StartError
from isolation.drivers.exec2 import Exec2Driver
from manifests.agent_config import AgentConfig, Exec2Plugin
from manifests.model import Exec2Config, Task, Template
from tests.helpers import wait_for
from tests.kernel.conftest import make_ctx

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _both_children(child_impl):
    """Every test here runs with the C child and with the Python fallback (see conftest.child_impl)."""

DYNAMIC_MIN, DYNAMIC_MAX = 80000, 89999

# Each line is "key=value"; a failing command reports its own error text (cat's strerror) so the test can tell
# EACCES from ENOENT.
PROBE = r"""
echo "pid=$$"
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "passwd=$(cat /etc/passwd 2>&1 >/dev/null && echo readable)"
echo "outside=$( (echo x > /var/tmp/tasksd-exec2-probe) 2>&1 && echo written)"
echo "etc=$( (echo x > /etc/tasksd-exec2-probe) 2>&1 && echo written)"
echo "taskdir=$( (echo x > "$NOMAD_TASK_DIR/probe") 2>&1 && echo written)"
echo "allocdir=$( (echo x > "$NOMAD_ALLOC_DIR/data/probe") 2>&1 && echo written)"
echo "secrets=$( (echo x > "$NOMAD_SECRETS_DIR/probe") 2>&1 && echo written)"
echo "tmp=$( (echo x > "$TMPDIR/probe") 2>&1 && echo written)"
echo "procs=$(ls /proc 2>&1 | grep -c '^[0-9]')"
echo "pidns=$(readlink /proc/self/ns/pid)"
echo "ld_preload=${LD_PRELOAD-unset}"
echo "display=${DISPLAY-unset}"
echo "home=$HOME"
echo "user=$USER"
echo "tmpdir=$TMPDIR"
"""


def exec2_task(command: str, *args: str, name: str = "t", user: str | None = None, **cfg) -> Task:
    return Task(name=name, driver="exec2", config=Exec2Config(command=command, args=tuple(args), **cfg), user=user)


def config(**plugin) -> AgentConfig:
    # /proc is not among exec2's default unveils; the probe lists it to see its pid namespace, so the operator
    # unveils it here (the /proc it sees is the task's own, remounted for its pid namespace).
    plugin.setdefault("unveil_paths", ("r:/proc",))
    return AgentConfig(exec2=Exec2Plugin(**plugin), max_kill_timeout=30.0)


def parse(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def logs(h, task: str = "t") -> tuple[str, str]:
    base = Path(h.alloc_dir) / "alloc" / "logs"
    return (base / f"{task}.stdout").read_text(), (base / f"{task}.stderr").read_text()


def run_probe(d, cfg: AgentConfig, task: Task, **ctx_kw) -> tuple[dict[str, str], object]:
    h = d.start(make_ctx(cfg, task, **ctx_kw))
    res = d.wait(h, 30)
    out, err = logs(h, task.name)
    d.destroy(h)
    assert res is not None and res.exit_code == 0, (res, out, err)
    return parse(out), h


@pytest.fixture
def exec2(runtime, tmp):
    """An exec2 driver over the test runtime; tests pick the plugin config."""
    # exec2 has no chroot: the dynamic user reaches its task dir through the host path, so the test's private
    # temp dir (0700 root) must be traversable, as a state dir such as /var/lib/tasksd is.
    os.chmod(tmp, 0o711)

    def make(cfg: AgentConfig) -> Exec2Driver:
        return Exec2Driver(runtime, cfg)
    return make


def pool_owners(runtime) -> dict[str, int]:
    path = Path(runtime.state_dir) / "dynamic-users.json"
    return json.loads(path.read_text())["owners"] if path.exists() else {}


def test_defaults_confine_the_task(exec2, monkeypatch):
    # The host env of the agent reaches exec2 tasks, minus loader and display variables.
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/tasksd-preload.so")
    monkeypatch.setenv("DISPLAY", ":99")
    cfg = config()
    seen, h = run_probe(exec2(cfg), cfg, exec2_task("/bin/sh", "-c", PROBE))
    assert "Permission denied" in seen["passwd"]  # EACCES from Landlock, not ENOENT
    assert "Permission denied" in seen["outside"] and "Permission denied" in seen["etc"]
    assert not Path("/var/tmp/tasksd-exec2-probe").exists() and not Path("/etc/tasksd-exec2-probe").exists()
    for where in ("taskdir", "allocdir", "secrets", "tmp"):
        assert seen[where] == "written", (where, seen[where])
    assert (Path(h.alloc_dir) / "alloc" / "data" / "probe").read_text() == "x\n"  # the host sees the alloc dir
    assert DYNAMIC_MIN <= int(seen["uid"]) <= DYNAMIC_MAX
    assert seen["gid"] == seen["uid"]
    assert seen["pid"] == "1"
    assert 1 <= int(seen["procs"]) <= 5  # sh, its subshell, ls, grep: no host process is visible
    assert seen["ld_preload"] == "unset" and seen["display"] == "unset"
    assert seen["home"] == "/nonexistent"
    assert seen["user"] == f"nomad-{seen['uid']}"
    assert seen["tmpdir"] == str(Path(h.task_dir) / "tmp")


def test_task_unveil_allowed_by_plugin_reads_passwd(exec2):
    cfg = config(unveil_by_task=True)
    seen, _ = run_probe(exec2(cfg), cfg, exec2_task("/bin/sh", "-c", PROBE, unveil=("r:/etc/passwd",)))
    assert seen["passwd"] == "readable"
    assert "Permission denied" in seen["etc"]  # reading one file unveils nothing else in /etc


def test_task_unveil_refused_without_unveil_by_task(exec2, runtime):
    cfg = config()
    with pytest.raises(StartError, match="task set unveil paths but driver config does not allow this"):
        exec2(cfg).start(make_ctx(cfg, exec2_task("/bin/true", unveil=("r:/etc/passwd",))))
    assert pool_owners(runtime) == {}  # refused before a dynamic uid was taken


def test_task_unveil_of_a_missing_path_is_an_error(exec2):
    cfg = config(unveil_by_task=True)
    with pytest.raises(StartError, match="/nonexistent/tasksd"):
        exec2(cfg).start(make_ctx(cfg, exec2_task("/bin/true", unveil=("r:/nonexistent/tasksd",))))


def test_concurrent_tasks_get_distinct_uids_released_on_destroy_and_persisted(exec2, runtime):
    cfg = config()
    d = exec2(cfg)
    a = d.start(make_ctx(cfg, exec2_task("/bin/sleep", "1000", name="a")))
    b = d.start(make_ctx(cfg, exec2_task("/bin/sleep", "1000", name="b")))
    handles = [a, b]
    try:
        assert a.uid != b.uid
        for h in (a, b):
            assert DYNAMIC_MIN <= h.uid <= DYNAMIC_MAX
            assert os.stat(f"/proc/{h.pid}").st_uid == h.uid  # the running process, not only the handle
        # A daemon restart: a new driver over the same state dir must not hand out either live uid.
        d2 = exec2(cfg)
        c = d2.start(make_ctx(cfg, exec2_task("/bin/sleep", "1000", name="c")))
        handles.append(c)
        assert c.uid not in (a.uid, b.uid)
        assert sorted(pool_owners(runtime).values()) == sorted(h.uid for h in handles)
        d2.stop(a, "SIGKILL", 5)
        d2.destroy(a)
        handles.remove(a)
        assert a.uid not in pool_owners(runtime).values()
        assert b.uid in pool_owners(runtime).values()
    finally:
        for h in handles:
            d.stop(h, "SIGKILL", 5)
            d.destroy(h)
    assert pool_owners(runtime) == {}


def test_exec_into_task_is_confined_the_same_way(exec2, tmp):
    cfg = config()
    d = exec2(cfg)
    h = d.start(make_ctx(cfg, exec2_task("/bin/sleep", "1000")))
    out = tmp / "exec.out"
    fd_out = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    fd_in = os.open("/dev/null", os.O_RDONLY)
    try:
        key = d.exec(h, ["/bin/sh", "-c", PROBE], [fd_in, fd_out, fd_out])
    finally:
        os.close(fd_out)
        os.close(fd_in)
    try:
        res = d.runtime.wait_exec(key, 30)
        assert res is not None and res.exit_code == 0, out.read_text()
        seen = parse(out.read_text())
        assert "Permission denied" in seen["passwd"]
        assert "Permission denied" in seen["outside"]
        assert seen["uid"] == str(h.uid)
        # In the task's pid namespace: its /proc shows sleep (pid 1) and the exec'd shell, not the host.
        assert seen["pidns"] == os.readlink(f"/proc/{h.pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert seen["pid"] != "1"
        assert 2 <= int(seen["procs"]) <= 6
        assert seen["home"] == "/nonexistent"
    finally:
        d.stop(h, "SIGKILL", 5)
        d.destroy(h)


def test_unhealthy_without_landlock_and_refuses_tasks(exec2, monkeypatch, runtime):
    # Simulated: this kernel has Landlock (ABI 7), so its absence (RHEL 9 kernels) is faked at the probe.
    monkeypatch.setattr(landlock, "abi_version", lambda: 0)
    cfg = config()
    d = exec2(cfg)
    health = d.fingerprint()
    assert not health.healthy and "Landlock" in health.reason
    with pytest.raises(StartError, match="Landlock"):
        d.start(make_ctx(cfg, exec2_task("/bin/true")))
    assert pool_owners(runtime) == {}


def test_missing_command_is_reported(exec2):
    cfg = config()
    with pytest.raises(StartError, match="not found"):
        exec2(cfg).start(make_ctx(cfg, exec2_task("tasksd-no-such-command")))


def test_named_user_is_used_and_root_refused(exec2):
    cfg = config()
    seen, h = run_probe(exec2(cfg), cfg, exec2_task("/bin/sh", "-c", PROBE, user="nobody"))
    assert seen["uid"] == "65534" and not h.dynamic_uid
    with pytest.raises(StartError, match="denylist"):
        exec2(cfg).start(make_ctx(cfg, exec2_task("/bin/true", user="root")))


def test_unveil_defaults_off_leaves_only_the_task_dirs(exec2):
    cfg = config(unveil_defaults=False, unveil_paths=("rx:/usr", "rx:/lib", "rx:/lib64", "r:/etc/ld.so.cache"))
    task = exec2_task("/bin/sh", "-c", 'echo "tmp=$( (echo x > /tmp/tasksd-exec2-probe) 2>&1 && echo written)"')
    seen, _ = run_probe(exec2(cfg), cfg, task)
    assert "Permission denied" in seen["tmp"]
    assert not Path("/tmp/tasksd-exec2-probe").exists()



def test_command_outside_executable_unveils_is_refused_with_the_reason(exec2, runtime):
    # /usr/sbin is not among exec2's default unveils (the bin dirs and libraries are).
    sbin = next((p for p in ("/usr/sbin/nologin", "/usr/sbin/ldconfig") if os.path.exists(p)), None)
    if sbin is None or os.path.realpath(sbin).startswith(("/usr/bin/", "/usr/lib/")):
        pytest.skip("no binary in /usr/sbin outside the default unveils on this host")
    cfg = config()
    with pytest.raises(StartError, match="not under an unveiled path with mode x"):
        exec2(cfg).start(make_ctx(cfg, exec2_task(sbin)))
    assert pool_owners(runtime) == {}  # the uid taken for the refused task was given back
    cfg = config(unveil_paths=("rx:/usr/sbin",))
    d = exec2(cfg)
    h = d.start(make_ctx(cfg, exec2_task(sbin, "-c", "true")))
    res = d.wait(h, 30)
    d.destroy(h)
    assert res is not None and res.error is None and res.exit_code in (0, 1)  # it ran: nologin exits 1, ldconfig 0


def test_damaged_pool_file_is_rebuilt_from_live_tasks(exec2, runtime):
    cfg = config()
    d = exec2(cfg)
    a = d.start(make_ctx(cfg, exec2_task("/bin/sleep", "1000", name="a")))
    handles = [a]
    try:
        (Path(runtime.state_dir) / "dynamic-users.json").write_text("{not json")
        b = d.start(make_ctx(cfg, exec2_task("/bin/sleep", "1000", name="b")))
        handles.append(b)
        assert b.uid != a.uid  # a fresh pool would have started over at a's id
        assert a.uid in pool_owners(runtime).values()
    finally:
        for h in handles:
            d.stop(h, "SIGKILL", 5)
            d.destroy(h)
    assert pool_owners(runtime) == {}


def test_stop_signal_reaches_a_task_that_handles_it(exec2):
    # The task is pid 1 of its namespace: the kernel delivers a signal from outside only when pid 1 handles it
    # (or it is SIGKILL), so the other tests stop their plain `sleep` with SIGKILL rather than wait out the
    # kill timeout. A task with a handler gets the stop signal itself.
    cfg = config()
    d = exec2(cfg)
    task = exec2_task("/bin/sh", "-c", 'trap "exit 7" TERM; echo > "$NOMAD_ALLOC_DIR/data/ready"; sleep 1000 & wait')
    h = d.start(make_ctx(cfg, task))
    try:
        wait_for((Path(h.alloc_dir) / "alloc" / "data" / "ready").exists, what="trap installed")
        res = d.stop(h, "SIGTERM", 30)
        assert res.exit_code == 7 and res.signal is None
    finally:
        d.destroy(h)


def test_a_restart_that_fails_keeps_the_instance_uid(exec2, runtime):
    # The uid owns what the last run left in local/ and alloc/data. A restart that fails (here its template's
    # source is gone: the first run deleted it) must not give the uid back: the next try would run as another
    # uid that cannot read those files, and the old uid could be handed to another task.
    cfg = config()
    d = exec2(cfg)
    tpl = Template(destination="local/out", source="local/in.tpl")
    task = replace(exec2_task("/bin/sh", "-c", 'rm "$NOMAD_TASK_DIR/in.tpl"'), templates=(tpl,))
    ctx = make_ctx(cfg, task)
    local = Path(runtime.alloc_root) / ctx.alloc_id / "t" / "local"
    local.mkdir(parents=True)
    (local / "in.tpl").write_text("x")
    h = d.start(ctx)
    try:
        res = d.wait(h, 30)
        assert res is not None and res.exit_code == 0, (res, logs(h))
        assert not (local / "in.tpl").exists() and (local / "out").read_text() == "x"
        d.destroy(h, keep_identity=True)  # the restart policy will run it again
        assert pool_owners(runtime) == {ctx.task_id: h.uid}
        with pytest.raises(StartError, match=r"template\[0\]"):
            d.start(ctx)
        assert pool_owners(runtime) == {ctx.task_id: h.uid}
    finally:
        d.destroy(h)
    assert pool_owners(runtime) == {}


def test_env_templates_cannot_set_dropped_or_denied_variables(exec2):
    # An env template's source can be a file the task itself writes (local/): what it sets goes through the
    # same filter as the task's env, so LD_PRELOAD (dropped by exec2) and denied_envvars never reach it.
    cfg = config(denied_envvars=("SECRET_*",))
    d = exec2(cfg)
    tpl = Template(destination="local/env.txt", data="LD_PRELOAD=/tmp/x.so\nSECRET_TOKEN=t\nOK=yes\n", env=True)
    task = replace(exec2_task("/bin/sh", "-c", 'echo "ld=${LD_PRELOAD-unset} secret=${SECRET_TOKEN-unset} ok=$OK"'),
                   templates=(tpl,))
    h = d.start(make_ctx(cfg, task))
    try:
        res = d.wait(h, 30)
        assert res is not None and res.exit_code == 0, (res, logs(h))
        assert logs(h)[0].strip() == "ld=unset secret=unset ok=yes", logs(h)
    finally:
        d.destroy(h)


def test_abstract_unix_sockets_of_the_host_are_out_of_reach(exec2):
    # On the host network an exec2 task shares the host's abstract unix socket namespace, and those sockets have
    # no file permissions. With Landlock ABI 6 and later the ruleset scopes them to the task's own domain.
    if landlock.abi_version() < 6:
        pytest.skip("Landlock ABI < 6 cannot scope abstract unix sockets")
    name = f"\0tasksd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(name)
        srv.listen(1)
        probe = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1].replace('@', '\\0', 1)); print('connected')\n"
                 "except OSError as e:\n    print('refused', e.errno)\n"
                 "t = socket.socket(socket.AF_UNIX); t.bind('\\0own-' + sys.argv[1][1:]); t.listen(1)\n"
                 "u = socket.socket(socket.AF_UNIX); u.connect('\\0own-' + sys.argv[1][1:]); print('own ok')\n")
        cfg = config()
        d = exec2(cfg)
        h = d.start(make_ctx(cfg, exec2_task("/usr/bin/python3", "-c", probe, "@" + name[1:])))
        try:
            res = d.wait(h, 30)
            out, err = logs(h)
            assert res is not None and res.exit_code == 0, (res, out, err)
            assert out.splitlines() == [f"refused {errno.EPERM}", "own ok"], (out, err)
        finally:
            d.destroy(h)


def test_a_failed_setup_step_is_reported_with_its_step_errno_and_path(exec2, runtime):
    """The child's report reaches the caller: the step, the error and the path it concerns. Nothing is left
    running, and the dynamic uid the start took is given back."""
    cfg = config()
    d = exec2(cfg)
    with pytest.raises(StartError, match=r"step execve: No such file or directory: /nonexistent/tasksd-cmd-ä"):
        d.start(make_ctx(cfg, exec2_task("/nonexistent/tasksd-cmd-ä")))
    with pytest.raises(StartError, match=r"step chdir: No such file or directory: /nonexistent-dir"):
        d.start(make_ctx(cfg, exec2_task("/bin/true", work_dir="/nonexistent-dir"), index=1))
    assert pool_owners(runtime) == {}
    for name in runtime.cgroups.names():
        cg = runtime.cgroups.open(name)
        assert cg is None or not cg.pids()


@pytest.mark.parametrize("give_back", ["destroy", "forget"])
def test_what_a_dynamic_uid_left_in_shared_dirs_goes_when_the_uid_is_given_back(exec2, runtime, tmp, give_back):
    # A file the task makes in the host's /tmp (exec2 unveils it rwc, as Nomad does) or in an operator's shared dir
    # would belong to whichever task gets the uid next. A restart keeps the uid and the files; giving the uid back
    # (the task destroyed for good, or forgotten while it waited for a restart) removes them first.
    scratch = tmp / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o1777)
    cfg = config(unveil_paths=("r:/proc", f"rwc:{scratch}"))
    d = exec2(cfg)
    mark = f"tasksd-leftover-{uuid.uuid4().hex[:8]}"
    left = [Path(f"/tmp/{mark}"), Path(f"/tmp/{mark}.file"), scratch / mark]
    script = f"mkdir /tmp/{mark} && echo x > /tmp/{mark}/f && echo y > /tmp/{mark}.file && echo z > {scratch}/{mark}"
    ctx = make_ctx(cfg, exec2_task("/bin/sh", "-c", script))
    h = d.start(ctx)
    try:
        res = d.wait(h, 30)
        assert res is not None and res.exit_code == 0, (res, logs(h))
        assert [os.lstat(p).st_uid for p in left] == [h.uid] * 3
        pool = json.loads((Path(runtime.state_dir) / "dynamic-users.json").read_text())
        assert pool["roots"] == {str(h.uid): sorted(["/tmp", str(scratch)])}
        d.destroy(h, keep_identity=True)
        assert all(p.exists() for p in left)
        assert pool_owners(runtime) == {ctx.task_id: h.uid}
        if give_back == "destroy":
            d.destroy(h)
        else:
            d.forget(ctx.task_id)
            d.wait_give_backs()
            d.destroy(h)  # a stale handle now: it must not touch the uid again
        assert not [p for p in left if os.path.lexists(p)]
        assert pool_owners(runtime) == {}
    finally:
        d.destroy(h)
        for p in left[:2]:  # a failed assertion must not leave them in the host's /tmp
            if p.is_dir():
                shutil.rmtree(p)
            elif os.path.lexists(p):
                p.unlink()


def test_a_stale_handle_never_gives_back_a_uid_someone_else_holds(exec2, runtime, tmp):
    scratch = tmp / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o1777)
    cfg = config(unveil_paths=("r:/proc", f"rwc:{scratch}"))
    d = exec2(cfg)
    h = d.start(make_ctx(cfg, exec2_task("/bin/true")))
    d.wait(h, 30)
    d.destroy(h)
    assert pool_owners(runtime) == {}
    # The uid went to another instance, which made a file; then the old handle is destroyed again (recovery).
    d._with_pool(lambda pool: pool._owners.__setitem__("j/g/1/t", h.uid))
    theirs = scratch / "theirs"
    theirs.write_text("x")
    os.chown(theirs, h.uid, h.uid)
    d.release(h)
    assert theirs.exists()
    assert pool_owners(runtime) == {"j/g/1/t": h.uid}
    d._with_pool(lambda pool: pool.release_owner("j/g/1/t"))


def test_a_uid_whose_files_cannot_all_be_removed_stays_out_of_the_pool(exec2, runtime, tmp, monkeypatch):
    from isolation import safefile

    monkeypatch.setattr(safefile, "MAX_OWNED_DEPTH", 2)  # stands for a tree too deep to walk
    scratch = tmp / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o1777)
    cfg = config(unveil_paths=("r:/proc", f"rwc:{scratch}"))
    d = exec2(cfg)
    h = d.start(make_ctx(cfg, exec2_task("/bin/sh", "-c", f"mkdir -p {scratch}/a/b/c && echo x > {scratch}/a/b/c/f")))
    res = d.wait(h, 30)
    assert res is not None and res.exit_code == 0, logs(h)
    d.destroy(h)
    assert pool_owners(runtime) == {f"quarantined:{h.uid}": h.uid}
    assert (scratch / "a/b/c/f").exists()
    d._with_pool(lambda pool: pool.release(h.uid))


def test_a_give_back_cut_short_by_a_crash_is_finished_by_the_next_start(exec2, runtime, tmp):
    scratch = tmp / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o1777)
    cfg = config(unveil_paths=("r:/proc", f"rwc:{scratch}"))
    uid = 86001
    left = scratch / "left"
    left.write_text("x")
    os.chown(left, uid, uid)
    # What a tasksd killed during the walk leaves: the uid held as "releasing:<uid>", its directories recorded.
    pool = Path(runtime.state_dir) / "dynamic-users.json"
    pool.parent.mkdir(parents=True, exist_ok=True)
    pool.write_text(json.dumps({"min": DYNAMIC_MIN, "max": DYNAMIC_MAX, "next": uid + 1,
                                "owners": {f"releasing:{uid}": uid}, "roots": {str(uid): [str(scratch)]}}))
    d = exec2(cfg)
    d.wait_give_backs()
    assert not left.exists()
    assert pool_owners(runtime) == {}
