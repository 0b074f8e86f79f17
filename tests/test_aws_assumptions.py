"""What PatchPilot does where it relies on AWS behaviour no published source states
(docs/fidelity.md, AWS, "Still assumed"): if the assumption is wrong, the answer degrades to
"unknown", never to a crash or a wrong verdict.

- DescribeAvailablePatches: the Values of one filter are ORed. The API reference gives sample
  values joined by "|" but does not say; PatchFilter (baseline rules) documents OR ("either
  Office 2013 or Office 2016"). If the catalogue ANDed them, a lookup of several KBs would find
  nothing: the patches stay listed, undated (no age), and the state stands.
"""

from __future__ import annotations

from aws_payloads import recorded
from test_aws_compliance import AMAZON_LINUX_2_FILTERS, REGION, dated_fleet, stubbed


def test_if_the_catalogue_anded_a_filters_values_the_patches_stay_listed_undated_and_the_states_stand() -> None:
    """Stubber: the Windows lookup (six KBs in one PATCH_ID filter) answers nothing, as an AND of
    six KBs would; the Amazon Linux 2 lookup answers as recorded."""
    clients, stub, fleet = stubbed()
    ssm = clients.client("ssm", REGION)
    instances = dated_fleet(stub, ssm)
    stub.add_response("describe_available_patches", {"Patches": []})
    stub.add_response(
        "describe_available_patches",
        recorded(ssm, "DescribeAvailablePatches", "ssm_describe_available_patches_amazon_linux_2"),
        {"Filters": AMAZON_LINUX_2_FILTERS, "MaxResults": 100},
    )

    windows, _, also_windows, _ = fleet.patch_states(instances)

    clients.done()
    for state in (windows, also_windows):
        assert state.error == ""
        assert len(state.missing) == 6  # every gap still reported
        assert all(p.released_at is None for p in state.missing)  # no age rather than a wrong one
