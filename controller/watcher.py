"""Watch the tasks directory (not the files) and wake the controller, debounced (except for an event that
completes a manifest, which wakes at once).

Any event means "rescan the whole directory": the controller is level-triggered, so which file an event names does
not matter. That also covers events that never name the manifest (the ConfigMap `..data` symlink swap) and editor
droppings (the scanner filters names). A periodic resync in the controller covers lost events and inotify overflow.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from manifests.loader import is_manifest_name

try:
    # watchdog holds an unpaired IN_MOVED_FROM (a rename out of the directory) for 0.5 s to pair it with a
    # IN_MOVED_TO, and every later event waits behind it. We never pair moves (any event triggers a full rescan),
    # so that delay is pure latency: remove it for this process.
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    InotifyMoveEventGrouper.delay = 0.0
except ImportError:  # another watchdog version: correct anyway, only a rename out may be picked up later
    pass

_CHANGES = [FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent, FileModifiedEvent,
            DirModifiedEvent, FileMovedEvent, DirMovedEvent, FileClosedEvent]

DEBOUNCE = 0.005  # an editor's save is a burst of events within a millisecond or two


def _completes_a_manifest(event: FileSystemEvent) -> bool:
    """A rename onto a manifest name, or a writer closing a manifest: that file is whole now, so there is nothing
    to wait for. Temp files, `..data` symlink swaps and plain modifications are not (they wait for the debounce)."""
    if event.is_directory:
        return False
    if event.event_type == "moved":
        return is_manifest_name(os.fsdecode(event.dest_path))
    if event.event_type == "closed":
        return is_manifest_name(os.fsdecode(event.src_path))
    return False


class _Handler(FileSystemEventHandler):
    def __init__(self, fire: Callable[[bool], None]):
        self.fire = fire

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (our own scans) must not wake us
        self.fire(_completes_a_manifest(event))


class DirWatcher:
    def __init__(self, directory: str, wake: Callable[[], None], debounce: float = DEBOUNCE,
                 early: Callable[[], None] | None = None):
        """early: called at the first event of a burst, before the debounce (the runtime prepares for a start)."""
        self.directory = directory
        self.wake = wake
        self.early = early
        self.debounce = debounce
        self._timer: threading.Timer | None = None
        self._last_immediate = -1e9  # monotonic time of the last wake-up that skipped the debounce
        self._lock = threading.Lock()
        self._observer = Observer()

    def _fire(self, complete: bool = False) -> None:
        """Collapse a burst (an editor's save is 3-6 events) into one wake-up a few ms later, except that an event
        completing a manifest (see _completes_a_manifest) wakes at once: the debounce was a fixed 5 ms of every
        pick-up. At most one such immediate wake per debounce interval; the rest of a burst waits as before.
        The immediate rescan runs after every event so far, so a pending timer is cancelled with it."""
        now = time.monotonic()
        with self._lock:
            first = self._timer is None
            if complete and now - self._last_immediate >= self.debounce:
                self._last_immediate = now
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                immediate = True
            else:
                immediate = False
                if self._timer is None:
                    self._timer = threading.Timer(self.debounce, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
        if first and self.early is not None:
            self.early()
        if immediate:
            self.wake()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
        self.wake()

    def start(self) -> None:
        handler = _Handler(self._fire)
        try:
            # Changes only, asked of the kernel: without a filter inotify also queues an open and a close for
            # every file our own scans read (and for the directory each scan lists), and watchdog's thread wakes
            # to parse and drop each of them, taking the GIL from the scan that caused them.
            self._observer.schedule(handler, self.directory, recursive=False, event_filter=_CHANGES)
        except TypeError:  # a watchdog without event filters: the handler drops those events itself
            self._observer.schedule(handler, self.directory, recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(5)
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
