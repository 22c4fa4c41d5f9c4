"""Nomad-style example jobspecs (tests/corpus/, written for tasksd) load with warnings where they use cluster-only
features, and run unchanged on the real daemon."""
from __future__ import annotations

from pathlib import Path

import pytest

from isolation.taskdir import alloc_id_for
from manifests.loader import load_file
from tests.helpers import wait_for

CORPUS = Path(__file__).resolve().parents[1] / "corpus"

# file -> (cluster-only names it must warn about, {task id: final state}, {(group, index): {data file: content}})
EXPECT: dict[str, tuple[set[str], dict[str, str], dict]] = {
    "hello-batch.nomad": ({"datacenters"}, {"hello-batch/say/0/hello": "complete",
                                            "hello-batch/say/1/hello": "complete"},
                          {("say", 1): {"hello.txt": "hello from 1 on "}}),
    "web-exec.nomad": ({"datacenters", "update", "constraint", "service", "port"},
                       {"web-exec/web/0/server": "running"},
                       {("web", 0): {"served": "<h1>web-exec / SERVER</h1>"}}),
    "db-migrate.nomad": ({"reschedule", "vault"}, {"db-migrate/db/0/migrate": "complete",
                                                   "db-migrate/db/0/db": "running",
                                                   "db-migrate/db/0/announce": "complete"},
                         {("db", 0): {"role": "primary", "announced": "ready"}}),
    "cron-like.nomad": ({"periodic"}, {"cron-like/tick/0/tick": "complete"}, {("tick", 0): {"ticked": "tick"}}),
}


def test_every_corpus_file_is_covered():
    assert {p.name for p in CORPUS.glob("*.nomad")} == set(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_loads_with_cluster_only_warnings(name):
    result = load_file(CORPUS / name)
    assert result.valid, [p.message for p in result.errors]
    warned = " ".join(w.message for w in result.warnings)
    for feature in EXPECT[name][0]:
        assert f"{feature} is" in warned, (feature, warned)


@pytest.mark.root
@pytest.mark.slow
def test_corpus_runs_on_the_daemon(daemon):
    daemon.start()
    for name, (_, states, files) in EXPECT.items():
        # One file at a time: a burst of short tasks starting together sometimes never reports an exit (a
        # launcher race reported separately); this test is about the jobspecs, not that race.
        daemon.write(name, (CORPUS / name).read_text())
        for tid, state in states.items():
            daemon.wait_state(tid, state, timeout=60)
        job = next(iter(states)).split("/")[0]
        for (group, index), wanted in files.items():
            data = daemon.state_dir / "alloc" / alloc_id_for(job, group, index) / "alloc" / "data"
            for fname, prefix in wanted.items():
                path = data / fname
                text = wait_for(lambda: path.exists() and path.read_text(), what=f"{name}: {fname}")
                assert text.startswith(prefix), (name, fname, text)
    assert not [m for m in daemon.client.get("/v1/manifests") if m["status"] != "applied"]
