"""The application layer: what the runtimes do with their ports, the same on every cloud.

Each module is a function or a small class that takes its ports explicitly (constructor
arguments, often as functions so that a runtime builds a port only when it is used: a cold start
pays for every client). It imports the core and the ports only, never an adapter or an SDK; the
runtimes (`bootstrap/aws.py`, `bootstrap/azure.py`, `bootstrap/serverless.py`)
build the ports and call it.

- `discovery`: one discovery of a policy's fleet serves a minute (timer tick, advisory burst)
- `overview`: the overview page beside the reports, written again from the run table
- `compliance_timer`: the compliance scans and reports of `policy.compliance`
- `watch`: the maintenance watch (hourly reads, alerts, digests)
- `timer`: the timer tick: the above, then the scheduled run by the policy's kind
- `approvals`: the approval endpoints (signed links, Slack buttons) and their answers
- `update_manager_events`: Azure Update Manager's pre- and post-maintenance events
- `azure_advisories`: Azure's own advisories (Defender for Cloud, Update Manager's critical updates) on the timer
"""
