"""Where a PatchPilot deployed on Azure reads its policy: a blob in the Function App's storage
account, `blob://CONTAINER/NAME` (infra/azure/main.bicep creates the container).

Operators change the policy without redeploying code; every read is validated with the same
rules as `patchpilot validate`, so a broken policy is refused with every problem named.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from patchpilot.errors import InputError
from patchpilot.policy import Policy, parse_policy, with_freeze_calendar

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

SCHEME = "blob://"


def blob_location(location: str) -> tuple[str, str]:
    """`blob://container/path/policy.yaml` -> ("container", "path/policy.yaml")."""
    container, _, name = location.removeprefix(SCHEME).partition("/")
    if not location.startswith(SCHEME) or not container or not name:
        raise InputError.single(location, "expected a policy location blob://CONTAINER/NAME")
    return container, name


def read_policy_text(location: str, blobs: BlobServiceClient) -> str:
    from azure.core.exceptions import ResourceNotFoundError

    container, name = blob_location(location)
    try:
        data = blobs.get_blob_client(container, name).download_blob().readall()
    except ResourceNotFoundError:
        raise InputError.single(location, f"no blob {name} in container {container}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError.single(location, "the policy blob is not UTF-8 text") from None


def load_policy_from(location: str, blobs: BlobServiceClient) -> Policy:
    """The policy, with its `freeze_calendar` read from beside it (the same container and folder)."""
    policy = parse_policy(read_policy_text(location, blobs), source=location)

    def calendar(name: str) -> tuple[str, str]:
        container, path = blob_location(location)
        where = f"{SCHEME}{container}/{posixpath.join(posixpath.dirname(path), name)}"
        return where, read_policy_text(where, blobs)

    return with_freeze_calendar(policy, calendar)
