# -*- coding: utf-8 -*-
"""Every role's defaults/main.yml and meta/argument_specs.yml name the same variables, with the same defaults."""
from __future__ import annotations

import pathlib

import pytest
import yaml

ROLES = pathlib.Path(__file__).resolve().parents[3] / "roles"


def roles():
    return sorted(p.name for p in ROLES.iterdir() if (p / "meta" / "argument_specs.yml").exists()) if ROLES.is_dir() else []


@pytest.mark.parametrize("role", roles())
def test_defaults_match_argument_specs(role):
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    spec = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(k for k, v in options.items() if "default" in v or not v.get("required"))
    for key, value in defaults.items():
        assert options[key].get("default") == value, key
        assert key.startswith(role + "_"), key
