"""RotatingLog and read_tail on a real filesystem (a tmpfs for the full-disk case)."""
from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isolation.logs import RotatingLog, log_files, read_tail
from tests.conftest import TMP_PREFIX

BASE = "web.stdout"


def contents(d: Path, base: str = BASE) -> list[bytes]:
    """The stream's files oldest first, active last."""
    return [p.read_bytes() for p in log_files(d, base)]


def names(d: Path) -> set[str]:
    return set(os.listdir(d))


# ---- rotation ------------------------------------------------------------------------------------------------


def test_rotation_keeps_max_files_and_the_active_name(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=3, max_file_size=20) as log:
        for i in range(50):
            log.write(b"line %03d\n" % i)  # 9 bytes: two lines per file
    assert names(tmp) == {BASE, BASE + ".1", BASE + ".2"}
    assert (tmp / BASE).read_bytes() == b"line 048\nline 049\n"
    assert (tmp / (BASE + ".1")).read_bytes() == b"line 046\nline 047\n"
    assert (tmp / (BASE + ".2")).read_bytes() == b"line 044\nline 045\n"


def test_rotation_renames_the_active_file_so_tail_F_follows_the_name(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=2, max_file_size=10) as log:
        log.write(b"12345678\n")
        before = os.stat(tmp / BASE).st_ino
        log.write(b"abc\n")
        # The old active file moved to .1 (same inode) and a new file took the stable name.
        assert os.stat(tmp / (BASE + ".1")).st_ino == before
        assert os.stat(tmp / BASE).st_ino != before
        assert (tmp / BASE).read_bytes() == b"abc\n"
        assert log.rotations == 1


def test_max_files_one_keeps_only_the_active_file(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=1, max_file_size=8) as log:
        for i in range(5):
            log.write(b"line %d\n" % i)
    assert names(tmp) == {BASE}
    assert (tmp / BASE).read_bytes() == b"line 4\n"


def test_a_line_that_does_not_fit_starts_the_next_file(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=5, max_file_size=10) as log:
        log.write(b"aaaaaa\nbbbbbb\n")  # the second line would cross the limit: it goes to a fresh file whole
    assert contents(tmp) == [b"aaaaaa\n", b"bbbbbb\n"]


def test_a_line_begun_below_the_limit_is_finished_in_the_same_file(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=5, max_file_size=10) as log:
        log.write(b"aaaaaa")  # fits: written at once, so a reader sees it
        assert (tmp / BASE).read_bytes() == b"aaaaaa"
        log.write(b"aaaaaa\nb")  # the line must not be split: the file grows past the limit, then rotates
    assert contents(tmp) == [b"aaaaaaaaaaaa\n", b"b"]


def test_a_line_longer_than_the_limit_is_split_only_past_twice_the_limit(tmp: Path) -> None:
    line = b"x" * 45 + b"\n"
    with RotatingLog(tmp, BASE, max_files=10, max_file_size=10) as log:
        log.write(b"ok\n")
        for i in range(0, len(line), 7):
            log.write(line[i:i + 7])
        log.write(b"next\n")
    files = contents(tmp)
    assert b"".join(files) == b"ok\n" + line + b"next\n"
    assert [len(f) for f in files[:-1]] == [20, 20, 9]  # split at 2 x limit, then the tail of the line
    assert files[-1] == b"next\n"


def test_a_whole_long_line_in_one_chunk_fills_a_fresh_file_up_to_twice_the_limit(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=10, max_file_size=10) as log:
        log.write(b"a\n" + b"y" * 15 + b"\n" + b"z\n")
    assert contents(tmp) == [b"a\n", b"y" * 15 + b"\n", b"z\n"]


def test_memoryview_and_bytearray_input(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=2, max_file_size=100) as log:
        log.write(memoryview(b"one\n"))
        log.write(bytearray(b"two\n"))
        log.write(b"")
    assert (tmp / BASE).read_bytes() == b"one\ntwo\n"


lines_st = st.lists(st.binary(max_size=24).map(lambda b: b.replace(b"\n", b"_")), max_size=60)


def _chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=lines_st,
    partial=st.binary(max_size=10).map(lambda b: b.replace(b"\n", b"_")),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    max_files=st.integers(min_value=1, max_value=4),
    max_file_size=st.integers(min_value=25, max_value=80),
)
def test_property_never_splits_a_line_and_keeps_a_suffix(
    lines: list[bytes], partial: bytes, cuts: list[int], max_files: int, max_file_size: int
) -> None:
    # Every line (newline included) is at most max_file_size long, so none may be split.
    data = b"".join(line + b"\n" for line in lines) + partial
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as d:
        with RotatingLog(Path(d), BASE, max_files, max_file_size) as log:
            for chunk in _chunk(data, cuts):
                log.write(chunk)
            assert log.dropped_bytes == 0
        files = contents(Path(d))
    assert 1 <= len(files) <= max_files
    kept = b"".join(files)
    assert data.endswith(kept)
    dropped = data[: len(data) - len(kept)]
    assert dropped == b"" or dropped.endswith(b"\n")  # whole files dropped: the cut is a line boundary
    for f in files[:-1]:
        assert f.endswith(b"\n")
        last_line_start = f.rfind(b"\n", 0, len(f) - 1) + 1
        assert last_line_start < max_file_size  # grew past the limit only to finish a line begun below it


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.binary(max_size=70).map(lambda b: b.replace(b"\n", b"_")), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    max_file_size=st.integers(min_value=1, max_value=30),
)
def test_property_all_output_kept_and_rotation_only_when_needed(
    lines: list[bytes], cuts: list[int], max_file_size: int
) -> None:
    # Lines may be longer than the limit here: they may be split, but only at exactly 2 x max_file_size.
    data = b"".join(line + b"\n" for line in lines)
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as d:
        with RotatingLog(Path(d), BASE, 10_000, max_file_size) as log:
            for chunk in _chunk(data, cuts):
                log.write(chunk)
        files = contents(Path(d))
    assert b"".join(files) == data
    for i, f in enumerate(files[:-1]):
        assert len(f) <= 2 * max_file_size
        if not f.endswith(b"\n"):
            assert len(f) == 2 * max_file_size  # a split line
        else:
            nxt = files[i + 1]
            first_line = nxt[: nxt.find(b"\n") + 1] if b"\n" in nxt else nxt
            assert len(f) + len(first_line) > max_file_size  # it really did not fit


# ---- reopening and external changes ---------------------------------------------------------------------------


def test_reopen_continues_the_active_file_and_its_open_line(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=3, max_file_size=10) as log:
        log.write(b"abc\nde")
    with RotatingLog(tmp, BASE, max_files=3, max_file_size=10) as log:
        assert log.size == 6
        log.write(b"fghij\nk")  # "de" + "fghij\n" is one line begun in this file: it is finished here
    assert contents(tmp) == [b"abc\ndefghij\n", b"k"]


def test_reopen_of_a_full_file_rotates_before_the_next_line(tmp: Path) -> None:
    (tmp / BASE).write_bytes(b"0123456789\n")
    with RotatingLog(tmp, BASE, max_files=3, max_file_size=10) as log:
        assert log.size == 11
        log.write(b"new\n")
    assert contents(tmp) == [b"0123456789\n", b"new\n"]


def test_reopen_prunes_files_beyond_a_lowered_max_files(tmp: Path) -> None:
    for k in range(1, 6):
        (tmp / f"{BASE}.{k}").write_bytes(b"old %d\n" % k)
    (tmp / f"{BASE}.backup").write_bytes(b"not ours\n")
    with RotatingLog(tmp, BASE, max_files=3, max_file_size=10):
        pass
    assert names(tmp) == {BASE, BASE + ".1", BASE + ".2", BASE + ".backup"}


def test_active_file_deleted_externally_is_recreated(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=3, max_file_size=100) as log:
        log.write(b"before\n")
        os.unlink(tmp / BASE)
        log.write(b"after\n")
        assert (tmp / BASE).read_bytes() == b"after\n"
        assert log.size == 6


def test_a_released_log_reopens_where_it_left_off(tmp: Path) -> None:
    """The launcher releases the descriptors of quiet logs; the next output must land as if it never had: same
    file, an unfinished line finished, and rotation still at line boundaries with the size counted right."""
    with RotatingLog(tmp, BASE, max_files=3, max_file_size=10) as log:
        log.write(b"abc")
        log.release()
        assert not log.is_open and log.size == 3
        log.write(b"def\n")
        assert log.is_open and (tmp / BASE).read_bytes() == b"abcdef\n"
        log.release()
        log.write(b"0123456789\n")  # does not fit after 7 bytes: rotates at the line boundary
        log.release()
        log.write(b"x\n")  # the 11-byte line filled that file: rotates again
        assert contents(tmp) == [b"abcdef\n", b"0123456789\n", b"x\n"]
        assert log.size == 2


def test_a_planted_symlink_is_not_followed_and_nothing_raises(tmp: Path) -> None:
    target = tmp / "victim"
    target.write_bytes(b"precious\n")
    os.symlink(target, tmp / BASE)
    log = RotatingLog(tmp, BASE, max_files=2, max_file_size=100)
    log.write(b"attack\n")
    log.close()
    assert target.read_bytes() == b"precious\n"
    assert log.dropped_bytes == 7
    assert log.last_errno == errno.ELOOP


def test_a_log_dir_swapped_for_a_symlink_is_not_followed(tmp: Path) -> None:
    # A task that may rename in /alloc (root in its chroot) swaps alloc/logs for a link to a host directory after
    # the writer opened its file, then deletes the file so the writer reopens it: nothing lands in the target.
    logs, outside, moved = tmp / "logs", tmp / "outside", tmp / "moved"
    logs.mkdir()
    outside.mkdir()
    log = RotatingLog(logs, BASE, max_files=2, max_file_size=10)
    log.write(b"first\n")
    logs.rename(moved)
    (moved / BASE).unlink()
    logs.symlink_to(outside)
    for _ in range(5):
        log.write(b"line into a rotation\n")
    log.close()
    assert os.listdir(outside) == [] and log.dropped_bytes > 0


def test_a_fifo_planted_as_the_log_does_not_hang_the_writer(tmp: Path) -> None:
    os.mkfifo(tmp / BASE)
    log = RotatingLog(tmp, BASE, max_files=1, max_file_size=100)  # no reader: a blocking open would hang here
    log.write(b"x\n")
    log.close()
    assert log.dropped_bytes == 2


def test_close_is_idempotent_and_write_after_close_is_an_error(tmp: Path) -> None:
    log = RotatingLog(tmp, BASE, max_files=2, max_file_size=100)
    log.write(b"x\n")
    log.flush()
    log.close()
    log.close()
    with pytest.raises(ValueError):
        log.write(b"y\n")
    assert (tmp / BASE).read_bytes() == b"x\n"


@pytest.mark.parametrize("kwargs", [{"max_files": 0}, {"max_file_size": 0}, {"base": "a/b"}, {"base": ""}])
def test_bad_arguments_are_refused(tmp: Path, kwargs: dict) -> None:
    args = {"dir": tmp, "base": BASE, "max_files": 2, "max_file_size": 10} | kwargs
    with pytest.raises(ValueError):
        RotatingLog(**args)


@pytest.mark.root
def test_full_disk_drops_and_counts_then_recovers(tmp: Path) -> None:
    mnt = tmp / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tasksd-test", str(mnt)], check=True)
    try:
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the filesystem up to its last byte
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        total = 0
        with RotatingLog(mnt, BASE, max_files=2, max_file_size=1 << 20) as log:
            for i in range(200):
                chunk = b"line %05d %s\n" % (i, b"z" * 90)
                log.write(chunk)  # must not raise
                total += len(chunk)
            assert log.last_errno == errno.ENOSPC
            assert log.dropped_bytes > 0
            on_disk = (mnt / BASE).stat().st_size
            assert on_disk + log.dropped_bytes == total
            filler.unlink()
            log.write(b"room again\n")
            assert (mnt / BASE).read_bytes().endswith(b"room again\n")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---- read_tail -------------------------------------------------------------------------------------------------


def test_read_tail_across_rotated_files_newest_last(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=4, max_file_size=20) as log:
        for i in range(8):
            log.write(b"line %d\n" % i)  # 7 bytes: two lines per file
    assert len(log_files(tmp, BASE)) == 4
    assert read_tail(tmp, BASE, 3) == [b"line 5\n", b"line 6\n", b"line 7\n"]
    assert read_tail(tmp, BASE, 100) == [b"line %d\n" % i for i in range(8)]
    assert read_tail(tmp, BASE, 0) == []


def test_read_tail_small_blocks_and_a_partial_last_line(tmp: Path) -> None:
    with RotatingLog(tmp, BASE, max_files=10, max_file_size=16) as log:
        log.write(b"alpha\nbeta\ngamma\ndelta\nepsil")
    assert read_tail(tmp, BASE, 2, block_size=3) == [b"delta\n", b"epsil"]
    assert read_tail(tmp, BASE, 5, block_size=3) == [b"alpha\n", b"beta\n", b"gamma\n", b"delta\n", b"epsil"]


def test_read_tail_joins_a_split_line(tmp: Path) -> None:
    long = b"q" * 50 + b"\n"
    with RotatingLog(tmp, BASE, max_files=10, max_file_size=10) as log:
        log.write(b"first\n" + long + b"last\n")
    assert len(log_files(tmp, BASE)) > 2
    assert read_tail(tmp, BASE, 2) == [long, b"last\n"]


def test_read_tail_of_a_missing_stream_is_empty(tmp: Path) -> None:
    assert read_tail(tmp, "nothing.stderr", 5) == []
    assert read_tail(tmp / "no-such-dir", BASE, 5) == []


def test_a_line_written_between_the_tail_and_the_follow_is_sent_once(tmp_path):
    """`tasksctl logs -f -n 1`: the tail is sent, then the file is followed. A line the task wrote in between
    was lost when the follower opened the file at its end only after sending the tail (a flaky e2e test)."""
    from controller.logread import follow_log, open_active, read_log

    (tmp_path / "t.stdout").write_bytes(b"one\ntwo\n")
    start = open_active(tmp_path, "t.stdout")
    end = start.tell()
    with open(tmp_path / "t.stdout", "ab") as f:
        f.write(b"three\n")  # the task writes while the tail is on its way
    assert b"".join(read_log(tmp_path, "t.stdout", 1, active_end=end)) == b"two\n"
    assert b"".join(read_log(tmp_path, "t.stdout", -1, active_end=end)) == b"one\ntwo\n"
    chunks = follow_log(tmp_path, "t.stdout", lambda: False, start)
    assert next(chunks) == b"three\n"
    chunks.close()
    assert start.closed


def test_a_whole_log_is_read_in_bounded_chunks_up_to_its_size_when_opened(tmp_path):
    """`tasksctl logs` without -n: the daemon streams the active file, never holding it whole (it can be as big as
    max_file_size), and a task writing all the while cannot keep the reader going past what was there."""
    from controller import logread

    data = b"".join(b"line %06d\n" % i for i in range(30000))  # ~360 KB: several chunks
    path = tmp_path / "t.stdout"
    path.write_bytes(data)
    chunks = logread.read_log(tmp_path, "t.stdout", -1)
    first = next(chunks)
    with open(path, "ab") as f:
        f.write(b"written while reading\n" * 10000)
    rest = list(chunks)
    assert all(len(c) <= logread.CHUNK for c in [first, *rest]) and rest
    assert first + b"".join(rest) == data


# ---- following (tasksctl logs -f) -----------------------------------------------------------------------------


class _Clock:
    """Stands in for logread's `time`: records the fallback's sleeps, runs `on_sleep` at each (the test's writer)."""

    def __init__(self, on_sleep=None) -> None:
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep()


def _spy_select(monkeypatch, logread):
    """Records the timeout of every select the follower makes; `waiting` is set once it sleeps in one."""
    import select as real
    import threading
    from types import SimpleNamespace

    timeouts: list[tuple] = []
    waiting = threading.Event()

    def spy(r, w, x, *timeout):
        timeouts.append(timeout)
        waiting.set()
        return real.select(r, w, x, *timeout)

    monkeypatch.setattr(logread, "select", SimpleNamespace(select=spy))
    return timeouts, waiting


def test_a_log_follower_sleeps_on_inotify_until_the_task_writes_and_follows_a_rotation(tmp_path, monkeypatch):
    """No timer between reads: the follower wakes when the log directory changes (a write, a rotation)."""
    import threading

    from controller import logread

    clock = _Clock()
    monkeypatch.setattr(logread, "time", clock)
    timeouts, waiting = _spy_select(monkeypatch, logread)
    active = tmp_path / "t.stdout"
    active.write_bytes(b"old\n")
    chunks = logread.follow_log(tmp_path, "t.stdout", lambda: False, logread.open_active(tmp_path, "t.stdout"))

    def once_waiting(act) -> threading.Thread:
        waiting.clear()
        t = threading.Thread(target=lambda: waiting.wait(30) and act())
        t.start()
        return t

    def append(data: bytes) -> None:
        with open(active, "ab") as f:
            f.write(data)

    def rotate() -> None:  # as RotatingLog does: the active file renamed away, then a new one
        os.rename(active, tmp_path / "t.stdout.1")
        active.write_bytes(b"two\n")

    try:
        assert next(chunks) == b""  # nothing new yet; the next turn sleeps
        writer = once_waiting(lambda: append(b"one\n"))
        assert next(chunks) == b"one\n"
        writer.join()
        assert timeouts == [()], "the follower's sleep had a timeout"
        assert clock.sleeps == [], "the follower slept on the clock with inotify available"
        assert next(chunks) == b""
        writer = once_waiting(rotate)
        got = b""
        while got != b"two\n":  # the rename and the new file may wake it more than once
            got += next(chunks)
        writer.join()
    finally:
        chunks.close()
    # A follower that looked between the rename and the new file went by the clock (FOLLOW_INTERVAL) meanwhile.
    assert all(s == logread.FOLLOW_INTERVAL for s in clock.sleeps), clock.sleeps


def test_a_log_follower_ends_when_its_client_hangs_up_without_waiting_for_a_write(tmp_path, monkeypatch):
    import socket

    from controller import logread

    monkeypatch.setattr(logread, "time", _Clock(on_sleep=lambda: pytest.fail("slept on the clock")))
    (tmp_path / "t.stdout").write_bytes(b"")
    ours, client = socket.socketpair()
    try:
        def gone() -> bool:
            try:
                return ours.recv(16, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return False

        chunks = logread.follow_log(tmp_path, "t.stdout", gone, logread.open_active(tmp_path, "t.stdout"),
                                    client_fd=ours.fileno())
        assert next(chunks) == b""
        client.close()
        assert list(chunks) == []  # the hang-up woke it, and it ended
    finally:
        ours.close()
        client.close()


def test_a_log_follower_without_inotify_reads_by_the_clock(tmp_path, monkeypatch):
    """No inotify instance left (fs.inotify.max_user_instances): it still follows, every FOLLOW_INTERVAL."""
    from controller import logread

    def refuse(path, mask):
        raise OSError(errno.EMFILE, "inotify_init1: Too many open files")

    monkeypatch.setattr(logread.ksys, "inotify_watch_dir", refuse)
    active = tmp_path / "t.stdout"
    active.write_bytes(b"")

    def write() -> None:
        with open(active, "ab") as f:
            f.write(b"late\n")

    clock = _Clock(on_sleep=write)
    monkeypatch.setattr(logread, "time", clock)
    chunks = logread.follow_log(tmp_path, "t.stdout", lambda: False, logread.open_active(tmp_path, "t.stdout"))
    try:
        assert next(chunks) == b""
        assert next(chunks) == b"late\n"
    finally:
        chunks.close()
    assert clock.sleeps == [logread.FOLLOW_INTERVAL]


def test_a_log_follower_whose_directory_is_removed_keeps_looking_by_the_clock(tmp_path, monkeypatch):
    """An alloc's log directory removed under a follower (GC): the watch is gone with it; the follower goes on
    by the clock and picks the stream up again when it comes back."""
    import shutil

    from controller import logread

    logdir = tmp_path / "logs"
    logdir.mkdir()
    (logdir / "t.stdout").write_bytes(b"")

    def come_back() -> None:
        if not logdir.exists():
            logdir.mkdir()
            (logdir / "t.stdout").write_bytes(b"back\n")

    clock = _Clock(on_sleep=come_back)
    monkeypatch.setattr(logread, "time", clock)
    chunks = logread.follow_log(logdir, "t.stdout", lambda: False, logread.open_active(logdir, "t.stdout"))
    try:
        assert next(chunks) == b""
        shutil.rmtree(logdir)
        got = b""
        while b"back\n" not in got:
            got += next(chunks)
    finally:
        chunks.close()
    assert clock.sleeps, "the follower never fell back to the clock"


def _inotify_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except FileNotFoundError:
            pass  # the listing's own descriptor, closed by now
    return n


def test_only_a_few_log_followers_hold_an_inotify_instance_the_rest_go_by_the_clock(tmp_path, monkeypatch):
    """root's inotify instances are shared with the whole host (systemd, udev): 128 API connections following
    logs must not take them all. Past MAX_WATCHING_FOLLOWERS a follower reads by the clock, and a slot that
    frees up is used again."""
    from controller import logread

    monkeypatch.setattr(logread, "time", _Clock())
    (tmp_path / "t.stdout").write_bytes(b"")
    n = logread.MAX_WATCHING_FOLLOWERS
    before = _inotify_fds()
    followers = [logread.follow_log(tmp_path, "t.stdout", lambda: False) for _ in range(n + 2)]
    try:
        for f in followers:
            assert next(f) == b""
        assert _inotify_fds() - before == n
        followers.pop(0).close()
        late = logread.follow_log(tmp_path, "t.stdout", lambda: False)
        followers.append(late)
        assert next(late) == b""
        assert _inotify_fds() - before == n
    finally:
        for f in followers:
            f.close()
    assert _inotify_fds() == before
