"""The batching helpers every adapter uses (patchpilot.batching)."""

import pytest

from patchpilot.batching import chunks, group, unique


def test_chunks_cut_in_order_with_a_short_last_chunk() -> None:
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunks([], 50) == []


def test_chunks_refuse_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="size must be at least 1, not 0"):
        chunks([1], 0)


def test_unique_keeps_the_first_item_per_key() -> None:
    assert unique(["a1", "b1", "a2"], lambda s: s[0]) == ["a1", "b1"]


def test_group_keeps_first_appearance_order() -> None:
    assert group(["b1", "a1", "b2"], lambda s: s[0]) == {"b": ["b1", "b2"], "a": ["a1"]}
    assert list(group(["b1", "a1", "b2"], lambda s: s[0])) == ["b", "a"]
