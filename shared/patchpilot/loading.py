"""Loading a process's modules with the cyclic garbage collector paused.

Importing the `patchpilot` command or a Lambda handler (click or boto3 and powertools, pydantic,
the policy, inventory and message models) allocates some 150,000 to 200,000 objects that live as
long as the process. The collections they trigger free little, yet cost about a tenth of a cold
import and a twentieth of `patchpilot validate` of a large fleet (bench/bench_cold_start.py,
bench/bench_cli_plan.py), and the collections of the first requests would traverse them all again.
So an entry point imports this module before anything else, which pauses the collector, and calls
`loaded()` at its end, which moves everything loaded so far to the permanent generation that
collections skip (`gc.freeze`) and resumes collecting. The cyclic garbage the imports left (a few
MB) is frozen with them: a full collection at that point would cost more than the pause saves.

For the same reason the plain value records on the handlers' import path are `typing.NamedTuple`s,
not dataclasses: on Python 3.11 creating a `@dataclass(frozen=True)` class costs about 0.57 ms
(one `exec` for each of six generated methods), a plain `@dataclass` 0.30 ms, a NamedTuple
0.10 ms. The worker's import created 30 of ours, some 18 ms of a ~390 ms cold import. A record
stays a dataclass where being a tuple would show: a truth test of its own, a field named like a
tuple method, or validation by pydantic (tests/test_handler_imports.py lists each with its reason);
a list a record defaults to empty is a sequence defaulting to `()`.
"""

import gc

_collecting = gc.isenabled()
gc.disable()


def loaded() -> None:
    """The end of an entry point's loading: freeze what is loaded, and collect again from now on."""
    gc.freeze()
    if _collecting:
        gc.enable()
