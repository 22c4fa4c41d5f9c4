"""controller.jsonbody encodes listings one item at a time; the bytes must decode to what json.dumps gives."""
import json
from pathlib import Path

from controller import jsonbody


def test_listing_is_the_json_of_the_whole_object():
    items = [{"id": "a/g/0/t", "pid": 12, "ok": True, "x": None, "f": 1.5, "u": "é\n\"q\""},
             {"id": "b", "nested": {"k": [1, 2, {"z": ()}]}}]
    head = {"rejected_manifests": [{"path": "/x", "errors": []}], "store_error": None}
    body = jsonbody.listing(head, "tasks", items)
    assert body.endswith(b"\n")
    assert json.loads(body) == {**head, "tasks": json.loads(json.dumps(items))}


def test_listing_calls_item_per_element_and_falls_back_to_str():
    seen = []

    def item(x):
        seen.append(x)
        return {"n": x, "path": Path(f"/p/{x}")}  # not JSON: encoded with str(), as json.dumps(default=str)

    body = jsonbody.listing({}, "tasks", range(3), item)
    assert seen == [0, 1, 2]
    assert json.loads(body) == {"tasks": [{"n": i, "path": f"/p/{i}"} for i in range(3)]}


def test_listing_as_object_and_empty():
    body = jsonbody.listing({"draining": False}, "tasks", [("j/g/0/t", 1), ("k/g/0/t", 2)], lambda v: {"v": v},
                            as_object=True)
    assert json.loads(body) == {"draining": False, "tasks": {"j/g/0/t": {"v": 1}, "k/g/0/t": {"v": 2}}}
    assert json.loads(jsonbody.listing({}, "tasks", [], as_object=True)) == {"tasks": {}}
    assert json.loads(jsonbody.listing({"a": 1}, "tasks", [])) == {"a": 1, "tasks": []}


def test_array():
    assert json.loads(jsonbody.array([])) == []
    assert json.loads(jsonbody.array(["a", "b"], str.upper)) == ["A", "B"]
