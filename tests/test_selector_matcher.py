"""`Selector.matcher()` answers as `Selector.matches` does, for every kind of criterion, and
`Exclusions.reasoner()` as `Exclusions.reason`."""

from __future__ import annotations

import itertools
import random

import pytest

from patchpilot.inventory import Instance
from patchpilot.planning.planner import _selected
from patchpilot.policy.model import Exclusions, Selector

TAGS = ["Environment", "App", "PatchPolicy"]
VALUES = ["staging", "production", "web", "frozen", "*"]


def fleet() -> list[Instance]:
    rng = random.Random(17)
    machines = []
    for n in range(300):
        tags = {key: rng.choice(VALUES[:-1]) for key in TAGS if rng.random() < 0.6}
        machines.append(
            Instance(
                id=f"i-{n:04d}",
                cloud=rng.choice(["aws", "azure"]),
                region=rng.choice(["eastus", "us-east-1", "japaneast"]),
                os=rng.choice(["linux", "windows"]),
                tags=tags,
            )
        )
    return machines


def selectors() -> list[Selector]:
    rng = random.Random(7)
    found = [Selector(), Selector(tags={"Environment": ["*"]}), Selector(tags={"Environment": ["staging"]})]
    for _ in range(200):
        tags = {key: rng.sample(VALUES, rng.randint(1, 2)) for key in TAGS if rng.random() < 0.4}
        criteria: dict[str, object] = {"tags": tags}
        if rng.random() < 0.3:
            criteria["ids"] = [f"i-{rng.randrange(300):04d}" for _ in range(20)]
        if rng.random() < 0.3:
            criteria["clouds"] = rng.choice(["aws", "azure"])
        if rng.random() < 0.3:
            criteria["regions"] = rng.sample(["eastus", "us-east-1", "japaneast"], 2)
        if rng.random() < 0.3:
            criteria["os"] = "windows"
        found.append(Selector.model_validate(criteria))
    return found


@pytest.mark.parametrize("selector", selectors(), ids=lambda s: repr(s.model_dump(exclude_defaults=True)))
def test_matcher_answers_as_matches(selector: Selector) -> None:
    machines = fleet()
    matcher = selector.matcher()
    assert [matcher(m) for m in machines] == [selector.matches(m) for m in machines]
    assert any(selector.matches(m) for m in machines) or not selector.is_empty()


def test_the_selectors_tried_match_some_machines_and_miss_others() -> None:
    """The comparison above means something: both answers occur."""
    answers = {s.matches(m) for s, m in itertools.product(selectors(), fleet())}
    assert answers == {True, False}


@pytest.mark.parametrize("selector", selectors()[:60], ids=lambda s: repr(s.model_dump(exclude_defaults=True)))
def test_reasoner_answers_as_reason(selector: Selector) -> None:
    exclusions = Exclusions(tags=selector.tags, ids=selector.ids)
    machines = fleet()
    reasoner = exclusions.reasoner()
    assert [reasoner(m) for m in machines] == [exclusions.reason(m) for m in machines]


@pytest.mark.parametrize("selector", selectors(), ids=lambda s: repr(s.model_dump(exclude_defaults=True)))
def test_the_planner_finds_by_id_the_machines_a_selector_matches(selector: Selector) -> None:
    """`planner._selected` looks up a selector's ids in the fleet (sorted by id) instead of asking every
    machine: the same machines as `matches`, ids that are not in the fleet or named twice included."""
    if selector.ids:
        selector = selector.model_copy(update={"ids": [*selector.ids, "i-9999", "a", selector.ids[0]]})
    machines = sorted(fleet(), key=lambda m: m.id)
    found = list(_selected(selector, machines, [m.id for m in machines]))
    assert found == [m for m in machines if selector.matches(m)]
