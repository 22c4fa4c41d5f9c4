"""Task drivers: raw_exec, exec, exec2 (Nomad's semantics, see docs/DESIGN.md)."""
from __future__ import annotations


def make_drivers(runtime, config) -> dict:
    from isolation.drivers.exec import ExecDriver
    from isolation.drivers.exec2 import Exec2Driver
    from isolation.drivers.raw_exec import RawExecDriver

    return {d.name: d for d in (RawExecDriver(runtime, config), ExecDriver(runtime, config), Exec2Driver(runtime, config))}
