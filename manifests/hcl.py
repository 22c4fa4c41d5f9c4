"""HCL (Nomad jobspec) text -> RawBlock tree: a fast parser for plain jobspecs, python-hcl2 for the rest.

Nearly every manifest is blocks, labels and literal attributes. python-hcl2's lark parser costs ~2 ms per file
and ~5 MB of grammar tables, which dominated a 1000-manifest start and the daemon's memory. The fast parser
(manifests.hcl_fast) accepts only a subset it decodes exactly as python-hcl2 does (a differential test holds it to
that) and gives up on anything else: then the lark path parses the text, imported only then. Errors always come
from the lark path, so messages do not depend on which parser looked first.
"""
from __future__ import annotations

from manifests import hcl_fast
from manifests.problems import Problem
from manifests.raw import RawBlock


def parse_hcl(text: str) -> tuple[RawBlock | None, list[Problem]]:
    """Parse HCL text. Returns the root block (type "") and problems; root is None on a syntax error."""
    root = hcl_fast.parse(text)
    if root is not None:
        return root, []
    return parse_hcl_general(text)


def parse_hcl_general(text: str) -> tuple[RawBlock | None, list[Problem]]:
    from manifests import hcl_lark

    return hcl_lark.parse_hcl(text)
