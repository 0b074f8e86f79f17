"""The Azure Function App (Python v2 programming model): registers the blueprints of
`azure_functions/`. Nothing here reads settings or builds clients: `deps()` does, on first use.

Functions: `timer` (every 15 minutes), `step_worker` (the steps queue), `approve` and
`run_status` (HTTP, function key), `slack_interaction` (HTTP: Slack button presses),
`pre_maintenance` and `post_maintenance` (Event Grid: Azure Update Manager's maintenance events),
`advisory` (Event Grid: security advisories become emergency runs).
"""

import azure.functions as func

from azure_functions import advisories, http_api, maintenance, steps, timer

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (timer.bp, steps.bp, http_api.bp, maintenance.bp, advisories.bp):
    app.register_functions(blueprint)
