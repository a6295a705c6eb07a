"""The one loader of the hub's YAML configuration files (the institution registry, the
recognition catalogue, the matching rules), with one error format.

Every problem reading such a file is a :class:`ConfigYamlError` (a ``ConfigError``) that reads
``<file>: invalid <what>: <reason>``, the reason being one of:

- ``cannot read the file: <why>`` — missing, unreadable, a directory;
- ``not UTF-8 text: <why>``;
- ``not valid YAML: <problem> at line <n>, column <m>`` (with ruamel's context when it has one);
- ``expected <shape>, found <a list | a string | nothing | …>`` — valid YAML of the wrong type.

What the content means is each file's own business (its model reports those problems).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from services.common.errors import ConfigError

__all__ = ["ConfigYamlError", "load_mapping"]


class ConfigYamlError(ConfigError):
    """A configuration file that could not be read as the YAML it must be."""

    def __init__(self, source: str, what: str, reason: str) -> None:
        self.source = source
        self.what = what
        self.reason = reason
        super().__init__(f"{source}: invalid {what}: {reason}")


def _yaml_reason(exc: YAMLError) -> str:
    if isinstance(exc, MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({exc.context})" if exc.context else ""
        return f"{exc.problem}{where}{context}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def load_mapping(path: Path | str, *, what: str, expected: str = "a mapping") -> dict[Any, Any]:
    """The YAML mapping at the top of ``path`` (read with the safe loader, duplicate keys
    refused), or :class:`ConfigYamlError`. ``what`` names the file's role in the message
    (``institution registry``); ``expected`` describes the top-level mapping for a file of
    another shape (``a mapping with the key 'institutions:'``)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigYamlError(source, what, f"not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise ConfigYamlError(source, what, f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ConfigYamlError(source, what, f"not valid YAML: {_yaml_reason(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigYamlError(source, what, f"expected {expected}, found {_kind(data)}")
    return data
