"""Group network modes on the real kernel: `none` (only lo), `host`, and `bridge` (one namespace per alloc shared by
the group's tasks, a veth to a host bridge), and that removing the alloc's namespace and the bridge leaves
nothing behind."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from isolation import netns
from isolation.drivers.base import StartError
from isolation.taskdir import alloc_id_for
from manifests.model import Exec2Config, ExecConfig, Task
from tests.helpers import wait_for
from tests.kernel.conftest import make_ctx

# Prints what the task sees of its network, as key=value lines. Python because it reaches the interfaces through
# ioctls and if_nameindex (netlink), which Landlock does not confine: exec2's defaults do not unveil /sys or /proc.
NET_PROBE = r"""
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def ifreq(name, req):
    return fcntl.ioctl(s.fileno(), req, struct.pack("256s", name.encode()[:15]))
names = [n for _, n in socket.if_nameindex()]
print("ifs=" + " ".join(sorted(names)))
for n in names:
    up = struct.unpack("H", ifreq(n, 0x8913)[16:18])[0] & 1
    try:
        addr = socket.inet_ntoa(ifreq(n, 0x8915)[20:24])
    except OSError:
        addr = "-"
    print(f"{n}={'up' if up else 'down'}:{addr}")
"""

# Listens on every address of its namespace, says where it is ready, and answers two connections with the peer's
# address: one from the other task of its group (over lo), one from the host (over the bridge).
SERVER = r"""
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen()
open(os.environ["NOMAD_ALLOC_DIR"] + "/data/ready", "w").close()
for _ in range(2):
    c, peer = s.accept()
    c.sendall(f"hello {peer[0]}\n".encode())
    c.close()
"""

CLIENT = r"""
import socket
c = socket.create_connection(("127.0.0.1", 8080), timeout=20)
print("got=" + c.makefile().readline().strip())
"""


@pytest.fixture
def traversable(tmp):
    # exec2 has no chroot: its dynamic user reaches the task dir through the host path, so the test's private
    # temp dir (0700 root) must be traversable, as a state dir such as /var/lib/tasksd is.
    os.chmod(tmp, 0o711)


def task_for(driver: str, command: str, *args: str, name: str = "t") -> Task:
    cfg = (ExecConfig if driver == "exec" else Exec2Config)(command=command, args=tuple(args))
    return Task(name=name, driver=driver, config=cfg)


def parse(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def stdout_of(h, name: str) -> str:
    return (Path(h.alloc_dir) / "alloc" / "logs" / f"{name}.stdout").read_text()


def run(d, cfg, task: Task, **ctx_kw) -> dict[str, str]:
    h = d.start(make_ctx(cfg, task, **ctx_kw))
    res = d.wait(h, 30)
    out = stdout_of(h, task.name)
    err = (Path(h.alloc_dir) / "alloc" / "logs" / f"{task.name}.stderr").read_text()
    d.destroy(h)
    assert res is not None and res.exit_code == 0, (res, out, err)
    return parse(out)


def host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


# ---- pure logic ----------------------------------------------------------------------------------------------
def test_mode_maps_to_launch_namespace():
    assert netns.namespace_for_mode("host", None) == "host"
    assert netns.namespace_for_mode("none", "/run/netns/x") == "new"
    assert netns.namespace_for_mode("bridge", "/run/netns/x") == "/run/netns/x"
    with pytest.raises(ValueError, match="needs the group's network namespace"):
        netns.namespace_for_mode("bridge", None)
    with pytest.raises(ValueError, match="unknown network mode"):
        netns.namespace_for_mode("cni/foo", None)


def test_addresses_come_from_the_subnet():
    assert netns.address_for("10.213.0.0/24", 0) == ("10.213.0.1", "10.213.0.2", 24)
    assert netns.address_for("10.213.0.0/24", 252) == ("10.213.0.1", "10.213.0.254", 24)
    with pytest.raises(ValueError, match="no room"):
        netns.address_for("10.213.0.0/24", 253)


def test_veth_names_fit_ifnamsiz():
    host, peer = netns.veth_names(netns.netns_name(alloc_id_for("j", "g", 0)))
    assert host != peer and len(host) <= 15 and len(peer) <= 15


# ---- real kernel ---------------------------------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.parametrize("driver", ["exec", "exec2"])
def test_none_mode_has_only_lo_up(drivers, agent_config, traversable, driver):
    seen = run(drivers[driver], agent_config, task_for(driver, "/usr/bin/python3", "-c", NET_PROBE), network="none")
    assert seen["ifs"] == "lo"
    assert seen["lo"] == "up:127.0.0.1"


@pytest.mark.root
def test_host_mode_shares_the_hosts_interfaces(drivers, agent_config, traversable):
    seen = run(drivers["exec2"], agent_config, task_for("exec2", "/usr/bin/python3", "-c", NET_PROBE))
    host = parse(subprocess.run([sys.executable, "-c", NET_PROBE], capture_output=True, text=True,
                                check=True).stdout)
    # Compared interface by interface: other test runs may add or remove their own links meanwhile.
    shared = set(seen["ifs"].split()) & set(host["ifs"].split()) - {"lo"}
    assert shared
    for name in shared:
        assert seen[name] == host[name]


@pytest.mark.root
def test_bridge_mode_without_a_namespace_is_refused(drivers, agent_config, traversable):
    with pytest.raises(StartError, match="needs the group's network namespace"):
        drivers["exec2"].start(make_ctx(agent_config, task_for("exec2", "/bin/true"), network="bridge"))


@pytest.mark.root
def test_bridge_group_tasks_share_one_namespace_and_nothing_is_left(drivers, agent_config, traversable):
    # Names and subnet unique to this test process, so parallel runs (and a real tasksd0) never collide.
    bridge = f"tdt{os.getpid() % 10000}"
    subnet_third = os.getpid() % 256
    gateway, address = f"10.213.{subnet_third}.1", f"10.213.{subnet_third}.2"
    job = f"net{os.getpid()}"
    alloc = alloc_id_for(job, "g", 0)
    path = netns.create_group_netns(alloc, bridge, f"10.213.{subnet_third}.0/24", 0)
    started = []
    try:
        assert path == f"/run/netns/{netns.netns_name(alloc)}"
        assert bridge in host_links()
        ctx_kw = dict(job=job, network="bridge", netns=path)
        server = task_for("exec2", "/usr/bin/python3", "-c", SERVER, name="server")
        hs = drivers["exec2"].start(make_ctx(agent_config, server, **ctx_kw))
        started.append((drivers["exec2"], hs))
        ready = Path(hs.alloc_dir) / "alloc" / "data" / "ready"
        wait_for(ready.exists, timeout=20, what="server listening")
        # Asking again for a live alloc's namespace changes nothing: the same veth stays (a new one would cut
        # the tasks' connections).
        ifindex = Path(f"/sys/class/net/{netns.veth_names(netns.netns_name(alloc))[0]}/ifindex")
        first = ifindex.read_text()
        assert netns.create_group_netns(alloc, bridge, f"10.213.{subnet_third}.0/24", 0) == path
        assert ifindex.read_text() == first

        # The other task of the group (another driver, even) reaches it over the shared namespace's lo.
        client = task_for("exec", "/usr/bin/python3", "-c", CLIENT + NET_PROBE, name="client")
        seen = run(drivers["exec"], agent_config, client, **ctx_kw)
        assert seen["got"] == "hello 127.0.0.1"
        assert seen["ifs"] == "eth0 lo"
        assert seen["lo"] == "up:127.0.0.1"
        assert seen["eth0"] == f"up:{address}"

        # The host reaches the alloc's address over the bridge; the server sees the bridge's address.
        with socket.create_connection((address, 8080), timeout=20) as c:
            assert c.makefile().readline().strip() == f"hello {gateway}"
        res = drivers["exec2"].wait(hs, 30)
        assert res is not None and res.exit_code == 0
    finally:
        for d, h in started:
            d.stop(h, "SIGKILL", 5)
            d.destroy(h)
        netns.remove_group_netns(alloc)
        netns.remove_bridge(bridge)
    assert not Path(path).exists()
    assert netns.netns_name(alloc) not in os.listdir(netns.NETNS_DIR)
    assert not {bridge, *netns.veth_names(netns.netns_name(alloc))} & host_links()
    netns.remove_group_netns(alloc)  # idempotent: removing what is gone is no error
