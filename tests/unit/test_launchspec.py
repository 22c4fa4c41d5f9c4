"""LaunchSpec crosses the daemon/launcher boundary as JSON: its hand-written to_dict must say what asdict says."""
import json
from dataclasses import asdict

from isolation.launchspec import BindMount, LaunchSpec, LogTarget, Namespaces, RootFS


def full_spec() -> LaunchSpec:
    return LaunchSpec(
        key="a.t.1", path="/bin/sleep", argv=("sleep", "5"), env=(("A", "1"), ("B", "2")), cwd="/local",
        cgroup_procs=("/sys/fs/cgroup/x/cgroup.procs",), uid=65534, gid=65534, groups=(1, 2), umask=0o027,
        oom_score_adj=5, no_new_privs=True, caps=(10,), landlock=(("r", "/etc"),), landlock_skip_missing=False,
        namespaces=Namespaces(mount=True, pid=True, ipc=True, uts=True, net="new", mount_proc=True, hostname="h"),
        rootfs=RootFS(root="/r", binds=(BindMount("/usr", "/usr"), BindMount("/data", "/d", readonly=False)),
                      pivot_root=False, readonly_paths=("/proc/sys",), masked_paths=("/proc/kcore",)),
        stdout=LogTarget("/logs", "t.stdout", 3, 1024), stderr=LogTarget("/logs", "t.stderr"),
        setsid=False, ctty=True)


def test_to_dict_matches_asdict_for_every_field():
    for spec in (full_spec(), LaunchSpec(key="k", path="/bin/true", argv=("true",), env=(), cwd="/")):
        assert spec.to_dict() == asdict(spec)


def test_json_round_trip_gives_the_same_spec():
    spec = full_spec()
    assert LaunchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_to_dict_does_not_share_nested_state_with_the_spec():
    spec = full_spec()
    d = spec.to_dict()
    d["namespaces"]["pid"] = False
    d["stdout"]["base"] = "changed"
    assert spec.namespaces.pid is True and spec.stdout.base == "t.stdout"


def test_specs_stored_by_older_versions_still_load():
    # exec environments in the state store hold specs with fields since removed (tmpfs, stdin_fd_passed).
    d = json.loads(json.dumps(full_spec().to_dict()))
    d.update(tmpfs=[["/r/secrets", 1, True]], stdin_fd_passed=True)
    assert LaunchSpec.from_dict(d) == full_spec()
