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


@pytest.mark.parametrize("role", roles())
def test_defaults_pass_the_roles_own_validation(role):
    """ansible-core validates a role's arguments with its defaults filled in (a null default included), so a
    default its own spec refuses (choices against null, say) fails every run before the first task."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    options = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    required = {key: "x" for key, value in options.items() if value.get("required")}
    result = ArgumentSpecValidator(_without_docs(options)).validate(dict(defaults, **required))
    assert result.error_messages == []


def _without_docs(options):
    """The spec as the validator takes it: a role spec's description/version_added keys are for the docs only."""
    return {key: dict({k: v for k, v in value.items() if k not in ("description", "version_added")},
                      **({"options": _without_docs(value["options"])} if "options" in value else {}))
            for key, value in options.items()}
