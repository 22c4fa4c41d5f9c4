"""Jobspec lifecycle features on the real daemon: artifacts, templates, lifecycle hooks, count, meta, secrets."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from isolation.taskdir import alloc_id_for
from tests.helpers import wait_for
from tests.kernel.test_artifacts import Server, tar_bytes

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def alloc_dir(daemon, job: str, group: str = "g", index: int = 0) -> Path:
    return daemon.state_dir / "alloc" / alloc_id_for(job, group, index)


def sh_task(name: str, script: str, extra: str = "", driver: str = "raw_exec") -> str:
    return (f'    task "{name}" {{\n      driver = "{driver}"\n      kill_timeout = "2s"\n'
            f'      config {{\n        command = "/bin/sh"\n        args = ["-c", {json.dumps(script)}]\n      }}\n'
            f'{extra}\n    }}\n')


def job(name: str, tasks: str, group_extra: str = "", job_extra: str = "", jtype: str = "service") -> str:
    return (f'job "{name}" {{\n  type = "{jtype}"\n{job_extra}\n  group "g" {{\n{group_extra}\n'
            f'    restart {{\n      attempts = 0\n      mode = "fail"\n    }}\n{tasks}  }}\n}}\n')


def test_artifact_template_and_env_template_feed_the_task(daemon, server):
    daemon.start()
    body = tar_bytes([("bin/greet", b"#!/bin/sh\necho \"hello $1\"\n")])
    server.files["/greet.tar.gz"] = body
    digest = hashlib.sha256(body).hexdigest()
    extra = f'''
      artifact {{
        source = "{server.url('/greet.tar.gz')}"
        options {{
          checksum = "sha256:{digest}"
        }}
        headers {{
          Authorization = "Bearer abc"
        }}
      }}
      template {{
        destination = "local/app.conf"
        perms = "0600"
        data = <<EOT
dir={{{{ env "NOMAD_TASK_DIR" }}}}
name={{{{ env "NOMAD_TASK_NAME" | toUpper }}}}
{{{{- range $i, $h := split "," "a,b" }}}}
host{{{{ $i }}}}={{{{ $h }}}}
{{{{- end }}}}
EOT
      }}
      template {{
        destination = "secrets/app.env"
        env = true
        data = "GREETING=from-template\\nALLOC={{{{ env \\"NOMAD_ALLOC_INDEX\\" }}}}\\n"
      }}
      env {{
        GREETING = "from-env-block"
      }}'''
    script = ('"$NOMAD_TASK_DIR/bin/greet" "$GREETING-$ALLOC" > "$NOMAD_ALLOC_DIR/data/out"; '
              'cat "$NOMAD_TASK_DIR/app.conf" >> "$NOMAD_ALLOC_DIR/data/out"; exec sleep 1000')
    daemon.write("a.hcl", job("a", sh_task("t", script, extra)))
    daemon.wait_state("a/g/0/t", "running")
    out = alloc_dir(daemon, "a") / "alloc/data/out"
    text = wait_for(lambda: out.exists() and "host1" in (t := out.read_text()) and t, what="task output")
    task_dir = alloc_dir(daemon, "a") / "t"
    assert text.splitlines() == ["hello from-template-0", f"dir={task_dir}/local", "name=T", "host0=a", "host1=b"]
    assert (task_dir / "local/app.conf").stat().st_mode & 0o777 == 0o600
    assert server.requests[0][1].get("Authorization") == "Bearer abc"


def test_checksum_mismatch_fails_once_with_a_clear_error(daemon, server):
    daemon.start()
    server.files["/x.tar.gz"] = tar_bytes([("x", b"x")])
    extra = f'''
      restart {{
        attempts = 3
        delay = "1s"
        mode = "delay"
      }}
      artifact {{
        source = "{server.url('/x.tar.gz')}"
        options {{
          checksum = "sha1:{'0' * 40}"
        }}
      }}'''
    daemon.write("c.hcl", job("c", sh_task("t", "exec sleep 1000", extra)))
    t = daemon.wait_state("c/g/0/t", "failed")
    assert "checksum mismatch" in t["last_error"] and "expected sha1:" in t["last_error"]
    assert t["restarts"] == 0 and server.hits("/x.tar.gz") == 1
    assert not list((alloc_dir(daemon, "c") / "t/local").iterdir())


def test_archive_with_dotdot_entries_fails_the_task(daemon, tmp):
    daemon.start()
    evil = tmp / "evil.tar"
    evil.write_bytes(tar_bytes([("../../../../escaped", b"x")], mode="w"))
    extra = f'      artifact {{\n        source = "{evil}"\n      }}'
    daemon.write("e.hcl", job("e", sh_task("t", "exec sleep 1000", extra)))
    t = daemon.wait_state("e/g/0/t", "failed")
    assert "contains '..'" in t["last_error"]
    assert not (daemon.state_dir / "escaped").exists() and not (tmp / "escaped").exists()


def test_template_calling_consul_is_rejected_when_the_manifest_loads(daemon):
    daemon.start()
    extra = '      template {\n        destination = "local/x"\n        data = "{{ key \\"a/b\\" }}"\n      }'
    daemon.write("k.hcl", job("k", sh_task("t", "exec sleep 1000", extra)))
    snap = wait_for(lambda: [m for m in daemon.client.get("/v1/manifests") if m["status"] == "rejected"],
                    what="manifest rejected")
    assert any("needs Consul" in e["message"] for e in snap[0]["errors"])
    assert "k/g/0/t" not in daemon.tasks()


def test_lifecycle_order_prestart_sidecar_main_poststart(daemon):
    daemon.start()
    log = '"$NOMAD_ALLOC_DIR/data/order"'
    tasks = (
        sh_task("init", f"echo init >> {log}", '      lifecycle {\n        hook = "prestart"\n      }')
        + sh_task("side", f"echo side >> {log}; exec sleep 1000",
                  '      lifecycle {\n        hook = "prestart"\n        sidecar = true\n      }')
        + sh_task("main", f"grep -q init {log} && echo main >> {log}; exec sleep 1000")
        + sh_task("post", f"echo post >> {log}", '      lifecycle {\n        hook = "poststart"\n      }'))
    daemon.write("l.hcl", job("l", tasks))
    daemon.wait_state("l/g/0/init", "complete")
    daemon.wait_state("l/g/0/post", "complete")
    order = (alloc_dir(daemon, "l") / "alloc/data/order").read_text().split()
    # init and the sidecar start together; main only after init succeeded and the sidecar runs.
    assert set(order) == {"init", "side", "main", "post"}
    assert order.index("init") < order.index("main") and order.index("side") < order.index("main")
    tasks_now = daemon.tasks()
    assert tasks_now["l/g/0/post"]["started_at"] >= tasks_now["l/g/0/main"]["started_at"]
    assert daemon.task("l/g/0/main")["state"] == "running" and daemon.task("l/g/0/side")["state"] == "running"


def test_failing_prestart_means_the_main_task_never_starts(daemon):
    daemon.start()
    tasks = (sh_task("init", "exit 3", '      lifecycle {\n        hook = "prestart"\n      }')
             + sh_task("main", 'touch "$NOMAD_ALLOC_DIR/data/main-ran"; exec sleep 1000'))
    daemon.write("p.hcl", job("p", tasks))
    daemon.wait_state("p/g/0/init", "failed")
    # A later manifest proves the controller reconciled again after the failure and still held the main task.
    daemon.write("z.hcl", job("z", sh_task("t", "exec sleep 1000")))
    daemon.wait_state("z/g/0/t", "running")
    main = daemon.task("p/g/0/main")
    assert main is None or main["state"] == "pending"
    assert not (alloc_dir(daemon, "p") / "alloc/data/main-ran").exists()


def test_count_meta_and_scale_down_highest_index_first(daemon):
    daemon.start()
    script = ('echo "$NOMAD_ALLOC_INDEX $NOMAD_META_owner $NOMAD_META_tier $NOMAD_META_ZONE" '
              '> "$NOMAD_ALLOC_DIR/data/id"; exec sleep 1000')

    def manifest(count: int) -> str:
        return job("n", sh_task("t", script, '      meta {\n        tier = "task"\n      }'),
                   group_extra=f'    count = {count}\n    meta {{\n      tier = "group"\n      zone = "z1"\n    }}',
                   job_extra='  meta {\n    owner = "ops"\n    tier = "job"\n  }')

    daemon.write("n.hcl", manifest(3))
    pids = {i: daemon.wait_state(f"n/g/{i}/t", "running")["pid"] for i in range(3)}
    dirs = {alloc_dir(daemon, "n", index=i) for i in range(3)}
    assert len(dirs) == 3
    for i in range(3):
        f = alloc_dir(daemon, "n", index=i) / "alloc/data/id"
        assert wait_for(lambda: f.exists() and f.read_text().strip(), what="id file") == f"{i} ops task z1"
    last = max((e["id"] for e in daemon.client.get("/v1/events")), default=0)
    daemon.write("n.hcl", manifest(1))
    wait_for(lambda: set(daemon.tasks()) & {"n/g/1/t", "n/g/2/t"} == set(), timeout=30, what="scaled down")
    assert daemon.task("n/g/0/t")["pid"] == pids[0]  # instance 0 untouched by the scale-down
    events = [e for e in daemon.client.get(f"/v1/events?after={last}") if e["type"] == "killing"]
    assert [e["task_id"] for e in events][:2] == ["n/g/2/t", "n/g/1/t"]


def test_secrets_size_is_the_tmpfs_size(daemon):
    daemon.start()
    script = 'df -k "$NOMAD_SECRETS_DIR" | tail -1 > "$NOMAD_ALLOC_DIR/data/df"; exec sleep 1000'
    extra = '      resources {\n        secrets = 7\n      }'
    daemon.write("s.hcl", job("s", sh_task("t", script, extra)))
    daemon.wait_state("s/g/0/t", "running")
    f = alloc_dir(daemon, "s") / "alloc/data/df"
    line = wait_for(lambda: f.exists() and f.read_text().split(), what="df output")
    assert line[0] == "tmpfs" and int(line[1]) == 7 * 1024


def _template(data: str, mode: str, signal: str = "") -> str:
    sig = f'\n        change_signal = "{signal}"' if signal else ""
    return (f'      template {{\n        data = "{data}"\n        destination = "local/app.conf"\n'
            f'        change_mode = "{mode}"{sig}\n      }}\n')


@pytest.mark.parametrize("mode", ["signal", "noop", "restart"])
def test_template_change_mode_on_a_manifest_edit(daemon, mode):
    """Nomad's change_mode: signal re-renders and signals the running process, noop only re-renders, restart
    replaces the process. The script reports each SIGHUP with the file's content at that moment."""
    script = "trap 'echo reloaded $(cat local/app.conf)' HUP; echo started $(cat local/app.conf); " \
             "while :; do sleep 0.1; done"
    signal = "SIGHUP" if mode == "signal" else ""
    daemon.start()
    daemon.write("conf.hcl", job("conf", sh_task("t", script, _template("v1", mode, signal))))
    pid = daemon.wait_state("conf/g/0/t", "running")["pid"]
    conf = alloc_dir(daemon, "conf") / "t" / "local" / "app.conf"
    log = alloc_dir(daemon, "conf") / "alloc" / "logs" / "t.stdout"
    wait_for(lambda: log.exists() and "started v1" in log.read_text(), what="first render")
    daemon.write("conf.hcl", job("conf", sh_task("t", script, _template("v2", mode, signal))))
    wait_for(lambda: conf.read_text() == "v2", what="the new content rendered")
    if mode == "restart":
        wait_for(lambda: (t := daemon.task("conf/g/0/t"))["pid"] != pid and t["state"] == "running", what="restart")
        return
    ev = wait_for(lambda: [e for e in daemon.client.get("/v1/events?task=conf/g/0/t")
                           if e["type"] == "template_rendered"], what="re-render event")
    assert "local/app.conf" in ev[-1]["message"]
    assert daemon.task("conf/g/0/t")["pid"] == pid  # not restarted
    if mode == "signal":
        wait_for(lambda: "reloaded v2" in log.read_text(), what="SIGHUP handled with the new file")
    else:
        assert "reloaded" not in log.read_text()  # noop: the file changed, the process was left alone


def test_poststop_runs_when_the_job_is_removed(daemon, tmp):
    marker = tmp / "poststop.out"
    tasks = (sh_task("main", "while :; do sleep 0.1; done")
             + sh_task("cleanup", f"echo cleaned-after-$NOMAD_JOB_NAME > {marker}",
                       '      lifecycle {\n        hook = "poststop"\n      }'))
    daemon.start()
    daemon.write("svc.hcl", job("svc", tasks))
    daemon.wait_state("svc/g/0/main", "running")
    assert daemon.task("svc/g/0/cleanup") is None  # poststop waits for the main task to end
    (daemon.tasks_dir / "svc.hcl").unlink()
    wait_for(lambda: marker.exists() and marker.read_text() == "cleaned-after-svc\n", timeout=30,
             what="the poststop hook ran after the job was removed")
    wait_for(lambda: not daemon.tasks(), timeout=30, what="everything forgotten after the poststop hook")
    wait_for(lambda: not alloc_dir(daemon, "svc").exists(), timeout=30, what="alloc collected")
