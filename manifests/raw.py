"""The neutral tree both parsers produce: blocks with labels, attributes with positions.

HCL and YAML differ only in syntax; normalizing both into this tree lets one decoder build the model and report
problems with line numbers, whichever format the operator wrote.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RawAttr:
    value: Any  # plain data: str, int, float, bool, None, list, dict
    line: int | None = None
    column: int | None = None


@dataclass(slots=True)
class RawBlock:
    type: str
    labels: tuple[str, ...] = ()
    attrs: dict[str, RawAttr] = field(default_factory=dict)
    blocks: list[RawBlock] = field(default_factory=list)
    line: int | None = None
    column: int | None = None

    def blocks_of(self, type_: str) -> list[RawBlock]:
        return [b for b in self.blocks if b.type == type_]


def join_where(where: str, attr: str) -> str:
    """'job "x" > group "g"' + "count" -> 'job "x" > group "g" > count'; inside unlabelled blocks: "config.args"."""
    if not where:
        return attr
    if where.endswith('"'):
        return f"{where} > {attr}"
    return f"{where}.{attr}"


def block_where(where: str, block: RawBlock) -> str:
    """The `where` of a block: labelled blocks read `task "t"`, unlabelled ones join with dots (`config`)."""
    if block.labels:
        own = f'{block.type} "{block.labels[0]}"'
        return f"{where} > {own}" if where else own
    return join_where(where, block.type)
