"""The study schema (schema/config.schema.yaml): the one place where options and their defaults
are declared. Validation fills the defaults in, so a study file only says what differs."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("schema") / "config.schema.yaml"


def _with_defaults(validator_class):
    """jsonschema's documented recipe: fill in `default` values while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


@cache
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_schema(raw: dict | None) -> dict:
    """Validate against the schema and return a copy with every default filled in."""
    cfg = copy.deepcopy(raw or {})
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        message = e.message
        if e.validator == "pattern" and e.schema.get("description"):  # the rule in words, not the regex
            message = f"{e.instance!r} is not allowed: {e.schema['description'].rstrip('.')}"
        raise ConfigError(f"config: {where}: {message}")
    return cfg


def defaults() -> dict:
    """Every section with its defaults, as an empty study gets them."""
    return validate_schema({})
