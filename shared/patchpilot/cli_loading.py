"""Loading the `patchpilot` command with the cyclic garbage collector paused.

Importing `patchpilot.cli` (click, pydantic, the policy and inventory models and their validators)
allocates some 200,000 objects that live as long as the process. The collections they trigger
free nothing and cost about a twentieth of `patchpilot validate` of a large fleet
(bench/bench_cli_plan.py). So `patchpilot.cli` imports this module before its own modules, which
pauses the collector, and calls `loaded()` at its end, which moves what has loaded to the
permanent generation that collections skip (`gc.freeze`) and resumes collecting: as
aws_lambda/__init__.py does for the Lambda handlers.
"""

import gc

_collecting = gc.isenabled()
gc.disable()


def loaded() -> None:
    """The end of `patchpilot.cli`: freeze what is loaded, and collect again from now on."""
    gc.freeze()
    if _collecting:
        gc.enable()
