"""The Azure Function App (Python v2 programming model): registers the blueprints of
`azure_functions/`. Nothing here builds clients: `deps()` does, on first use.

Functions: `timer` (every 15 minutes), `step_worker` (the steps queue), `approve` and
`run_status` (HTTP, function key), `slack_interaction` (HTTP: Slack button presses),
`pre_maintenance` and `post_maintenance` (Event Grid: Azure Update Manager's maintenance events),
`advisory` (Event Grid: security advisories become emergency runs), `wake_up` (Event Grid: a VM's
or snapshot's write or action has ended; the run awaiting it is woken).

One package, two Function Apps (infra/azure/main.bicep): the app setting `PATCHPILOT_FUNCTIONS`
chooses what an app hosts, so that the internet-facing HTTP functions never run with the
identity that holds the fleet role. `http`: only the HTTP functions; `worker`: everything else;
unset: everything (local runs, tests). It is the one setting read at import: the worker indexes
the functions by importing this module.
"""

import os

import azure.functions as func

from azure_functions import advisories, http_api, maintenance, steps, timer, wakeups

FUNCTIONS_SETTING = "PATCHPILOT_FUNCTIONS"
HTTP_BLUEPRINTS = (http_api.bp,)
WORKER_BLUEPRINTS = (timer.bp, steps.bp, maintenance.bp, advisories.bp, wakeups.bp)
BLUEPRINTS = {
    "http": HTTP_BLUEPRINTS,
    "worker": WORKER_BLUEPRINTS,
    "all": (timer.bp, steps.bp, http_api.bp, maintenance.bp, advisories.bp, wakeups.bp),
}


def build_app(functions: str = "") -> func.FunctionApp:
    """The app hosting `functions` (`http`, `worker`; blank: all). ValueError naming the setting
    for anything else: the host then indexes nothing and logs why."""
    chosen = functions.strip().lower() or "all"
    if chosen not in BLUEPRINTS:
        raise ValueError(
            f"app setting {FUNCTIONS_SETTING}={functions!r}: expected 'http' (the HTTP functions), "
            "'worker' (every other function) or nothing (all functions)"
        )
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    for blueprint in BLUEPRINTS[chosen]:
        app.register_functions(blueprint)
    return app


app = build_app(os.environ.get(FUNCTIONS_SETTING, ""))
