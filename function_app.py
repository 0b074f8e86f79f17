"""The Azure Function App (Python v2 programming model): registers the blueprints of
`azure_functions/`. Nothing here reads settings or builds clients: `deps()` does, on first use.

Functions: `timer` (every 15 minutes), `step_worker` (the steps queue), `approve` and
`run_status` (HTTP, function key), `pre_maintenance` and `post_maintenance` (Event Grid: Azure
Update Manager's maintenance events).
"""

import azure.functions as func

from azure_functions import http_api, maintenance, steps, timer

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (timer.bp, steps.bp, http_api.bp, maintenance.bp):
    app.register_functions(blueprint)
