import os as _os
from collections.abc import Iterator

import pytest
from aws_fidelity import aws_answers_checked  # noqa: F401 (autouse: no unvalidated AWS answer)
from hypothesis import settings as _hypothesis_settings

# --- Hypothesis profiles (planner property tests) -------------------------------------------
# "ci" is loaded when the CI environment variable is set: reproducible (derandomized) and
# printing a blob to replay any failure; "dev" is the default elsewhere. HYPOTHESIS_PROFILE
# picks one explicitly.
_hypothesis_settings.register_profile("ci", deadline=None, max_examples=150, derandomize=True, print_blob=True)
_hypothesis_settings.register_profile("dev", deadline=None, max_examples=100)
_hypothesis_settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _os.environ.get("CI") else "dev"))
# --- end of Hypothesis profiles ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_process_secrets() -> Iterator[None]:
    """The secrets a test's notifier read are redacted from later logs of the same process
    (`patchpilot.redact.PROCESS_SECRETS`): each test starts as a fresh process would."""
    from patchpilot.redact import PROCESS_SECRETS

    yield
    PROCESS_SECRETS.clear()


@pytest.fixture(autouse=True)
def _arm_held_to_the_specifications(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every fake ARM holds requests and answers to the Azure REST API specifications
    (tests/arm_spec.py, docs/fidelity.md): a request the specification refuses gets ARM's 400, and
    an answer of the fake that breaks its response schema fails the test."""
    from arm_spec import SpecCheck
    from fake_arm import FakeArm

    made: list[SpecCheck] = []
    plain_init = FakeArm.__init__

    def init(self: FakeArm, *args: object, **kwargs: object) -> None:
        plain_init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.spec_check = check = SpecCheck()
        made.append(check)

    monkeypatch.setattr(FakeArm, "__init__", init)
    yield
    broken = [problem for check in made for problem in check.problems]
    assert not broken, "the fake ARM answered against the specifications:\n" + "\n".join(broken)
