"""Every validation rule with a good and a bad case, through the real parser (HCL) and decoder."""
from __future__ import annotations

import pytest

from manifests.loader import load_text

BASE = """
job "j" {{
  {job}
  group "g" {{
    {group}
    task "t" {{
      driver = "{driver}"
      config {{
        command = "/bin/true"
        {config}
      }}
      {task}
    }}
  }}
}}
"""


def load(job="", group="", task="", config="", driver="exec"):
    return load_text(BASE.format(job=job, group=group, task=task, config=config, driver=driver), "t.hcl")


# (id, fragment kwargs that are valid, fragment kwargs that are not, text expected in the error)
RULES = [
    ("driver", dict(driver="raw_exec"), dict(driver="docker"), "driver 'docker' is not supported by tasksd"),
    ("driver-typo", dict(driver="exec2"), dict(driver="exec3"), "did you mean"),
    ("args", dict(config='args = ["a", 1]'), dict(config='args = [["a"]]'), "args[0] must be a string"),
    ("args-list", dict(config='args = ["a"]'), dict(config='args = "a b"'), "args must be a list of strings"),
    ("pid_mode", dict(config='pid_mode = "host"'), dict(config='pid_mode = "shared"'), "pid_mode must be one of"),
    ("ipc_mode", dict(config='ipc_mode = "private"'), dict(config='ipc_mode = "x"'), "ipc_mode must be one of"),
    ("cap_add", dict(config='cap_add = ["CAP_NET_ADMIN", "sys_time", "ALL"]'), dict(config='cap_add = ["net_admn"]'),
     "unknown capability 'net_admn'"),
    ("cap_drop", dict(config='cap_drop = ["all"]'), dict(config='cap_drop = ["CAP_NOPE"]'), "unknown capability"),
    ("work_dir", dict(config='work_dir = "/srv"'), dict(config='work_dir = "srv"'), "work_dir must be an absolute"),
    ("oom_score_adj", dict(config="oom_score_adj = 500"), dict(config="oom_score_adj = -5"), "oom_score_adj must be"),
    ("pids_limit", dict(config="pids_limit = 64"), dict(config="pids_limit = 0"), "pids_limit must be at least 1"),
    ("unveil", dict(driver="exec2", config='unveil = ["rwc:/tmp/x", "rx:/usr/bin"]'),
     dict(driver="exec2", config='unveil = ["q:/etc"]'), "modes must be a non-empty combination"),
    ("unveil-empty-modes", dict(driver="exec2", config='unveil = ["x:/bin"]'),
     dict(driver="exec2", config='unveil = [":/etc"]'), "modes must be a non-empty"),
    ("unveil-relative", dict(driver="exec2", config='unveil = ["r:/etc"]'),
     dict(driver="exec2", config='unveil = ["r:etc"]'), "path must be absolute"),
    ("unveil-no-sep", dict(driver="exec2", config='unveil = ["r:/etc"]'),
     dict(driver="exec2", config='unveil = ["/etc"]'), "must look like MODES:PATH"),
    ("memory", dict(task="resources { memory = 10 }"), dict(task="resources { memory = 9 }"),
     "memory must be at least 10 MB"),
    ("memory_max", dict(task="resources {\n memory = 100\n memory_max = 100\n}"),
     dict(task="resources {\n memory = 100\n memory_max = 99\n}"), "memory_max (99 MB) must be >= memory"),
    ("memory_max-unlimited", dict(task="resources { memory_max = -1 }"), dict(task="resources { memory_max = -2 }"),
     "memory_max must be -1"),
    ("cpu-cores", dict(task="resources { cores = 2 }"), dict(task="resources {\n cores = 2\n cpu = 500\n}"),
     "set cpu or cores, not both"),
    ("restart-mode", dict(task='restart { mode = "delay" }'), dict(task='restart { mode = "retry" }'),
     "mode must be one of fail, delay"),
    ("restart-interval", dict(task='restart {\n interval = "5s"\n delay = "1s"\n}'),
     dict(task='restart {\n interval = "4s"\n delay = "1s"\n}'), "interval must be at least 5s"),
    ("restart-attempts-delay", dict(task='restart {\n attempts = 2\n delay = "15s"\n interval = "30s"\n}'),
     dict(task='restart {\n attempts = 3\n delay = "15s"\n interval = "30s"\n}'), "must not exceed interval"),
    ("restart-zero-attempts", dict(task='restart {\n attempts = 0\n mode = "fail"\n}'),
     dict(task='restart {\n attempts = 0\n mode = "delay"\n}'), 'attempts = 0 is only valid with mode = "fail"'),
    ("duration", dict(task='kill_timeout = "1m30s"'), dict(task='kill_timeout = "90 seconds"'), "invalid duration"),
    ("duration-unit", dict(task='kill_timeout = "250ms"'), dict(task='kill_timeout = "30"'), "lacks a unit"),
    ("kill_timeout-negative", dict(task='kill_timeout = "0s"'), dict(task='kill_timeout = "-1s"'),
     "must not be negative"),
    ("signal", dict(task='kill_signal = "hup"'), dict(task='kill_signal = "SIGFOO"'), "unknown signal"),
    ("count", dict(group="count = 0"), dict(group="count = -1"), "count must be >= 0"),
    ("count-type", dict(group='count = "3"'), dict(group='count = "three"'), "count must be a whole number"),
    ("job-type", dict(job='type = "batch"'), dict(job='type = "daemon"'), "type must be service or batch"),
    ("logs", dict(task="logs { max_files = 1 }"), dict(task="logs { max_files = 0 }"), "max_files must be at least 1"),
    ("logs-size", dict(task="logs { max_file_size = 1 }"), dict(task="logs { max_file_size = 0 }"),
     "max_file_size must be at least 1"),
    ("lifecycle", dict(task='lifecycle { hook = "poststop" }'), dict(task='lifecycle { hook = "later" }'),
     "hook must be one of"),
    ("network", dict(group='network { mode = "none" }'), dict(group='network { mode = "overlay" }'),
     "network mode must be one of"),
    ("artifact-source", dict(task='artifact { source = "https://x/y.tgz" }'), dict(task='artifact { mode = "file" }'),
     "source is required"),
    ("artifact-destination", dict(task='artifact {\n source = "https://x"\n destination = "../alloc/data"\n}'),
     dict(task='artifact {\n source = "https://x"\n destination = "../../etc"\n}'), "escapes the allocation"),
    ("artifact-checksum",
     dict(task='artifact {\n source = "https://x"\n options { checksum = "md5:d41d8cd98f00b204e9800998ecf8427e" }\n}'),
     dict(task='artifact {\n source = "https://x"\n options { checksum = "md5:abc" }\n}'), "32 hex digits"),
    ("template-data", dict(task='template {\n data = "x"\n destination = "local/x"\n}'),
     dict(task='template { destination = "local/x" }'), "needs data or source"),
    ("template-signal",
     dict(task='template {\n data = "x"\n destination = "local/x"\n change_mode = "signal"\n change_signal = "usr1"\n}'),
     dict(task='template {\n data = "x"\n destination = "local/x"\n change_mode = "signal"\n}'),
     "needs change_signal"),
    ("template-perms", dict(task='template {\n data = "x"\n destination = "local/x"\n perms = "600"\n}'),
     dict(task='template {\n data = "x"\n destination = "local/x"\n perms = "rw"\n}'), "perms must be an octal"),
    ("mount", dict(config='mount {\n source = "/srv"\n target = "/data"\n}'),
     dict(config='mount {\n source = "srv"\n target = "/data"\n}'), "source must be an absolute path"),
    ("unknown-attr", dict(task='user = "nobody"'), dict(task='usr = "nobody"'), "unknown attribute 'usr' (did you mean 'user'?)"),
    ("unknown-block", dict(task="resources { memory = 64 }"), dict(task="resource { memory = 64 }"),
     "unknown block 'resource' (did you mean 'resources'?)"),
    ("block-as-attr", dict(task="env = { A = \"1\" }"), dict(task="resources = { memory = 64 }"),
     "resources is a block"),
    ("single-block", dict(task="resources { memory = 64 }"), dict(task="resources { memory = 64 }\nresources {}"),
     "only one resources block"),
    ("leader", dict(task="leader = true"), dict(task='leader = "maybe"'), "leader must be true or false"),
    ("env-values", dict(task='env { A = 1 }'), dict(task='env = { A = ["x"] }'), "env.A must be a string"),
    ("env-name", dict(task='env = { "A_B" = "x" }'), dict(task='env = { "A=B" = "x" }'),
     "must be non-empty and contain no '='"),
    ("env-nul", dict(task='env = { A = "x" }'), dict(task='env = { A = "x\\u0000y" }'), "contains a NUL byte"),
]


@pytest.mark.parametrize("good,bad,expected", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule(good, bad, expected):
    ok = load(**good)
    assert ok.valid, [p.format("t.hcl") for p in ok.errors]
    assert ok.jobs
    broken = load(**bad)
    assert not broken.valid
    assert broken.jobs == ()
    messages = [p.message for p in broken.errors]
    assert any(expected in m for m in messages), messages


@pytest.mark.parametrize("bad", ["a/b", "..", ".hidden", "x..y", "a\\u0000b", "x" * 129])
@pytest.mark.parametrize("kind", ["job", "group", "task"])
def test_unsafe_names_are_refused(kind, bad):
    names = {"job": "j", "group": "g", "task": "t"}
    names[kind] = bad
    text = f'job "{names["job"]}" {{ group "{names["group"]}" {{ task "{names["task"]}" {{\n' \
           f'driver = "raw_exec"\nconfig {{ command = "x" }}\n}} }} }}'
    result = load_text(text, "n.hcl")
    assert not result.valid
    assert any(f"{kind} name" in p.message for p in result.errors), result.errors


def test_safe_names_and_long_limit_are_accepted():
    text = f'job "{"x" * 128}" {{ group "web-1_a.b" {{ task "my task" {{\ndriver = "raw_exec"\n' \
           f'config {{ command = "x" }}\n}} }} }}'
    assert load_text(text, "n.hcl").valid


def test_task_named_alloc_is_reserved():
    result = load_text('task "alloc" {\n driver = "raw_exec"\n config { command = "x" }\n}', "a.hcl")
    assert any("reserved" in p.message for p in result.errors)


def test_duplicate_task_and_group_names():
    text = """
job "j" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config { command = "x" }
    }
    task "t" {
      driver = "raw_exec"
      config { command = "y" }
    }
  }
  group "g" {
    task "u" {
      driver = "raw_exec"
      config { command = "x" }
    }
  }
}
"""
    result = load_text(text, "d.hcl")
    messages = [p.message for p in result.errors]
    assert any("task name 't' is used 2 times" in m for m in messages), messages
    assert any("group name 'g' is used 2 times" in m for m in messages), messages


def test_all_errors_are_collected_in_one_pass():
    result = load(config='pid_mode = "x"\nwork_dir = "rel"', task='resources { memory = 1 }\nkill_signal = "nope"')
    assert len(result.errors) == 4, result.errors


def test_command_is_required():
    text = 'task "t" {\n driver = "exec"\n config { args = ["x"] }\n}'
    result = load_text(text, "c.hcl")
    assert [p.message for p in result.errors] == ["command is required"]
    assert result.errors[0].where == 'task "t" > config.command'


def test_missing_driver_and_config():
    result = load_text('task "t" {\n}', "c.hcl")
    assert any("driver is required" in p.message for p in result.errors)
    result = load_text('task "t" {\n driver = "exec"\n}', "c.hcl")
    assert any("config block" in p.message for p in result.errors)


@pytest.mark.parametrize(
    "fragment,word",
    [
        ('datacenters = ["dc1"]', "datacenters"),
        ('region = "eu"', "region"),
        ("priority = 70", "priority"),
        ('constraint {\n attribute = "x"\n value = "y"\n}', "constraint"),
        ("update { max_parallel = 1 }", "update"),
        ('periodic { cron = "@daily" }', "periodic"),
    ],
)
def test_cluster_only_job_attributes_are_warnings(fragment, word):
    result = load(job=fragment)
    assert result.valid, result.errors
    assert any(w.message.startswith(word) and "ignored by tasksd" in w.message for w in result.warnings)


@pytest.mark.parametrize(
    "group,task",
    [
        ("ephemeral_disk { size = 300 }", ""),
        ('service { name = "x" }', ""),
        ("", 'service {\n name = "web"\n port = "http"\n}'),
        ("", 'vault { policies = ["x"] }'),
        ("", "resources {\n memory = 64\n device \"nvidia/gpu\" { count = 1 }\n}"),
    ],
)
def test_cluster_only_blocks_are_warnings(group, task):
    result = load(group=group, task=task)
    assert result.valid, result.errors
    assert any("ignored by tasksd" in w.message for w in result.warnings)


@pytest.mark.parametrize("written,runs_as", [("system", "service"), ("sysbatch", "batch")])
def test_system_job_types_map_to_single_node_types(written, runs_as):
    result = load(job=f'type = "{written}"')
    assert result.valid
    assert result.jobs[0].type == runs_as
    assert any(written in w.message for w in result.warnings)


def test_second_job_in_a_file_is_an_error():
    one = 'job "{}" {{ group "g" {{ task "t" {{\ndriver = "raw_exec"\nconfig {{ command = "x" }}\n}} }} }}\n'
    result = load_text(one.format("a") + one.format("b"), "two.hcl")
    assert any("only one job per file" in p.message for p in result.errors)
    assert result.errors[0].line == 5


def test_integer_duration_is_seconds_with_a_warning():
    result = load(task="kill_timeout = 7")
    assert result.valid
    assert result.jobs[0].groups[0].tasks[0].kill_timeout == 7.0
    assert any("taken as 7 seconds" in w.message for w in result.warnings)


def test_template_change_mode_script_is_refused_with_the_alternatives():
    from manifests.loader import load_text

    text = ('job "j" {\n group "g" {\n task "t" {\n driver = "raw_exec"\n config {\n command = "/bin/true"\n }\n'
            ' template {\n data = "x"\n destination = "local/x"\n change_mode = "script"\n }\n }\n }\n}\n')
    result = load_text(text, "j.hcl")
    assert not result.valid
    assert any('change_mode = "script" is not supported' in e.message for e in result.errors)


def test_a_group_without_task_blocks_needs_one_but_failed_tasks_do_not_add_that_noise():
    from manifests.loader import load_text

    empty = load_text('job "x" {\n  group "g" {\n  }\n}\n', "/x.hcl")
    assert [(e.message, e.line) for e in empty.errors] == [("a group needs at least one task", 2)]
    broken = load_text('job "x" {\n  group "g" {\n    task "t" {\n      driver = "nope"\n    }\n  }\n}\n', "/x.hcl")
    assert [e.message for e in broken.errors if "needs at least one task" in e.message] == []
    assert broken.errors
