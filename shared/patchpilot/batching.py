"""Batching helpers shared by every adapter: cut a list into calls, keep the first of each key,
group by a key. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` in consecutive lists of at most `size` (one per API call), in order."""
    if size < 1:
        raise ValueError(f"chunks: size must be at least 1, not {size}")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def unique(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """The first item per key, in order."""
    seen: dict[str, T] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


def group(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """The items per key, keys in order of first appearance, items in order within."""
    result: dict[K, list[T]] = {}
    for item in items:
        result.setdefault(key(item), []).append(item)
    return result
