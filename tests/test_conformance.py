"""flagd test-bed conformance: the in-process evaluation scenarios, run against flagwire.

The test bed (open-feature/flagd-testbed data files, see its ``SOURCE.md``) lives outside
the project, in ``../shared/conformance/flagd-testbed`` or wherever ``$FLAGWIRE_TESTBED``
points. Nothing is copied from it: the ``.feature`` and flag files are read at test time.

What runs:

* every scenario of ``evaluator/gherkin/*.feature`` (flags:
  ``evaluator/flags/testkit-flags.json``);
* the evaluation scenarios of the root ``gherkin/*.feature`` listed in ``ROOT_FEATURES``
  (flags: ``allFlags.json``, the deep merge of every ``flags/*.json`` except
  ``selector-*``, or the one file a ``selector`` option names; flagd's static context
  from the provider's ``launchpad/configs/*.json`` is merged into the evaluation context).

Each scenario (each example row of an outline) runs once per fractional algorithm:
``@fractional-v2`` rows only under v2, ``@fractional-v3`` rows only under v3, untagged
ones under both. Test ids read ``<suite>/<file>::<scenario>[<version>-<row>]``.

What does not run is listed below, each with its reason; ``test_exclusions_are_current``
fails when an entry matches nothing or when the test bed grows a root feature file that
is neither run nor listed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conformance_support import Case, Plan, plan, run_case

TESTBED_ENV = "FLAGWIRE_TESTBED"
DEFAULT_TESTBED = Path(__file__).resolve().parents[1].parent / "shared/conformance/flagd-testbed"


def _testbed() -> Path:
    configured = os.environ.get(TESTBED_ENV)
    return Path(configured).expanduser().resolve() if configured else DEFAULT_TESTBED


TESTBED = _testbed()
MISSING_MESSAGE = (
    f"flagd test bed not found at {TESTBED} "
    f"(${TESTBED_ENV} is {os.environ.get(TESTBED_ENV)!r}; without it the default is "
    f"{DEFAULT_TESTBED}). Point ${TESTBED_ENV} at a flagd-testbed data folder."
)

ROOT_FEATURES: tuple[str, ...] = (
    "root/targeting.feature",
    "root/evaluation.feature",
    "root/metadata.feature",
    "root/disabled.feature",
    "root/contextEnrichment.feature",
    "root/selector.feature",
    "root/sync-payload.feature",
)
"""Root-suite feature files about evaluation (their connection scenarios are excluded)."""

EXCLUDED_FEATURES: dict[str, str] = {
    "root/config.feature": (
        "provider configuration (host, port, TLS, env vars, resolver type): "
        "no flag is evaluated; flagwire has no flagd provider options"
    ),
    "root/connection.feature": (
        "connecting to and reconnecting with a flagd server: needs a connection"
    ),
    "root/events.feature": (
        "@events: provider ready/stale/error/change events: needs a connection"
    ),
    "root/rpc-caching.feature": (
        "@rpc @caching: the RPC resolver's cache: gRPC only, needs a connection"
    ),
}
"""Whole root-suite feature files that are not run."""

EXCLUDED_SCENARIOS: dict[tuple[str, str], str] = {
    ("root/evaluation.feature", "Resolves flag with no defaultValue correctly"): (
        "@deprecated (@no-default): superseded by @no-default-variant, which runs; "
        "it expects the retired FLAG_NOT_FOUND for a missing defaultVariant"
    ),
    ("root/contextEnrichment.feature", "Use enriched context on connection error for IN-PROCESS"): (
        "@grace: evaluates during a connection loss and waits for stale/ready events"
    ),
    ("root/contextEnrichment.feature", "Use enriched context on connection error for RPC"): (
        "@grace @rpc: RPC resolver during a connection loss, with stale/ready events"
    ),
    (
        "root/contextEnrichment.feature",
        "Use enriched context on RPC connection will not cache the value",
    ): "@rpc @caching: modifies the flag on the server and waits for a change event",
    ("root/sync-payload.feature", "Use enriched context on connection error for IN-PROCESS"): (
        "@grace: evaluates during a connection loss and waits for stale/ready events"
    ),
}
"""Single scenarios (every example row of them) that are not run."""

EXCLUDED_TAGS: dict[str, str] = {
    "@fractional-v1": (
        "legacy 1%-bucket fractional (abs(int32 hash) / MaxInt32 * 100), obsolete; "
        "flagwire implements only v2 and v3"
    ),
}
"""Example rows carrying one of these tags are not run, under any fractional version."""


def _plan() -> Plan | None:
    if not TESTBED.is_dir():
        return None
    return plan(
        TESTBED,
        root_features=ROOT_FEATURES,
        excluded_features=EXCLUDED_FEATURES,
        excluded_scenarios=EXCLUDED_SCENARIOS,
        excluded_tags=EXCLUDED_TAGS,
    )


PLAN = _plan()

_PARAMS = (
    [pytest.param(case, id=case.test_id) for case in PLAN.cases]
    if PLAN is not None
    else [pytest.param(None, id="testbed-missing")]  # fail, never an empty (skipped) set
)


def test_testbed_is_present() -> None:
    assert TESTBED.is_dir(), MISSING_MESSAGE
    assert PLAN is not None and PLAN.cases, f"no scenarios found in {TESTBED}"


def test_exclusions_are_current() -> None:
    assert PLAN is not None, MISSING_MESSAGE
    assert not PLAN.unused_exclusions, (
        f"exclusion entries that match no scenario (stale?): {PLAN.unused_exclusions}"
    )
    assert not PLAN.out_of_scope_features, (
        "root feature files neither in ROOT_FEATURES nor in EXCLUDED_FEATURES: "
        f"{PLAN.out_of_scope_features}"
    )
    ids = [case.test_id for case in PLAN.cases]
    assert len(ids) == len(set(ids)), "test ids are not unique"


@pytest.mark.parametrize("case", _PARAMS)
def test_scenario(case: Case | None) -> None:
    assert case is not None, MISSING_MESSAGE
    run_case(case)
