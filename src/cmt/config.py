"""Config validation with messages that name the key path and what is allowed there."""

from __future__ import annotations

from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


def _resolve(schema: dict, root: dict) -> dict:
    """Follow local `$ref`s ("#/$defs/x") and merge their properties into one view."""
    merged = dict(schema)
    ref = schema.get("$ref")
    if ref and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        target = _resolve(target, root)
        merged["properties"] = {**target.get("properties", {}), **schema.get("properties", {})}
    return merged


def _format(error, root: dict) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(_resolve(error.schema, root).get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        return f"config key {path}: unknown key(s) {unexpected}; allowed: {allowed}"
    if error.validator == "propertyNames":
        return f"config key {path}: {error.message}"
    if error.validator == "enum":
        return f"config key {path}: {error.instance!r} is not allowed; valid values: {error.validator_value}"
    if error.validator == "required":
        return f"config key {path}: {error.message}"
    if error.validator == "oneOf" and error.context:
        options = "; ".join(sorted({e.message for e in error.context}))
        return f"config key {path}: {error.instance!r} matches no allowed form ({options})"
    return f"config key {path}: {error.message}"


def config_errors(config: dict, schema_path: str | Path) -> list[str]:
    """Every schema violation in `config`, one readable line each (empty when valid)."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [_format(e, schema) for e in errors]


def check_config(config: dict, schema_path: str | Path) -> None:
    errors = config_errors(config, schema_path)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
