"""Azure Resource Graph: one paged query over many subscriptions instead of a request per machine.

Resource Graph allows about 15 queries per 5 seconds per user and 1,000 rows a page; a query
names at most `SUBSCRIPTIONS_PER_QUERY` subscriptions, so larger estates are read in batches. A
query over management groups (`azure.management_groups`) reads every subscription under them.
KQL values are always quoted here (`kql_string`, `kql_list`), never pasted in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from patchpilot.batching import chunks

if TYPE_CHECKING:
    from azure.mgmt.resourcegraph import ResourceGraphClient

PAGE_SIZE = 1000
SUBSCRIPTIONS_PER_QUERY = 300
MANAGEMENT_GROUPS_PER_QUERY = 10  # groups in one query: our batch size (a group may hold many subscriptions)
IDS_PER_QUERY = 400  # machine ids quoted into one `in~ (...)`: keeps a query well under its size limit


def kql_string(value: str) -> str:
    """A KQL string literal (single-quoted, backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def kql_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(kql_string(v) for v in values) + ")"


def query(
    graph: ResourceGraphClient,
    kql: str,
    subscriptions: Sequence[str] = (),
    *,
    management_groups: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every row of `kql`, page after page; over `subscriptions` (empty: every subscription the
    identity can read), in batches of `SUBSCRIPTIONS_PER_QUERY`; or, given `management_groups`
    (names), over every subscription under them, in batches of `MANAGEMENT_GROUPS_PER_QUERY`
    (`subscriptions` must then be empty: a request names one scope)."""
    from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

    if subscriptions and management_groups:
        raise ValueError("a Resource Graph query names subscriptions or management groups, not both")
    scopes: list[tuple[list[str] | None, list[str] | None]] = [
        *((None, batch) for batch in chunks(management_groups, MANAGEMENT_GROUPS_PER_QUERY)),
        *((batch, None) for batch in chunks(subscriptions, SUBSCRIPTIONS_PER_QUERY)),
    ] or [(None, None)]
    rows: list[dict[str, Any]] = []
    for batch, groups in scopes:
        skip_token: str | None = None
        while True:
            options = QueryRequestOptions(result_format="objectArray", top=PAGE_SIZE, skip_token=skip_token)
            request = QueryRequest(subscriptions=batch, management_groups=groups, query=kql, options=options)
            response = graph.resources(request)
            data: Any = response.data  # a list of objects with result_format objectArray (typed as a mapping)
            rows.extend(data)
            skip_token = response.skip_token
            if not skip_token:
                break
    return rows
