"""YAML manifests -> the same RawBlock tree the HCL parser produces.

The YAML form mirrors the jobspec: labelled blocks (job, group, task) are mappings with a `name:` key, or lists of
them; repeatable blocks (artifact, template, mount) are lists of mappings; any other mapping is a block.
"""
from __future__ import annotations

import datetime
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from manifests.problems import Problem
from manifests.raw import RawAttr, RawBlock, block_where, join_where

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # libyaml missing: the pure-Python loader gives the same nodes, only slower
    _Loader = yaml.SafeLoader

LABELLED = frozenset({"job", "group", "task"})
REPEATED = frozenset({"artifact", "template", "mount", "constraint", "affinity", "spread", "service", "volume",
                      "volume_mount", "device", "port"})

_constructor = yaml.constructor.SafeConstructor()


MAX_DEPTH = 64  # a jobspec nests about 6 levels; libyaml's composer recurses and segfaults near 100000

_OPEN = (yaml.tokens.BlockMappingStartToken, yaml.tokens.BlockSequenceStartToken,
         yaml.tokens.FlowMappingStartToken, yaml.tokens.FlowSequenceStartToken)
_CLOSE = (yaml.tokens.BlockEndToken, yaml.tokens.FlowMappingEndToken, yaml.tokens.FlowSequenceEndToken)


def _too_deep(text: str) -> Problem | None:
    """Measure nesting with the (iterative) scanner before the (recursive) composer sees the text: a file of
    100000 '[' crashes the whole process inside libyaml, which no except clause can catch."""
    depth = 0
    for tok in yaml.scan(text, Loader=_Loader):
        if isinstance(tok, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                m = tok.start_mark
                return Problem(f"YAML nests more than {MAX_DEPTH} levels deep", line=m.line + 1, column=m.column + 1)
        elif isinstance(tok, _CLOSE):
            depth -= 1
    return None


def parse_yaml(text: str) -> tuple[RawBlock | None, list[Problem]]:
    """Parse YAML text. Returns the root block (type "") and problems; root is None on a syntax error."""
    try:
        deep = _too_deep(text)
        if deep is not None:
            return None, [deep]
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "invalid YAML"
        if mark is None:
            return None, [Problem(f"YAML: {what}")]
        return None, [Problem(f"YAML: {what}", line=mark.line + 1, column=mark.column + 1)]
    except yaml.YAMLError as e:
        return None, [Problem(f"YAML: {e}")]
    root = RawBlock(type="", line=1, column=1)
    problems: list[Problem] = []
    if node is None:
        return root, problems
    if not isinstance(node, MappingNode):
        line, col = _pos(node)
        return None, [Problem("a YAML manifest must be a mapping with a `job:` or `task:` key", line=line, column=col)]
    _fill(root, node, problems, "")
    return root, problems


def _pos(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _fill(block: RawBlock, mapping: MappingNode, problems: list[Problem], where: str, skip_name: bool = False) -> None:
    seen: dict[str, int] = {}
    for key_node, value_node in mapping.value:
        key = str(_plain(key_node))
        line, col = _pos(key_node)
        if skip_name and key == "name":
            continue
        if key in seen:
            problems.append(
                Problem(f"duplicate key {key!r} (first set on line {seen[key]})", where=join_where(where, key),
                        line=line, column=col)
            )
            continue
        seen[key] = line
        if isinstance(value_node, MappingNode) and key != "<<":
            block.blocks.append(_block(key, value_node, problems, where))
        elif isinstance(value_node, SequenceNode) and (key in LABELLED or key in REPEATED) and all(
            isinstance(v, MappingNode) for v in value_node.value
        ):
            for item in value_node.value:
                block.blocks.append(_block(key, item, problems, where))
        else:
            block.attrs[key] = RawAttr(_plain(value_node), line, col)


def _block(key: str, node: MappingNode, problems: list[Problem], where: str) -> RawBlock:
    line, col = _pos(node)
    labels: tuple[str, ...] = ()
    if key in LABELLED:
        name = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == "name"), None)
        if name is None or not isinstance(name, ScalarNode):
            problems.append(Problem(f"{key} needs a `name:`", where=join_where(where, key), line=line, column=col))
            labels = ("",)
        else:
            labels = (str(_plain(name)),)
    block = RawBlock(type=key, labels=labels, line=line, column=col)
    _fill(block, node, problems, block_where(where, block), skip_name=key in LABELLED)
    return block


def _plain(node: Node) -> Any:
    if isinstance(node, ScalarNode):
        value = _constructor.construct_object(node, deep=True)
        if isinstance(value, (datetime.date, datetime.datetime, bytes)):
            return node.value  # keep what the operator typed rather than a type JSON cannot hold
        return value
    if isinstance(node, SequenceNode):
        return [_plain(v) for v in node.value]
    if isinstance(node, MappingNode):
        return {str(_plain(k)): _plain(v) for k, v in node.value}
    return None
