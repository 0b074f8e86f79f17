"""Where a deployed PatchPilot reads its policy: an S3 object or an SSM parameter.

Operators change the policy without redeploying code; every read is validated with the same
rules as `patchpilot validate`, so a broken policy is refused with every problem named.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING

from patchpilot.errors import InputError
from patchpilot.policy import Policy, parse_policy, with_freeze_calendar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient


def read_policy_text(location: str, s3: S3Client | None, ssm: SSMClient | None) -> str:
    """`s3://bucket/key` or `ssm:/parameter/name` (a SecureString is decrypted). Only the client
    of the location's service is needed (a cold start pays tens of milliseconds per client)."""
    if location.startswith("s3://"):
        if s3 is None:
            raise ValueError(f"reading {location} needs an S3 client")
        bucket, _, key = location.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise InputError.single(location, "expected s3://BUCKET/KEY")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError.single(location, "the policy object is not UTF-8 text") from None
    if location.startswith("ssm:"):
        if ssm is None:
            raise ValueError(f"reading {location} needs an SSM client")
        name = location.removeprefix("ssm:")
        parameter = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
        return parameter.get("Value", "")
    raise InputError.single(location, "expected a policy location s3://BUCKET/KEY or ssm:/PARAMETER")


def beside(location: str, name: str) -> str:
    """The location of file `name` beside the policy: the same bucket and prefix (`s3://b/p/name`),
    or the same parameter path (`ssm:/p/name`)."""
    if location.startswith("s3://"):
        bucket, _, key = location.removeprefix("s3://").partition("/")
        return f"s3://{bucket}/{posixpath.join(posixpath.dirname(key), name)}"
    return "ssm:" + posixpath.join(posixpath.dirname(location.removeprefix("ssm:")), name)


def load_policy_from(
    location: str, s3: S3Client | None, ssm: SSMClient | None, calendars: Callable[[], SSMClient] | None = None
) -> Policy:
    """The policy, with its `freeze_calendar` read from beside it (`beside`), and with its
    `aws.change_calendars` asked through the SSM client `calendars()` gives (built only then)."""
    policy = parse_policy(read_policy_text(location, s3, ssm), source=location)
    if calendars is not None and policy.aws is not None and policy.aws.change_calendars:
        from patchpilot.adapters.aws.change_calendar import SsmChangeCalendars

        policy = policy.with_change_calendars(SsmChangeCalendars(calendars(), policy.aws.change_calendars))

    def calendar(name: str) -> tuple[str, str]:
        from botocore.exceptions import ClientError

        where = beside(location, name)
        try:
            return where, read_policy_text(where, s3, ssm)
        except ClientError as error:  # NoSuchKey, ParameterNotFound, AccessDenied: said with the place
            code = error.response.get("Error", {}).get("Code", "")
            raise InputError.single(where, f"freeze_calendar {name} not read ({code})") from None

    return with_freeze_calendar(policy, calendar)
