"""Azure Resource Graph: one paged query over many subscriptions instead of a request per machine.

Resource Graph allows about 15 queries per 5 seconds per user and 1,000 rows a page; a query
names at most `SUBSCRIPTIONS_PER_QUERY` subscriptions, so larger estates are read in batches.
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
IDS_PER_QUERY = 400  # machine ids quoted into one `in~ (...)`: keeps a query well under its size limit


def kql_string(value: str) -> str:
    """A KQL string literal (single-quoted, backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def kql_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(kql_string(v) for v in values) + ")"


def query(graph: ResourceGraphClient, kql: str, subscriptions: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every row of `kql`, page after page; over `subscriptions` (empty: every subscription the
    identity can read), in batches of `SUBSCRIPTIONS_PER_QUERY`."""
    from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

    batches: list[list[str] | None] = [*chunks(subscriptions, SUBSCRIPTIONS_PER_QUERY)] or [None]
    rows: list[dict[str, Any]] = []
    for batch in batches:
        skip_token: str | None = None
        while True:
            options = QueryRequestOptions(result_format="objectArray", top=PAGE_SIZE, skip_token=skip_token)
            response = graph.resources(QueryRequest(subscriptions=batch, query=kql, options=options))
            data: Any = response.data  # a list of objects with result_format objectArray (typed as a mapping)
            rows.extend(data)
            skip_token = response.skip_token
            if not skip_token:
                break
    return rows
