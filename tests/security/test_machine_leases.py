"""A machine is patched by one run at a time: a second run (an emergency advisory run, a
replayed or forged start) cannot get onto a machine another run holds by spelling its ARM id in
another case, nor free or extend the other run's lease. On SQLite, DynamoDB (moto) and Table
Storage (Azurite): the `leases` fixture of tests/leases_runtimes.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from patchpilot.ports import Leases

pytest_plugins = ["azurite", "leases_runtimes"]

T0 = datetime(2026, 12, 12, 1, 0, tzinfo=UTC)
HOLD = timedelta(minutes=30)
VM = "/subscriptions/5f0c-aa/resourceGroups/Prod-RG/providers/Microsoft.Compute/virtualMachines/Web01"


def test_a_machine_spelt_in_another_case_is_not_leased_to_a_second_run(leases: Callable[[], Leases]) -> None:
    """ARM ids compare without case, and ARM's own answers do not always keep one spelling."""
    holder, intruder = leases(), leases()
    assert holder.acquire([VM], "run-monthly", T0 + HOLD, T0) == {}
    for spelling in (VM.lower(), VM.upper(), VM.replace("resourceGroups", "resourcegroups")):
        assert intruder.acquire([spelling], "run-emergency", T0 + HOLD, T0) == {spelling: "run-monthly"}
    holder.release([VM.lower()], "run-monthly")  # its holder may name it either way too
    assert intruder.acquire([VM], "run-emergency", T0 + HOLD, T0) == {}


def test_a_run_cannot_free_or_extend_another_runs_lease(leases: Callable[[], Leases]) -> None:
    holder, intruder = leases(), leases()
    assert holder.acquire([VM], "run-monthly", T0 + HOLD, T0) == {}
    intruder.release([VM, VM.lower()], "run-emergency")
    assert intruder.acquire([VM], "run-emergency", T0 + 10 * HOLD, T0) == {VM: "run-monthly"}
    lapsed = T0 + HOLD + timedelta(seconds=1)  # the holder's lease lapsed, unchanged by the intruder
    assert leases().acquire([VM], "run-next", lapsed + HOLD, lapsed) == {}
