"""AWS Lambda handlers: thin shims over `patchpilot.bootstrap.aws` (see template.yaml).

Cold starts: loading a handler module (boto3, powertools, pydantic and our models) allocates
some 150,000 long-lived objects. The garbage collections this triggers free little, yet cost
about a tenth of the import, and the collections of the first requests traverse all those
objects again. So the collector is paused from here (this package loads before any handler
module) until the handler module calls `loaded()` at its end, which moves every object loaded
so far to the permanent generation that collections skip (`gc.freeze`) and resumes collecting.
The cyclic garbage the imports left (a few MB) is frozen with them: a full collection at that
point would cost more time than the pause saves.
"""

import gc

_collecting = gc.isenabled()
gc.disable()


def loaded() -> None:
    """The end of a handler module: freeze what is loaded, and collect again from now on."""
    gc.freeze()
    if _collecting:
        gc.enable()
