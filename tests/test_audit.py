"""``flagwire audit`` and ``flagwire diff``, and the once-per-process expiry warning."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from flagwire import FlagSet
from flagwire._cli.audit import chosen_variants, rule_outcomes
from flagwire._cli.main import main
from flagwire._engine.definitions import parse_document
from flagwire._engine.fractions import fractional_shares

FIXTURES = Path(__file__).parent / "fixtures" / "audit"
HYGIENE = str(FIXTURES / "hygiene.json")
CLEAN = str(FIXTURES / "clean.yaml")
INVALID = str(FIXTURES / "invalid.json")
BEFORE = str(FIXTURES / "rollout-before.json")
AFTER = str(FIXTURES / "rollout-after.json")

# What hygiene.json holds, judged on 2025-06-01 with the default policy.
HYGIENE_FINDINGS = {
    ("expired-flag", "expired", "error"),
    ("expiring-flag", "expiring", "warning"),
    ("ownerless-flag", "missing-owner", "warning"),
    ("undated-flag", "missing-expires", "warning"),
    ("unreachable-flag", "unreachable-variant", "warning"),
    ("static-flag", "rolled-out", "warning"),
    ("full-fractional-flag", "rolled-out", "warning"),
    ("same-branches-flag", "rolled-out", "warning"),
}


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _kinds(out: Any) -> set[tuple[str, str, str]]:
    return {(f["flag"], f["kind"], f["severity"]) for f in out["findings"]}


# -- audit: the CLI ----------------------------------------------------------------------


def test_audit_json_lists_the_known_findings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_json(capsys, "audit", HYGIENE, "--today", "2025-06-01")

    assert code == 1  # an expired flag always breaks the policy
    assert set(out) == {"findings", "ok"}
    assert out["ok"] is False
    for finding in out["findings"]:
        assert set(finding) == {"file", "flag", "kind", "detail", "owner", "severity"}
        assert finding["file"] == HYGIENE
    assert _kinds(out) == HYGIENE_FINDINGS
    by_flag = {f["flag"]: f for f in out["findings"] if f["kind"] != "rolled-out"}
    assert by_flag["expired-flag"]["detail"] == "expired on 2025-05-01 (31 days ago)"
    assert by_flag["expired-flag"]["owner"] == "growth"
    assert by_flag["expiring-flag"]["detail"] == "expires on 2025-06-10 (in 9 days)"
    assert by_flag["ownerless-flag"]["owner"] is None
    assert '"c"' in by_flag["unreachable-flag"]["detail"]


def test_audit_table_has_one_line_per_finding(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", HYGIENE, "--today", "2025-06-01"])

    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].split() == ["FILE", "FLAG", "FINDING", "DETAIL", "OWNER"]
    assert len(lines) == 1 + len(HYGIENE_FINDINGS) + 1
    expired = next(line for line in lines if "expired-flag" in line)
    assert expired.startswith(HYGIENE)
    assert "expired (error)" in expired
    assert expired.rstrip().endswith("growth")
    assert lines[-1].endswith("policy broken")


def test_audit_today_decides_what_is_expired(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_json(capsys, "audit", HYGIENE, "--today", "2025-04-01")

    assert code == 0
    assert out["ok"] is True
    assert not {k for _, k, _ in _kinds(out)} & {"expired", "expiring"}

    code, out = _run_json(
        capsys, "audit", HYGIENE, "--today", "2025-04-01", "--expiring-within", "30"
    )
    assert code == 0
    assert ("expired-flag", "expiring", "warning") in _kinds(out)
    assert ("expiring-flag", "expiring", "warning") not in _kinds(out)  # 70 days away

    code, out = _run_json(capsys, "audit", HYGIENE, "--today", "2025-06-10")
    assert ("expiring-flag", "expiring", "warning") in _kinds(out)  # expires today
    code, out = _run_json(capsys, "audit", HYGIENE, "--today", "2025-06-11")
    assert code == 1
    assert ("expiring-flag", "expired", "error") in _kinds(out)


@pytest.mark.parametrize(
    ("require", "broken"),
    [
        ("owner", {("ownerless-flag", "missing-owner", "error")}),
        ("expires", {("undated-flag", "missing-expires", "error")}),
        (
            "owner,expires",
            {
                ("ownerless-flag", "missing-owner", "error"),
                ("undated-flag", "missing-expires", "error"),
            },
        ),
    ],
)
def test_audit_require_makes_missing_fields_errors(
    capsys: pytest.CaptureFixture[str], require: str, broken: set[tuple[str, str, str]]
) -> None:
    code, out = _run_json(capsys, "audit", HYGIENE, "--today", "2025-04-01", "--require", require)

    assert code == 1
    assert out["ok"] is False
    assert {f for f in _kinds(out) if f[2] == "error"} == broken


def test_audit_require_other_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_json(capsys, "audit", HYGIENE, "--today", "2025-04-01", "--require", "kind")

    assert code == 1
    missing = {flag for flag, kind, sev in _kinds(out) if kind == "missing-kind"}
    assert "ownerless-flag" in missing
    assert "expired-flag" not in missing


def test_audit_clean_file_passes_a_strict_policy(capsys: pytest.CaptureFixture[str]) -> None:
    # clean.yaml names its owner once, in the flag set's metadata, for every flag.
    code, out = _run_json(capsys, "audit", CLEAN, "--require", "owner,expires,kind")

    assert code == 0
    assert out == {"findings": [], "ok": True}
    assert main(["audit", CLEAN]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


def test_audit_several_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_json(capsys, "audit", CLEAN, HYGIENE, "--today", "2025-06-01")

    assert code == 1
    assert {f["file"] for f in out["findings"]} == {HYGIENE}


def test_audit_invalid_file_exits_2_with_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", CLEAN, INVALID])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert 'flag "broken": state is "ON"' in captured.err
    assert INVALID in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["--today", "June 1st"],
        ["--require", "owner,color"],
        ["--expiring-within", "-3"],
    ],
)
def test_audit_bad_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["audit", CLEAN, *argv])
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_audit_bad_expires_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "flags.json"
    flag = {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}
    path.write_text(
        json.dumps({"flags": {"f": {**flag, "metadata": {"owner": "o", "expires": "soon"}}}})
    )

    code, out = _run_json(capsys, "audit", str(path))
    assert code == 0
    assert ("f", "bad-expires", "warning") in _kinds(out)

    code, out = _run_json(capsys, "audit", str(path), "--require", "expires")
    assert code == 1
    assert ("f", "bad-expires", "error") in _kinds(out)


def test_audit_does_not_repeat_the_runtime_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    key = f"old-{uuid.uuid4().hex}"
    path = tmp_path / "flags.json"
    flag = {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}
    path.write_text(json.dumps({"flags": {key: {**flag, "metadata": {"expires": "2020-01-01"}}}}))

    with caplog.at_level(logging.WARNING, logger="flagwire"):
        assert main(["audit", str(path)]) == 1
    assert not [r for r in caplog.records if key in r.getMessage()]
    assert key in capsys.readouterr().out


# -- audit: the targeting analysis -------------------------------------------------------


def _definition(**flag: Any) -> Any:
    data = {"state": "ENABLED", "variants": {"a": 1, "b": 2, "c": 3}, "defaultVariant": "a"}
    data.update(flag)
    return parse_document({"flags": {"f": data}}).flags["f"]


@pytest.mark.parametrize(
    ("targeting", "expected"),
    [
        (None, {"a"}),
        ({}, {"a"}),
        ({"if": [{"var": "x"}, "b", "a"]}, {"a", "b"}),
        ({"if": [{"var": "x"}, "b"]}, {"a", "b"}),  # no else: null, the default
        ({"if": [{"var": "x"}, "b", {"var": "y"}, "c", "a"]}, {"a", "b", "c"}),
        ({"?:": [{"var": "x"}, "c", None]}, {"a", "c"}),
        # A fractional's buckets only (no targeting key gives the default: not counted).
        ({"fractional": [["b", 10], ["c", 90]]}, {"b", "c"}),
        ({"fractional": [{"var": "email"}, ["b", 0], ["c", 5]]}, {"c"}),
        ({"fractional": [["b", {"var": "pct"}], ["c", 5]]}, {"b", "c"}),
        ({"fractional": [["b", 50.5], ["c", 49.5]]}, {"a"}),  # malformed: always null
        ({"if": [{"var": "x"}, {"fractional": [["b", 1], ["c", 1]]}, "a"]}, {"a", "b", "c"}),
        ({"or": [{"if": [{"var": "x"}, "b", None]}, "c"]}, {"a", "b", "c"}),
    ],
)
def test_chosen_variants(targeting: Any, expected: set[str]) -> None:
    assert chosen_variants(_definition(targeting=targeting)) == expected


@pytest.mark.parametrize(
    "targeting",
    [
        {"var": "variant"},
        {"if": [{"var": "x"}, {"var": "variant"}, "a"]},
        {"if": [{"var": "x"}, {"cat": ["b", ""]}, "a"]},
        {"fractional": [[{"var": "variant"}, 50], ["a", 50]]},
        {"or": [{"var": "variant"}, "a"]},
        {"$ref": "undefined-evaluator"},
    ],
)
def test_computed_results_claim_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, targeting: Any
) -> None:
    assert chosen_variants(_definition(targeting=targeting)) is None

    path = tmp_path / "flags.json"
    flag = {
        "state": "ENABLED",
        "variants": {"a": 1, "b": 2, "c": 3},
        "defaultVariant": "a",
        "targeting": targeting,
        "metadata": {"owner": "o", "expires": "2099-12-31"},
    }
    path.write_text(json.dumps({"flags": {"f": flag}}))
    code, out = _run_json(capsys, "audit", str(path))
    assert (code, out) == (0, {"findings": [], "ok": True})


def test_the_default_variant_is_never_unreachable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    flag = {
        "state": "ENABLED",
        "variants": {"a": 1, "b": 2, "c": 3, "d": 4},
        "defaultVariant": "a",
        "targeting": {"fractional": [["b", 50], ["c", 50], ["d", 0]]},
        "metadata": {"owner": "o", "expires": "2099-12-31"},
    }
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": {"f": flag}}))

    code, out = _run_json(capsys, "audit", str(path))

    assert code == 0
    assert [(f["kind"], f["detail"]) for f in out["findings"]] == [
        (
            "unreachable-variant",
            'variant "d" can never be chosen (not the defaultVariant, '
            "not a possible result of the targeting)",
        )
    ]


def test_boolean_results_choose_true_or_false() -> None:
    definition = _definition(
        variants={"true": "yes", "false": "no", "maybe": "?"},
        defaultVariant="false",
        targeting={"in": ["@example.com", {"var": "email"}]},
    )
    assert chosen_variants(definition) == {"true", "false"}
    assert rule_outcomes({"starts_with": [{"var": "email"}, "a"]}) == {"true", "false", None}


@pytest.mark.parametrize(
    ("flag", "rolled_out"),
    [
        ({"targeting": None}, True),
        ({"targeting": {"fractional": [["b", 100]]}}, True),
        ({"targeting": {"fractional": [["b", 60], ["b", 40], ["c", 0]]}}, True),
        ({"targeting": {"if": [{"var": "x"}, "b", "b"]}}, True),
        ({"targeting": {"if": [{"var": "x"}, "a"]}}, True),  # else: the default, "a"
        ({"targeting": {"fractional": [["b", 99], ["c", 1]]}}, False),
        ({"targeting": {"if": [{"var": "x"}, "b", "c"]}}, False),
        ({"targeting": {"if": [{"var": "x"}, "b"]}}, False),  # else: the default, "a"
        ({"targeting": {"var": "x"}}, False),
        ({"targeting": None, "defaultVariant": None}, False),  # the code's default
        ({"targeting": None, "metadata": {"kind": "ops"}}, False),  # a kill switch
        ({"targeting": None, "metadata": {"kind": "permission"}}, False),
        ({"targeting": None, "state": "DISABLED"}, False),
    ],
)
def test_rolled_out_detection(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: dict[str, Any], rolled_out: bool
) -> None:
    data: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {"a": 1, "b": 2, "c": 3},
        "defaultVariant": "a",
        "metadata": {},
    }
    data.update(flag)
    data["metadata"] = {"owner": "o", "expires": "2099-12-31", **data["metadata"]}
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": {"f": data}}))

    code, out = _run_json(capsys, "audit", str(path))

    assert code == 0
    kinds = {kind for _, kind, _ in _kinds(out)}
    assert ("rolled-out" in kinds) is rolled_out
    if rolled_out:  # a finished rollout is one finding, not also unreachable variants
        assert kinds == {"rolled-out"}


def test_fractional_shares() -> None:
    assert fractional_shares([["on", 20], ["off", 80]]) == {"on": 20.0, "off": 80.0}
    assert fractional_shares(["email", ["on", 1], ["off", 3]]) == {"on": 25.0, "off": 75.0}
    assert fractional_shares([["on"], ["off"]]) == {"on": 50.0, "off": 50.0}
    assert fractional_shares([["on", {"var": "pct"}], ["off", 50]]) is None
    assert fractional_shares([["on", 0], ["off", 0]]) is None


# -- diff ---------------------------------------------------------------------------------


def _moves_in_process(key: str, sample: int) -> dict[tuple[Any, Any], int]:
    old, new = FlagSet.from_path(BEFORE), FlagSet.from_path(AFTER)
    counts: dict[tuple[Any, Any], int] = {}
    for i in range(sample):
        context = {"targetingKey": f"user-{i}"}
        pair = (old.evaluate(key, context).variant, new.evaluate(key, context).variant)
        if pair[0] != pair[1]:
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def test_diff_json_says_what_changed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_json(capsys, "diff", BEFORE, AFTER)

    assert code == 0
    assert out["old"] == BEFORE
    assert out["new"] == AFTER
    assert out["sample"] == 1000
    assert out["changed"] is True
    flags = {f["flag"]: f for f in out["flags"]}
    assert list(flags) == ["new-checkout", "banner", "search-v2", "old-header", "dark-mode"]
    assert {k: f["status"] for k, f in flags.items()} == {
        "new-checkout": "changed",
        "banner": "changed",
        "search-v2": "changed",
        "old-header": "removed",
        "dark-mode": "added",
    }

    [rollout] = flags["new-checkout"]["changes"]
    assert rollout["kind"] == "rollout"
    assert rollout["before"] == {"on": 20.0, "off": 80.0}
    assert rollout["after"] == {"on": 50.0, "off": 50.0}
    assert rollout["detail"] == "on 20% -> 50%, off 80% -> 50%"

    banner = {(c["kind"], c.get("variant")): c for c in flags["banner"]["changes"]}
    assert set(banner) == {
        ("default-variant", None),
        ("variant-changed", "red"),
        ("variant-added", "green"),
    }
    assert banner["default-variant", None]["before"] == "blue"
    assert banner["default-variant", None]["after"] == "red"
    assert banner["variant-changed", "red"]["after"] == "#e00"

    [state] = flags["search-v2"]["changes"]
    assert (state["kind"], state["before"], state["after"]) == ("state", "ENABLED", "DISABLED")
    assert flags["search-v2"]["moves"] == [{"from": "on", "to": None, "count": 1000}]
    assert flags["banner"]["moves"] == [{"from": "blue", "to": "red", "count": 1000}]


def test_diff_rollout_moves_about_30_percent_of_users(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_json(capsys, "diff", BEFORE, AFTER)
    assert code == 0

    expected = _moves_in_process("new-checkout", 1000)
    [(pair, count)] = expected.items()  # only off -> on: 20% -> 50% moves nobody back
    assert pair == ("off", "on")
    assert 250 <= count <= 350
    flag = next(f for f in out["flags"] if f["flag"] == "new-checkout")
    assert flag["moves"] == [{"from": "off", "to": "on", "count": count}]
    assert flag["moved"] == count

    assert main(["diff", BEFORE, AFTER]) == 0
    text = capsys.readouterr().out
    assert "new-checkout: changed" in text
    assert "  rollout: on 20% -> 50%, off 80% -> 50%" in text
    assert f"  moves: off -> on: {count} of 1000 sample users" in text
    assert "old-header: removed" in text
    assert "dark-mode: added" in text


def test_diff_sample_size(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_json(capsys, "diff", BEFORE, AFTER, "--sample", "200")

    assert code == 0
    assert out["sample"] == 200
    flag = next(f for f in out["flags"] if f["flag"] == "new-checkout")
    assert flag["moved"] == sum(_moves_in_process("new-checkout", 200).values())

    code, out = _run_json(capsys, "diff", BEFORE, AFTER, "--sample", "0")
    assert all(f["moves"] == [] for f in out["flags"])


def test_diff_of_a_file_with_itself(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_json(capsys, "diff", BEFORE, BEFORE)
    assert (code, out["flags"], out["changed"]) == (0, [], False)

    assert main(["diff", BEFORE, BEFORE]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no changes"


def test_diff_targeting_and_metadata_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def write(name: str, targeting: Any, owner: str) -> str:
        flag = {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": targeting,
            "metadata": {"owner": owner},
        }
        path = tmp_path / name
        path.write_text(json.dumps({"flags": {"f": flag}}))
        return str(path)

    old = write("old.json", {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", "off"]}, "a")
    new = write("new.json", {"if": [{"==": [{"var": "plan"}, "team"]}, "on", "off"]}, "b")

    code, out = _run_json(capsys, "diff", old, new)

    assert code == 0
    [flag] = out["flags"]
    kinds = [c["kind"] for c in flag["changes"]]
    assert kinds == ["targeting", "metadata"]
    assert flag["changes"][1] == {
        "kind": "metadata",
        "detail": 'owner: "a" -> "b"',
        "before": "a",
        "after": "b",
        "key": "owner",
    }
    assert flag["moves"] == []  # the sample users have no plan: nobody moves


def test_diff_invalid_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", BEFORE, INVALID]) == 2
    captured = capsys.readouterr()
    assert 'flag "broken": state is "ON"' in captured.err
    assert main(["diff", str(FIXTURES / "no-such-file.json"), AFTER]) == 2
    assert "file not found" in capsys.readouterr().err


# -- the runtime warning ------------------------------------------------------------------


def test_an_expired_flag_warns_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    expired = f"expired-{uuid.uuid4().hex}"
    current = f"current-{uuid.uuid4().hex}"
    document = {
        "flags": {
            expired: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "on",
                "metadata": {"owner": "web", "expires": "2020-01-31"},
            },
            current: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "on",
                "metadata": {"owner": "web", "expires": "2999-12-31"},
            },
        }
    }

    with caplog.at_level(logging.WARNING, logger="flagwire"):
        first = FlagSet.from_mapping(document)
        FlagSet.from_mapping(document)
        FlagSet.from_mapping(document)

    records = [r for r in caplog.records if r.name == "flagwire" and expired in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (
            logging.WARNING,
            f'flag "{expired}" expired on 2020-01-31 (owner: web); remove it or extend expires',
        )
    ]
    assert not [r for r in caplog.records if current in r.getMessage()]
    assert first.evaluate(expired, {}, False).value is True  # evaluation unchanged


def test_expiry_warning_without_an_owner(caplog: pytest.LogCaptureFixture) -> None:
    key = f"expired-{uuid.uuid4().hex}"
    flag = {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}
    with caplog.at_level(logging.WARNING, logger="flagwire"):
        FlagSet.from_mapping({"flags": {key: {**flag, "metadata": {"expires": "2020-01-31"}}}})
    [message] = [r.getMessage() for r in caplog.records if key in r.getMessage()]
    assert "(owner: none)" in message


def test_audit_reports_a_variant_name_that_is_not_a_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {
        "flags": {
            "checkout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"fractional": [["onn", 20], ["off", 80]]},
                "metadata": {"owner": "team", "expires": "2099-01-01"},
            }
        }
    }
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    code, out = _run_json(capsys, "audit", str(path))
    assert code == 1
    [finding] = [f for f in out["findings"] if f["kind"] == "unknown-variant"]
    assert finding["severity"] == "error"
    assert 'did you mean "on"?' in finding["detail"]
