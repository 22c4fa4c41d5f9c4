"""Watch the tasks directory (not the files) and wake the controller, debounced.

Any event means "rescan the whole directory": the controller is level-triggered, so which file an event names does
not matter. That also covers events that never name the manifest (the ConfigMap `..data` symlink swap) and editor
droppings (the scanner filters names). A periodic resync in the controller covers lost events and inotify overflow.
"""
from __future__ import annotations

import threading
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


class _Handler(FileSystemEventHandler):
    def __init__(self, fire: Callable[[], None]):
        self.fire = fire

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (our own scans) must not wake us
        self.fire()


class DirWatcher:
    def __init__(self, directory: str, wake: Callable[[], None], debounce: float = DEBOUNCE,
                 early: Callable[[], None] | None = None):
        """early: called at the first event of a burst, before the debounce (the runtime prepares for a start)."""
        self.directory = directory
        self.wake = wake
        self.early = early
        self.debounce = debounce
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._observer = Observer()

    def _fire(self) -> None:
        # Collapse a burst (an editor's save is 3-6 events) into one wake-up a few ms later.
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self.debounce, self._flush)
            self._timer.daemon = True
            self._timer.start()
        if self.early is not None:
            self.early()

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
