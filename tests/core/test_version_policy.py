"""Version policies: the setting's short form, Triton's JSON form in config.json, selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.errors import InvalidConfig
from service.core.version_policy import VersionPolicy, read_model_config


@pytest.mark.parametrize(
    ("text", "policy", "selected"),
    [
        ("latest", VersionPolicy("latest", 1), {10}),
        ("latest:2", VersionPolicy("latest", 2), {3, 10}),
        (" LATEST : 9 ", VersionPolicy("latest", 9), {1, 2, 3, 10}),
        ("all", VersionPolicy("all"), {1, 2, 3, 10}),
        ("specific:3,1,7", VersionPolicy("specific", versions=(1, 3, 7)), {1, 3}),
    ],
)
def test_setting_form_parses_and_selects(
    text: str, policy: VersionPolicy, selected: set[int]
) -> None:
    assert VersionPolicy.parse(text) == policy
    assert policy.select([1, 2, 3, 10]) == selected  # numeric order: 10 is the latest
    assert VersionPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    "text",
    ["newest", "latest:0", "latest:x", "all:2", "specific:", "specific:a", "specific:\u0661"],
)
def test_bad_setting_forms_are_refused(text: str) -> None:
    with pytest.raises(InvalidConfig):
        VersionPolicy.parse(text)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"version_policy": {"latest": {"num_versions": 2}}}, VersionPolicy("latest", 2)),
        ({"version_policy": {"latest": {}}}, VersionPolicy("latest", 1)),
        ({"version_policy": {"all": {}}}, VersionPolicy("all")),
        (
            {"version_policy": {"specific": {"versions": [3, 1]}}},
            VersionPolicy("specific", 1, (1, 3)),
        ),
        ({}, None),
    ],
)
def test_model_config_json(tmp_path: Path, config: object, expected: VersionPolicy | None) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert read_model_config(tmp_path) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "unreadable"),
        ("[]", "must be a JSON object"),
        ('{"version_polcy": {}}', "unknown key(s) ['version_polcy']"),
        ('{"version_policy": {"latest": {}, "all": {}}}', "one key"),
        ('{"version_policy": {"latest": {"num_versions": 0}}}', "num_versions"),
        ('{"version_policy": {"latest": {"num_versions": true}}}', "num_versions"),
        ('{"version_policy": {"specific": {"versions": []}}}', "non-empty list"),
        ('{"version_policy": {"specific": {"versions": [0]}}}', "non-empty list"),
        ('{"version_policy": {"newest": {}}}', "unknown version_policy 'newest'"),
    ],
)
def test_bad_model_config_names_the_file_and_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InvalidConfig, match=r"config\.json") as info:
        read_model_config(tmp_path)
    assert message in info.value.message


def test_no_config_file_means_no_policy_of_its_own(tmp_path: Path) -> None:
    assert read_model_config(tmp_path) is None
