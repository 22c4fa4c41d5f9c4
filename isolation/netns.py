"""Network namespaces for the group network modes.

- `host` (default): the task shares the host's network.
- `none`: the task's child unshares CLONE_NEWNET and brings lo up (`isolation.sys.loopback_up`, no pyroute2, no fork).
- `bridge`/`group`: one named namespace per alloc (/run/netns/tasksd-<alloc8>) shared by the group's tasks, lo up,
  a veth pair to a host bridge, an address from the configured subnet and a default route via the bridge.
  No port forwarding and no NAT (yet): the alloc is reachable from the host at its address.

Namespace and link work runs in a short-lived single-threaded helper (`python -m isolation.netns`), never inside
the threaded daemon: entering a namespace there would move one of its threads. The helper creates the namespace
itself (unshare + a bind mount of the nsfs file, like `ip netns add`) and talks netlink with a plain IPRoute in the
namespace it is in: pyroute2's own `netns.create` and `IPRoute(netns=...)` fork the caller, and `netns.create`
turns /run/netns into a shared self-bind mount that nothing ever removes.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

from isolation import sys as ksys

IFF_UP = 0x1
NETNS_DIR = Path("/run/netns")
MODES = ("host", "none", "bridge", "group")


def namespace_for_mode(mode: str, group_netns: str | None) -> str:
    """What a LaunchSpec's `net` says for a group network mode: "host", "new", or the group namespace's path.

    Bridge mode without a namespace is an error, never a silent fallback to the host's network."""
    if mode in ("", "host"):
        return "host"
    if mode == "none":
        return "new"
    if mode in ("bridge", "group"):
        if not group_netns:
            raise ValueError(f"network mode {mode!r} needs the group's network namespace, and none was created")
        return group_netns
    raise ValueError(f"unknown network mode {mode!r} (expected one of {', '.join(MODES)})")


def netns_name(alloc_id: str) -> str:
    return f"tasksd-{alloc_id[:8]}"


def veth_names(name: str) -> tuple[str, str]:
    """(host end, namespace end before it is renamed eth0); at most 15 characters, as IFNAMSIZ allows."""
    return f"ve{name[-8:]}h", f"ve{name[-8:]}p"


def address_for(subnet: str, slot: int) -> tuple[str, str, int]:
    """(gateway, address, prefixlen) for the slot-th alloc: .1 is the bridge, allocs from .2 on."""
    net = ipaddress.ip_network(subnet)
    hosts = net.num_addresses - 2
    if slot < 0 or slot + 2 > hosts:
        raise ValueError(f"subnet {subnet} has no room for alloc slot {slot}")
    return str(net.network_address + 1), str(net.network_address + 2 + slot), net.prefixlen


def _helper(op: dict) -> dict:
    """Run a namespace operation in a fresh single-threaded interpreter and return its JSON answer."""
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
    """Create the alloc's namespace with lo up and a veth to `bridge` (created when missing); returns its path.

    Idempotent: a half-made namespace from an interrupted attempt is completed, not duplicated."""
    name = netns_name(alloc_id)
    gw, addr, plen = address_for(subnet, slot)
    try:
        _helper({"op": "create", "name": name, "bridge": bridge, "gateway": gw, "address": addr,
                 "prefixlen": plen})
    except OSError:
        try:
            _helper({"op": "remove", "name": name})  # leave nothing half-made behind
        except OSError:
            pass
        raise
    return str(NETNS_DIR / name)


def remove_group_netns(alloc_id: str) -> None:
    """Remove the alloc's namespace and its veth pair (idempotent). The tasks in it must be gone already."""
    _helper({"op": "remove", "name": netns_name(alloc_id)})


def remove_bridge(bridge: str) -> None:
    _helper({"op": "remove_bridge", "bridge": bridge})


# ---- the helper process ------------------------------------------------------------------------------------
def _is_mountpoint(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _make_namespace(path: Path) -> None:
    """A new network namespace kept alive by a bind mount at `path`; this process stays in its own."""
    NETNS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    if _is_mountpoint(path):
        return
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ksys.unshare(ksys.CLONE_NEWNET)
        try:
            ksys.mount("/proc/thread-self/ns/net", str(path), None, ksys.MS_BIND, None)
        finally:
            ksys.setns(own, ksys.CLONE_NEWNET)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(own)


def _enter(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ksys.setns(fd, ksys.CLONE_NEWNET)
    finally:
        os.close(fd)


def _do_create(op: dict) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    name, bridge = op["name"], op["bridge"]
    path = NETNS_DIR / name
    veth_host, veth_peer = veth_names(name)
    _make_namespace(path)
    if _complete(path, op["address"]):
        return  # asked again for a live alloc: rebuilding the veth would cut its tasks' connections
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=bridge):
            ipr.link("add", ifname=bridge, kind="bridge")
        br = ipr.link_lookup(ifname=bridge)[0]
        try:
            ipr.addr("add", index=br, address=op["gateway"], prefixlen=op["prefixlen"])
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.link("set", index=br, state="up")
        for stale in ipr.link_lookup(ifname=veth_host):
            ipr.link("del", index=stale)  # from an interrupted attempt; its peer goes with it
        ipr.link("add", ifname=veth_host, kind="veth", peer=veth_peer)
        host_if = ipr.link_lookup(ifname=veth_host)[0]
        peer_if = ipr.link_lookup(ifname=veth_peer)[0]
        ipr.link("set", index=host_if, master=br, state="up")
        ns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("set", index=peer_if, net_ns_fd=ns_fd)
        finally:
            os.close(ns_fd)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    _enter(path)
    try:
        with IPRoute() as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            for stale in ns.link_lookup(ifname="eth0"):
                ns.link("del", index=stale)
            peer = ns.link_lookup(ifname=veth_peer)[0]
            ns.link("set", index=peer, ifname="eth0")
            ns.addr("add", index=peer, address=op["address"], prefixlen=op["prefixlen"])
            ns.link("set", index=peer, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=op["gateway"])
    finally:
        ksys.setns(own, ksys.CLONE_NEWNET)
        os.close(own)


def _complete(path: Path, address: str) -> bool:
    """The namespace already has eth0 up with `address` (so its veth and the bridge are in place)."""
    from pyroute2 import IPRoute

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    _enter(path)
    try:
        with IPRoute() as ns:
            eth0 = ns.link_lookup(ifname="eth0")
            if not eth0 or not ns.get_links(eth0[0])[0].get("flags", 0) & IFF_UP:
                return False
            return any(a.get("address") == address for a in ns.get_addr(index=eth0[0]))
    finally:
        ksys.setns(own, ksys.CLONE_NEWNET)
        os.close(own)


def _do_remove(op: dict) -> None:
    from pyroute2 import IPRoute

    name = op["name"]
    path = NETNS_DIR / name
    # Deleting the host end removes the pair at once; the namespace itself may outlive its mount for a moment
    # (the kernel frees it asynchronously), and its veth would linger with it.
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=veth_names(name)[0]):
            ipr.link("del", index=idx)
    while _is_mountpoint(path):
        ksys.umount2(str(path), ksys.MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
