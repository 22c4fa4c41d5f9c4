"""ByAlloc keeps its alloc index right through every way a dict can change (a stale index would hide a task from
the plan, which would then start a duplicate)."""
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.byalloc import ByAlloc
from reconcilers.plan import alloc_of

tids = st.builds(lambda j, i, t: f"j{j}/g/{i}/t{t}", st.integers(0, 3), st.integers(0, 2), st.integers(0, 2))
ops = st.lists(st.one_of(
    st.tuples(st.just("set"), tids), st.tuples(st.just("del"), tids), st.tuples(st.just("pop"), tids),
    st.tuples(st.just("setdefault"), tids), st.tuples(st.just("update"), st.lists(tids, max_size=3)),
    st.tuples(st.just("popitem"), st.none()), st.tuples(st.just("clear"), st.none())), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_index_matches_a_full_scan_after_any_sequence_of_changes(seq):
    m: ByAlloc[int] = ByAlloc()
    ref: dict[str, int] = {}
    for n, (op, arg) in enumerate(seq):
        for d in (m, ref):
            if op == "set":
                d[arg] = n
            elif op == "del" and arg in d:
                del d[arg]
            elif op == "pop":
                d.pop(arg, None)
            elif op == "setdefault":
                d.setdefault(arg, n)
            elif op == "update":
                d.update({t: n for t in arg})
            elif op == "popitem" and d:
                d.popitem()
            elif op == "clear":
                d.clear()
    assert dict(m) == ref
    allocs = {alloc_of(t) for t in ref} | {"j9/g/0"}
    for a in allocs:
        assert m.in_allocs({a}) == {t: v for t, v in ref.items() if alloc_of(t) == a}
    assert m.in_allocs(allocs) == ref


def test_constructed_from_a_dict_and_pop_without_default_raises():
    m = ByAlloc({"a/g/0/t": 1, "a/g/0/u": 2, "b/g/0/t": 3})
    assert m.in_allocs({"a/g/0"}) == {"a/g/0/t": 1, "a/g/0/u": 2}
    try:
        m.pop("zz/g/0/t")
    except KeyError:
        pass
    else:
        raise AssertionError("pop of a missing key without default must raise")
