"""Hostile manifests through the REAL daemon (the loader-only fuzzing lives in test_hostile_manifests.py): generated
and mutated manifests in batches, then path tricks in the tasks dir (symlinks out, loops, devices, FIFOs, huge and
binary files, a file rewritten while it is read, `../` in names).

What the daemon does with symlinks, on purpose: it follows them (a Kubernetes ConfigMap mounts `x.hcl ->
..data/x.hcl` and swaps `..data` atomically), so a manifest may live outside the tasks dir. The strict permission
rule is applied to the *target* (os.stat follows the link), so a world-writable target is refused. Anything that is
not a regular file after following links (directory, device, FIFO, a loop that cannot be resolved) is skipped
without being opened: opening a FIFO would block the scan forever.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from controller.client import Client, ClientError
from tests.e2e.conftest import Daemon, raw_job
from tests.helpers import wait_for
from tests.torture.conftest import cmdline, resync, scale, task_cgroups

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "manifests" / "examples").rglob("*") if p.suffix in (".hcl", ".yaml"))
NASTY = ["../", "../../etc/passwd", "\x00", "}", "{", '"', "${", "%{", "<<EOF\n", "\ufeff", "-", "\n", "job",
         "group", "task", "= [", "1e999", "-1", "99999999999999999999", "count = 2\n", "driver = \"docker\"\n",
         ": ", "- ", "  "]
# Task states that end a settle: running, or gave up / finished (a mutated command that cannot run), or waiting
# out a restart delay (a mutated `sleep` argument that exits at once under a service restart policy).
SETTLED = {"running", "failed", "complete", "restarting"}


def runnable(text: str) -> str:
    """An example made runnable anywhere: raw_exec `/bin/sleep 1000` instead of exec/exec2 and their own command."""
    text = re.sub(r'driver(\s*[=:]\s*)"?exec2?"?', r'driver\1"raw_exec"', text)
    text = re.sub(r'command(\s*[=:]\s*)"?[^"\n]+"?', r'command\1"/bin/sleep"', text)
    text = re.sub(r"args(\s*[=:]\s*)\[.*\]", r'args\1["1000"]', text)
    return re.sub(r".*unveil.*\n", "", text)


BASES = [(p.suffix, p.stem, runnable(p.read_text())) for p in EXAMPLES]


JOB = "JOBNAME"  # replaced by a unique name once the corpus is drawn (mutations may break it: that is a case too)


@st.composite
def mutated_example(draw) -> tuple[str, str]:
    suffix, job, text = draw(st.sampled_from(BASES))
    # Unique job names: with the examples' own names every copy but one would be refused as a duplicate.
    text = text.replace(job, f"{JOB}-{job}")
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(NASTY), st.text(max_size=6)))
        end = min(len(text), pos + draw(st.integers(0, 12)))
        text = (text[:pos] + piece + text[pos:] if op == "insert" else
                text[:pos] + text[end:] if op == "delete" else text[:pos] + piece + text[end:])
    return suffix, text


NAME = st.one_of(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
                 st.sampled_from(["../x", "..", ".", "a/b", "", "x y", "é", "a" * 200]))


@st.composite
def generated(draw) -> tuple[str, str]:
    """A structurally plausible job whose fields are drawn from good and bad values alike."""
    job = draw(st.sampled_from([JOB] * 6)) if draw(st.integers(0, 3)) else draw(NAME)
    groups = []
    for gi in range(draw(st.sampled_from([1, 1, 1, 2, 0]))):
        tasks = []
        for ti in range(draw(st.sampled_from([1, 1, 1, 2, 0]))):
            tasks.append({
                "name": f"t{ti}" if draw(st.integers(0, 4)) else draw(NAME),
                "driver": draw(st.sampled_from(["raw_exec"] * 12 + ["exec", "docker", "", "RAW_EXEC"])),
                "command": draw(st.sampled_from(["/bin/sleep"] * 8 + ["/nonexistent", "sleep", "", "/bin/false"])),
                "args": draw(st.lists(st.sampled_from(["1000", "0", "-1", "x", "${NOMAD_TASK_DIR}", ""]),
                                      min_size=0, max_size=2)),
                "kill_timeout": draw(st.sampled_from(["2s"] * 6 + ["1s", "-5s", "forever", "0s"])),
                "memory": draw(st.sampled_from([None] * 4 + [32, 0, -1, 10 ** 12])),
            })
        groups.append({"name": f"g{gi}" if draw(st.integers(0, 4)) else draw(NAME), "count": draw(
            st.sampled_from([None, 1, 2, 0, -1])), "restart_mode": draw(st.sampled_from([None, "fail", "delay",
                                                                                        "bogus"])), "tasks": tasks})
    if draw(st.booleans()):
        return ".hcl", _hcl(job, groups)
    return ".yaml", _yaml(job, groups)


def _hcl(job: str, groups: list[dict]) -> str:
    out = [f"job {json.dumps(job)} {{"]
    for g in groups:
        out.append(f"  group {json.dumps(g['name'])} {{")
        if g["count"] is not None:
            out.append(f"    count = {g['count']}")
        if g["restart_mode"]:
            out.append(f'    restart {{\n      attempts = 1\n      delay = "1s"\n      mode = "{g["restart_mode"]}"\n'
                       f"    }}")
        for t in g["tasks"]:
            out += [f"    task {json.dumps(t['name'])} {{", f"      driver = {json.dumps(t['driver'])}",
                    f"      kill_timeout = {json.dumps(t['kill_timeout'])}",
                    f"      config {{\n        command = {json.dumps(t['command'])}",
                    f"        args = {json.dumps(t['args'])}\n      }}"]
            if t["memory"] is not None:
                out.append(f"      resources {{\n        memory = {t['memory']}\n      }}")
            out.append("    }")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def _yaml(job: str, groups: list[dict]) -> str:
    doc: dict = {"job": {"name": job, "group": []}}
    for g in groups:
        gd: dict = {"name": g["name"], "task": []}
        if g["count"] is not None:
            gd["count"] = g["count"]
        if g["restart_mode"]:
            gd["restart"] = {"attempts": 1, "delay": "1s", "mode": g["restart_mode"]}
        for t in g["tasks"]:
            td = {"name": t["name"], "driver": t["driver"], "kill_timeout": t["kill_timeout"],
                  "config": {"command": t["command"], "args": t["args"]}}
            if t["memory"] is not None:
                td["resources"] = {"memory": t["memory"]}
            gd["task"].append(td)
        doc["job"]["group"].append(gd)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"  # JSON is YAML: no quoting rules to get wrong


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifests(d: Daemon) -> dict[str, dict]:
    return {m["path"]: m for m in d.client.get("/v1/manifests")}


def seen(d: Daemon, paths: list[Path]) -> bool:
    """Every given file is in /v1/manifests with its current content (a refused file has no content hash)."""
    got = manifests(d)
    for p in paths:
        m = got.get(str(p))
        if m is None:
            return False
        if m["content_hash"] not in ("", sha(p.read_bytes())):
            return False
    return True


def cgroups_now(d: Daemon) -> dict[str, list[int]]:
    return task_cgroups(d.cgroup_parent)  # retries reads that race a cgroup's removal


def settled(d: Daemon) -> bool:
    return all(t["state"] in SETTLED for t in d.tasks().values())


def assert_healthy(d: Daemon) -> None:
    assert d.proc is not None and d.proc.poll() is None, f"tasksd died:\n{d.log()[-3000:]}"
    health = d.client.get("/v1/health")
    assert health["ready"] and not health["tasks_dir_error"] and not health["store_error"], health
    assert "Traceback" not in d.log(), "a Python traceback in the tasksd log"


def assert_all_stopped(d: Daemon) -> None:
    wait_for(lambda: all(t["state"] in ("stopped", "complete", "failed") for t in d.tasks().values())
             and not cgroups_now(d), timeout=90, interval=0.1,
             what=f"every task stopped and its cgroup gone (left: {cgroups_now(d)})")


def check_manifests_and_tasks(d: Daemon, written: dict[Path, bytes]) -> dict[str, int]:
    got = manifests(d)
    assert set(got) == {str(p) for p in written}, (set(got) ^ {str(p) for p in written})
    tasks = d.tasks()
    counts = {"applied": 0, "rejected": 0, "duplicate": 0, "tasks": 0}
    for path in written:
        m = got[str(path)]
        # "duplicate": valid, but a job of the same name is already defined by another file (a rejection too).
        assert m["status"] in ("applied", "rejected", "duplicate"), m
        counts[m["status"]] += 1
        if m["status"] != "applied":
            assert m["errors"] and all(e["message"] for e in m["errors"]), m
            # Nothing ever ran from it: each file is written once, so it has no last good version.
            assert not [t for t in tasks.values() if t["manifest"] == str(path)], m
            continue
        mine = [t for t in tasks.values() if t["manifest"] == str(path)]
        counts["tasks"] += len(mine)
        for t in mine:
            assert t["state"] in SETTLED, t
            if t["state"] == "running" and not Path(f"/proc/{t['pid']}").exists():
                # A command that exits at once (`sleep 0`, `sleep x`) may be read as running just before its exit
                # is processed: the daemon must notice within a moment, not keep a dead pid as running.
                wait_for(lambda t=t: (now := d.task(t["id"])) is None
                         or (now["state"], now["pid"]) != ("running", t["pid"]),
                         timeout=30, what=f"{t['id']}: tasksd notices its pid {t['pid']} is gone")
    return counts


def draw_corpus(total: int) -> list[tuple[str, bytes]]:
    """(suffix, content) for `total` files. Hypothesis draws them up front, outside the daemon test: a given-test
    per daemon would start a daemon per example, and a single example is hypothesis's simplest one."""
    corpus: list[tuple[str, bytes]] = []
    garbage = st.tuples(st.sampled_from([".hcl", ".yaml"]), st.binary(max_size=512))
    texts = {"mutated": mutated_example(), "generated": generated()}
    kinds = st.sampled_from(["mutated"] * 4 + ["generated"] * 4 + ["garbage"])
    cases = kinds.flatmap(lambda k: garbage if k == "garbage" else texts[k].map(
        lambda c: (c[0], c[1].encode("utf-8", "surrogatepass"))))

    @settings(max_examples=total, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(cases)
    def collect(case):
        corpus.append(case)

    collect()
    return [(suffix, raw.replace(JOB.encode(), f"j{n:04d}".encode())) for n, (suffix, raw) in enumerate(corpus)]


def test_hostile_manifests_through_the_daemon(daemon):
    d = daemon
    total, batch = scale(150, 1000), 25
    corpus = draw_corpus(total)
    assert len(corpus) > total * 0.9, len(corpus)
    d.start()
    written: dict[Path, bytes] = {}
    for start in range(0, len(corpus), batch):
        paths = []
        for n in range(start, min(len(corpus), start + batch)):
            suffix, raw = corpus[n]
            path = d.tasks_dir / f"f{n:04d}{suffix}"
            path.write_bytes(raw)
            written[path] = raw
            paths.append(path)
        # Let the daemon see each batch before the next lands, so scans overlap with starts and stops.
        wait_for(lambda paths=paths: seen(d, paths), timeout=60, interval=0.05, what=f"batch at {start} seen")
    wait_for(lambda: seen(d, list(written)) and settled(d), timeout=120, interval=0.1, what="quiescence")
    assert_healthy(d)
    counts = check_manifests_and_tasks(d, written)
    print(f"hostile manifests: {counts}")
    assert counts["applied"] and counts["rejected"], counts  # the mix really had both kinds

    for path in written:
        path.unlink()
    wait_for(lambda: not manifests(d), timeout=60, what="every manifest forgotten")
    assert_all_stopped(d)
    assert_healthy(d)


# ---- path tricks ---------------------------------------------------------------------------------------------


def wait_manifest(d: Daemon, path: Path, status: str, timeout: float = 30) -> dict:
    return wait_for(lambda: (m := manifests(d).get(str(path))) is not None and m["status"] == status and m,
                    timeout=timeout, what=f"{path.name} {status} (now {manifests(d).get(str(path))})")


def test_symlink_out_of_the_tasks_dir_is_followed_and_its_target_must_be_safe(make_daemon, tmp):
    d = make_daemon()
    # A target outside the tasks dir changes without any event in the watched directory: only the periodic
    # resync notices a chmod there, so make it short.
    resync(d, "1s")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    good, loose = elsewhere / "good.hcl", elsewhere / "loose.hcl"
    good.write_text(raw_job("outside"))
    os.chmod(good, 0o644)
    loose.write_text(raw_job("loose"))
    os.chmod(loose, 0o666)
    (d.tasks_dir / "out.hcl").symlink_to(good)
    (d.tasks_dir / "loose.hcl").symlink_to(loose)
    d.start()

    pid = d.wait_state("outside/g/0/t", "running")["pid"]
    m = wait_manifest(d, d.tasks_dir / "loose.hcl", "rejected")
    assert "writable by group or others" in m["errors"][0]["message"], m
    assert d.task("loose/g/0/t") is None

    # The rule is applied to the target on every scan, not only the first: once it turns world-writable the file
    # is refused and (as for any rejected edit) the last good version keeps running untouched.
    os.chmod(good, 0o666)
    m = wait_manifest(d, d.tasks_dir / "out.hcl", "rejected")
    assert "writable by group or others" in m["errors"][0]["message"], m
    t = d.task("outside/g/0/t")
    assert (t["state"], t["pid"], t["restarts"]) == ("running", pid, 0), t
    os.chmod(good, 0o644)
    wait_manifest(d, d.tasks_dir / "out.hcl", "applied")
    assert d.task("outside/g/0/t")["pid"] == pid  # same content: not restarted
    assert_healthy(d)


def test_links_to_non_files_and_fifos_are_skipped_without_hanging(daemon, tmp):
    d = daemon
    somedir = tmp / "somedir"
    somedir.mkdir()
    (somedir / "inner.hcl").write_text(raw_job("inner"))
    t = d.tasks_dir
    (t / "self.hcl").symlink_to(t / "self.hcl")
    (t / "a.hcl").symlink_to(t / "b.hcl")
    (t / "b.hcl").symlink_to(t / "a.hcl")
    (t / "dir.hcl").symlink_to(somedir)
    (t / "zero.hcl").symlink_to("/dev/zero")
    (t / "zero.yaml").symlink_to("/dev/urandom")
    (t / "dangling.hcl").symlink_to(tmp / "missing.hcl")
    os.mkfifo(t / "fifo.hcl")
    (t / "fifolink.yaml").symlink_to(t / "fifo.hcl")
    d.start()
    # A scan that opened the FIFO or /dev/zero would block or never end: a good manifest running proves it did not.
    d.write("good.hcl", raw_job("good"))
    d.wait_state("good/g/0/t", "running")
    # A FIFO created while the daemon runs (an event, so a rescan) is skipped too.
    os.mkfifo(t / "late.hcl")
    d.write("good2.hcl", raw_job("good2"))
    d.wait_state("good2/g/0/t", "running")
    assert set(manifests(d)) == {str(t / "good.hcl"), str(t / "good2.hcl")}
    assert set(d.tasks()) == {"good/g/0/t", "good2/g/0/t"}
    assert_healthy(d)


def test_huge_sparse_and_binary_files_are_rejected_with_a_reason(daemon):
    d = daemon
    d.start()
    huge = d.write("huge.hcl", "# " + "x" * (1 << 20) + "\n" + raw_job("huge"))
    sparse = d.tasks_dir / "sparse.hcl"
    with open(sparse, "wb") as f:
        f.truncate(10 << 30)  # 10 GiB of nothing: refused by its size, never read
    garbage = d.tasks_dir / "garbage.yaml"
    garbage.write_bytes(bytes(random.Random(8).randrange(256) for _ in range(4096)) + b"\xff\xfe")
    d.write("good.hcl", raw_job("good"))
    for path in (huge, sparse):
        m = wait_manifest(d, path, "rejected")
        assert "bytes, more than" in m["errors"][0]["message"], m
    m = wait_manifest(d, garbage, "rejected")
    assert "UTF-8" in m["errors"][0]["message"], m
    d.wait_state("good/g/0/t", "running")
    assert set(d.tasks()) == {"good/g/0/t"}
    assert_healthy(d)


def test_manifest_rewritten_in_place_while_the_daemon_reads_it(daemon):
    d = daemon
    d.start()
    path = d.tasks_dir / "race.hcl"
    versions = iter(range(100000, 10 ** 9))
    rng = random.Random(3)

    def version(arg: int) -> bytes:
        # Padding in front so a read that catches the file half-written sees a torn job, not a shorter valid one.
        return ("# " + "x" * rng.randrange(0, 200_000) + "\n" + raw_job("race", args=[str(arg)])).encode()

    def writer(until: float) -> None:
        while time.monotonic() < until:
            data = version(next(versions))
            with open(path, "wb") as f:  # truncate, then write in pieces: in place, never atomic
                for i in range(0, len(data), 8192):
                    f.write(data[i:i + 8192])
                    f.flush()

    w = threading.Thread(target=writer, args=(time.monotonic() + scale(4, 30),))
    w.start()
    w.join()
    final_arg = next(versions)
    final = version(final_arg)
    with open(path, "wb") as f:
        f.write(final)
    wait_for(lambda: (m := manifests(d).get(str(path))) and m["content_hash"] == sha(final)
             and m["status"] == "applied", timeout=30, what="the final content applied")
    t = wait_for(lambda: (t := d.task("race/g/0/t")) and t["state"] == "running"
                 and t["pid"] and cmdline(t["pid"]) == ["/bin/sleep", str(final_arg)] and t, timeout=60,
                 what=f"the final version running (now {d.task('race/g/0/t')})")
    assert list(cgroups_now(d).values()) == [[t["pid"]]]  # one process, no leftover version
    print(f"rewrites: {final_arg - 100000}, restarts of the task: {t['restarts']}")
    assert_healthy(d)


def test_dotdot_in_names_is_rejected_and_nothing_is_created_outside_the_state_dir(daemon, tmp):
    d = daemon
    token = f"tasksd-escape-{uuid.uuid4().hex[:8]}"
    tricks = {
        "job.hcl": raw_job(f"../../{token}"),
        "dots.hcl": raw_job(".."),
        "group.hcl": raw_job("g1").replace('group "g"', f'group "../../../{token}"'),
        "task.hcl": raw_job("t1").replace('task "t"', f'task "../../../../{token}"'),
        "slash.hcl": raw_job(f"a/{token}"),
        "job.yaml": json.dumps({"job": {"name": f"../{token}", "group": [{"name": "g", "task": [
            {"name": "t", "driver": "raw_exec", "config": {"command": "/bin/sleep", "args": ["1000"]}}]}]}}),
        "tmpl.hcl": raw_job("t2", task_extra=f'template {{\n data = "x"\n destination = "../../../../{token}"\n }}'),
    }
    d.start()
    before = sorted(os.listdir(tmp))
    for name, text in tricks.items():
        d.write(name, text)
    for name in tricks:
        m = wait_manifest(d, d.tasks_dir / name, "rejected")
        # Refused for the name (or the destination), not by accident of some other field.
        assert any("must not" in e["message"] or "escapes" in e["message"] for e in m["errors"]), m
    assert d.tasks() == {}
    assert_healthy(d)
    assert sorted(os.listdir(tmp)) == before
    found = [os.path.join(r, n) for r, dirs, files in os.walk(tmp) for n in dirs + files if token in n]
    for above in (tmp.parent, tmp.parent.parent, Path("/")):
        found += [str(above / n) for n in os.listdir(above) if token in n]
    assert not found, found


def mounts_under(root: Path) -> list[str]:
    """Mount points below `root`, decoded (mountinfo escapes space, tab, newline and backslash as octal)."""
    with open("/proc/self/mountinfo") as f:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f]
    return [p for p in points if p.startswith(str(root) + "/")]


# Found by the fuzzer: remove_alloc matched mountinfo's octal-escaped mount points (a space is \040) against
# plain paths, so the tmpfs mounts of a task with a space in its name were never unmounted. "xy" is the control.
@pytest.mark.parametrize("task", ["xy", "x y", "back\\slash"])  # control characters are refused by name
def test_task_name_with_a_space_leaves_no_mounts_after_collection(daemon, task):
    d = daemon
    d.start()
    # It exits and is not restarted: the driver keeps its tmpfs mounts for a possible next run, so only the
    # alloc's GC (after the manifest goes) unmounts them.
    d.write("space.hcl", raw_job("space", command="/bin/false", args=[])
            .replace('task "t"', f"task {json.dumps(task)}")
            .replace('kill_timeout', 'restart {\n  attempts = 0\n  mode = "fail"\n}\n      kill_timeout'))
    d.wait_state(f"space/g/0/{task}", "failed")
    assert mounts_under(d.state_dir), "the failed task's mounts are kept until GC (the premise of this test)"
    (d.tasks_dir / "space.hcl").unlink()
    try:
        wait_for(lambda: not (d.state_dir / "alloc").exists() or not any((d.state_dir / "alloc").iterdir()),
                 timeout=15, what="the alloc collected")
    except AssertionError:
        pass  # a removal that fails on the busy mounts leaves the dir: the mount check below says why
    left = mounts_under(d.state_dir)
    for p in sorted(left, key=len, reverse=True):  # clean up what tasksd leaked, so the leak check stays quiet
        subprocess.run(["umount", "-l", p], check=False)
    assert not left, f"mounts left after GC: {left}"


def threads_in_fifo_open(pid: int) -> list[str]:
    """Threads of `pid` the kernel shows blocked in open() of a FIFO with no writer."""
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{t}/wchan").read_text() == "wait_for_partner":
                out.append(t)
        except OSError:
            continue
    return out


# Found by this test: the scanner checked S_ISREG with os.stat and then open()ed the path again, so a FIFO
# renamed over the file in between blocked the reconcile loop in open() forever.
def test_fifo_swapped_in_between_stat_and_open_does_not_hang_the_daemon(daemon, tmp):
    d = daemon
    d.start()
    fifo, regular = tmp / "fifo-master", tmp / "regular-master"
    os.mkfifo(fifo)
    regular.write_text(raw_job("swap"))
    os.chmod(regular, 0o644)
    target, staging = d.tasks_dir / "swap.hcl", d.tasks_dir / ".swap.tmp"  # dot names are not manifests
    until, swaps = time.monotonic() + scale(5, 30), 0
    try:
        # Rename a regular file and a FIFO over the same name in turns (each rename wakes a rescan).
        while time.monotonic() < until and not (swaps % 1000 == 0 and threads_in_fifo_open(d.proc.pid)):
            os.link(regular if swaps % 2 else fifo, staging)
            os.rename(staging, target)
            swaps += 1
        target.unlink()
        d.write("good.hcl", raw_job("good"))
        quick = Client(d.socket, timeout=2)  # a hung loop would hold the default client for 30 s per call

        def good_running() -> bool:
            try:
                return any(t["id"] == "good/g/0/t" and t["state"] == "running" for t in quick.get("/v1/tasks")["tasks"])
            except (ClientError, OSError):
                return False

        blocked = wait_for(lambda: threads_in_fifo_open(d.proc.pid) or (good_running() and ["none"]), timeout=30,
                           what="the daemon runs a new manifest or is seen blocked")
    finally:
        # Give any blocked open() its partner (then EOF), so the daemon can drain at teardown.
        for _ in range(3):
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
    print(f"{swaps} swaps; threads blocked opening the FIFO: {blocked}")
    assert blocked == ["none"], f"tasksd thread(s) {blocked} blocked in open() of a FIFO"
