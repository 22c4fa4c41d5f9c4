"""Task ids as operators type them: the canonical `job/group/index/task`, or a unique shortening. One rule for
the daemon's API and for tasksctl's offline status."""
from __future__ import annotations

from collections.abc import Iterable


def match_task_ids(ids: Iterable[str], ident: str) -> list[str]:
    """Ids that `ident` may mean: itself, trailing parts (`task`, `index/task`, `group/index/task`), `job/task`, or
    the job name alone when nothing else matches (a job running a single task instance)."""
    ids = list(ids)
    if ident in ids:
        return [ident]
    parts = ident.split("/")
    matches = [t for t in ids if t.split("/")[-len(parts):] == parts or
               (len(parts) == 2 and t.split("/")[0] == parts[0] and t.split("/")[3] == parts[1])]
    if not matches and len(parts) == 1:
        matches = [t for t in ids if t.split("/")[0] == parts[0]]
    return sorted(matches)
