"""The environment a task gets: denied_envvars globs and Nomad's precedence (pure logic, no root)."""
from __future__ import annotations

import fnmatch
import os

from hypothesis import given, strategies as st

from isolation.taskenv import build_env, denied

_NAME = st.text(alphabet="ABXYZ_*?[]!9", min_size=0, max_size=8)


@given(name=st.text(alphabet="ABXYZ_9", max_size=8), patterns=st.lists(_NAME, max_size=4))
def test_denied_is_fnmatchcase_of_any_pattern(name, patterns):
    """One compiled regex for all globs must answer exactly what fnmatchcase per pattern answers."""
    assert denied(name, tuple(patterns)) == any(fnmatch.fnmatchcase(name, p) for p in patterns)


def test_denied_globs_are_case_sensitive_and_anchored():
    assert denied("AWS_SECRET", ("AWS_*",))
    assert not denied("aws_secret", ("AWS_*",))
    assert not denied("MY_AWS_SECRET", ("AWS_*",))  # anchored at the start
    assert not denied("AWS", ("AWS_*",))
    assert not denied("PATH", ())


def test_precedence_and_denial():
    env = build_env(
        builtins={"NOMAD_TASK_NAME": "t", "NOMAD_JOB_NAME": "j"},
        meta={"team": "a"},
        task_env={"GREETING": "hi ${NOMAD_TASK_NAME} on ${node.unique.name} ${HOME}", "TOKEN_X": "set by task",
                  "NOMAD_JOB_NAME": "overridden"},
        host_env={"HOME": "/root", "TOKEN_HOST": "secret", "LD_PRELOAD": "x.so"},
        denied_envvars=("TOKEN_*",), node_attrs={"node.unique.name": "n1"}, drop=("LD_*",))
    assert env["GREETING"] == "hi t on n1 /root"
    assert env["NOMAD_META_team"] == env["NOMAD_META_TEAM"] == "a"
    assert env["NOMAD_JOB_NAME"] == "overridden"  # the task's env wins over built-ins
    # Denied and dropped names are gone wherever they came from, the task's own env included.
    assert "TOKEN_HOST" not in env and "TOKEN_X" not in env and "LD_PRELOAD" not in env
    assert env["HOME"] == "/root"


def test_host_environ_is_a_copy_that_follows_every_change_of_os_environ(monkeypatch):
    from isolation.taskenv import host_environ

    assert host_environ() == dict(os.environ)
    monkeypatch.setenv("TASKSD_TEST_HOSTENV", "1")
    assert host_environ()["TASKSD_TEST_HOSTENV"] == "1"
    monkeypatch.setenv("TASKSD_TEST_HOSTENV", "2")  # same keys, another value: not the cached copy
    assert host_environ()["TASKSD_TEST_HOSTENV"] == "2"
    monkeypatch.delenv("TASKSD_TEST_HOSTENV")
    assert "TASKSD_TEST_HOSTENV" not in host_environ()
    mine = host_environ()
    mine["TASKSD_TEST_HOSTENV"] = "mutated"
    assert "TASKSD_TEST_HOSTENV" not in host_environ()  # callers get their own dict
