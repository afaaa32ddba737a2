"""Load the `EXPERIMENT` from a config file and apply `--set key=value` overrides."""

from __future__ import annotations

import ast
import dataclasses
import re
import runpy
from pathlib import Path
from typing import Any

from gsrcl.config import settings
from gsrcl.config.settings import Experiment
from gsrcl.errors import UserError

_UNKNOWN_FIELD = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
_MISSING_FIELD = re.compile(r"(\w+)\.__init__\(\) missing \d+ required \w+ arguments?: (.+)")


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Run the config file, take its `EXPERIMENT`, apply overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing file with --config")
    try:
        namespace = runpy.run_path(str(path))
    except TypeError as error:
        raise UserError(f"{path}: {_explain_type_error(error)}") from None
    except SyntaxError as error:
        raise UserError(f"{path}, line {error.lineno}: {error.msg}") from None
    except (NameError, ImportError, AttributeError, ValueError) as error:
        raise UserError(f"{path}: {type(error).__name__}: {error}") from None
    experiment = namespace.get("EXPERIMENT")
    if not isinstance(experiment, Experiment):
        raise UserError(f"{path} must define EXPERIMENT = Experiment(...)")
    for override in overrides:
        experiment = apply_override(experiment, override)
    return experiment.validate()


def apply_override(experiment: Experiment, override: str) -> Experiment:
    """`contrastive.epochs=20` → a copy of the experiment with that field replaced."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise UserError(f"--set {override!r}: write it as section.field=value")
    return _replace_path(experiment, key.strip().split("."), _parse_value(text.strip()), key)


def _replace_path(obj: Any, parts: list[str], value: Any, key: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    if parts[0] not in names:
        raise UserError(
            f"--set {key}: {type(obj).__name__} has no field {parts[0]!r}; fields: {names}"
        )
    if len(parts) > 1:
        child = getattr(obj, parts[0])
        if not dataclasses.is_dataclass(child):
            raise UserError(f"--set {key}: {parts[0]!r} is not a section with fields")
        value = _replace_path(child, parts[1:], value, key)
    return dataclasses.replace(obj, **{parts[0]: value})


def _parse_value(text: str) -> Any:
    """Python literals (20, 1e-3, [1, 2], None, 'cpu'); anything else is taken as a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _explain_type_error(error: TypeError) -> str:
    message = str(error)
    if match := _UNKNOWN_FIELD.search(message):
        cls, name = match.groups()
        return f"{cls} has no field {name!r}; its fields are {_field_names(cls)}"
    if match := _MISSING_FIELD.search(message):
        cls, missing = match.groups()
        return f"{cls} needs {missing}; its fields are {_field_names(cls)}"
    return message


def _field_names(cls_name: str) -> list[str]:
    cls = getattr(settings, cls_name, None)
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
