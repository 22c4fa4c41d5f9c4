"""Network namespaces for the group network modes.

- `none`: the task's child unshares CLONE_NEWNET and brings lo up (`loopback_up`, no pyroute2, no fork).
- `bridge`/`group`: one named namespace per alloc (/run/netns/tasksd-<alloc8>), lo up, a veth pair to the host
  bridge, an address from the configured subnet. pyroute2 forks its caller for namespace work, so this runs in a
  short-lived single-threaded helper process (`python -m isolation.netns`), never inside the threaded daemon.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
NETNS_DIR = Path("/run/netns")


def loopback_up() -> None:
    """Bring `lo` up in the current network namespace with two ioctls (safe in a forked child)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
    finally:
        s.close()


def netns_name(alloc_id: str) -> str:
    return f"tasksd-{alloc_id[:8]}"


def address_for(subnet: str, slot: int) -> tuple[str, str, int]:
    """(gateway, address, prefixlen) for the slot-th alloc: .1 is the bridge, allocs from .2 on."""
    net = ipaddress.ip_network(subnet)
    hosts = net.num_addresses - 2
    if slot < 0 or slot + 2 > hosts:
        raise ValueError(f"subnet {subnet} has no room for alloc slot {slot}")
    return str(net.network_address + 1), str(net.network_address + 2 + slot), net.prefixlen


def _helper(op: dict) -> dict:
    """Run a pyroute2 operation in a fresh single-threaded interpreter and return its JSON answer."""
    proc = subprocess.run([sys.executable, "-m", "isolation.netns"], input=json.dumps(op).encode(),
                          capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        answer = json.loads(proc.stdout or b"{}")
    except ValueError:
        answer = {}
    if proc.returncode != 0 or not answer.get("ok"):
        raise OSError(answer.get("error") or proc.stderr.decode(errors="replace").strip() or "netns helper failed")
    return answer


def create_group_netns(alloc_id: str, bridge: str, subnet: str, slot: int) -> str:
    """Create the alloc's namespace with lo up and a veth to `bridge`; returns /run/netns/<name>."""
    name = netns_name(alloc_id)
    gw, addr, plen = address_for(subnet, slot)
    _helper({"op": "create", "name": name, "bridge": bridge, "gateway": gw, "address": addr, "prefixlen": plen})
    return str(NETNS_DIR / name)


def remove_group_netns(alloc_id: str) -> None:
    name = netns_name(alloc_id)
    if (NETNS_DIR / name).exists():
        _helper({"op": "remove", "name": name})


def remove_bridge(bridge: str) -> None:
    _helper({"op": "remove_bridge", "bridge": bridge})


def _do_create(op: dict) -> None:
    from pyroute2 import IPRoute, NetNS, netns

    name, bridge = op["name"], op["bridge"]
    veth_host, veth_peer = f"ve{name[-8:]}h", f"ve{name[-8:]}p"
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=bridge):
            ipr.link("add", ifname=bridge, kind="bridge")
            br = ipr.link_lookup(ifname=bridge)[0]
            ipr.addr("add", index=br, address=op["gateway"], prefixlen=op["prefixlen"])
            ipr.link("set", index=br, state="up")
        br = ipr.link_lookup(ifname=bridge)[0]
        if name not in netns.listnetns():
            netns.create(name)
        for stale in ipr.link_lookup(ifname=veth_host):
            ipr.link("del", index=stale)
        ipr.link("add", ifname=veth_host, kind="veth", peer=veth_peer)
        host_if = ipr.link_lookup(ifname=veth_host)[0]
        peer_if = ipr.link_lookup(ifname=veth_peer)[0]
        ipr.link("set", index=host_if, master=br, state="up")
        ipr.link("set", index=peer_if, net_ns_fd=name)
    with NetNS(name, flags=0) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        peer = ns.link_lookup(ifname=veth_peer)[0]
        ns.link("set", index=peer, ifname="eth0")
        ns.addr("add", index=peer, address=op["address"], prefixlen=op["prefixlen"])
        ns.link("set", index=peer, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=op["gateway"])


def _do_remove(op: dict) -> None:
    from pyroute2 import netns

    name = op["name"]
    if name in netns.listnetns():
        netns.remove(name)  # the veth pair dies with the namespace


def _do_remove_bridge(op: dict) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=op["bridge"]):
            ipr.link("del", index=idx)


def main() -> int:
    op = json.loads(sys.stdin.read())
    try:
        {"create": _do_create, "remove": _do_remove, "remove_bridge": _do_remove_bridge}[op["op"]](op)
    except Exception as e:  # noqa: BLE001 - reported to the caller as data
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
