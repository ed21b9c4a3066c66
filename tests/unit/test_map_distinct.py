"""``emitter.map_distinct``: what a row queue's ``finish`` uses to work out each repeated value once."""

from __future__ import annotations

from collectors.emitter import map_distinct


def test_each_distinct_value_is_worked_out_once_and_the_column_keeps_its_order() -> None:
    calls: list[object] = []

    def name(queue: object) -> str:
        calls.append(queue)
        return f"<{queue}>"

    assert map_distinct(name, ["a", "b", "a", None, "a"]) == ["<a>", "<b>", "<a>", "<None>", "<a>"]
    assert len(calls) == 3 and set(calls) == {"a", "b", None}


def test_values_that_cannot_be_keys_are_taken_one_by_one() -> None:
    assert map_distinct(len, [[1], [1, 2], "abc"]) == [1, 2, 3]
