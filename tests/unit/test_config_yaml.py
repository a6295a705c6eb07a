"""One YAML loader, one error format: ``<file>: invalid <what>: <reason>`` for every
configuration file the hub reads (registry, catalogue, matching rules)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from services.common.config_yaml import ConfigYamlError, load_mapping
from services.common.errors import ConfigError
from services.common.institutions import Registry
from services.patient_index.matching import load_rules
from services.recognition.catalog import load_catalog


def _error(path: Path) -> str:
    with pytest.raises(ConfigYamlError) as info:
        load_mapping(path, what="test file", expected="a mapping with the key 'x:'")
    assert isinstance(info.value, ConfigError)
    return str(info.value)


def test_a_mapping_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("x: [1, 2]\nname: 县医院\n", encoding="utf-8")
    assert load_mapping(path, what="test file") == {"x": [1, 2], "name": "县医院"}


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none.yaml"
    assert (
        _error(path)
        == f"{path}: invalid test file: cannot read the file: No such file or directory"
    )


def test_bad_yaml_names_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("x:\n  - a\n  - [unclosed\n", encoding="utf-8")
    message = _error(path)
    assert message.startswith(f"{path}: invalid test file: not valid YAML: ")
    assert re.search(r" at line 4, column 1\b", message), message


def test_a_duplicate_key_is_bad_yaml_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("x: 1\nx: 2\n", encoding="utf-8")
    message = _error(path)
    assert message.startswith(f"{path}: invalid test file: not valid YAML: found duplicate key")
    assert "at line 2, column 1" in message


@pytest.mark.parametrize(
    ("text", "found"),
    [("- a\n- b\n", "a list"), ("just text\n", "a string"), ("", "nothing"), ("3\n", "a number")],
)
def test_the_wrong_type_says_what_was_expected_and_found(
    tmp_path: Path, text: str, found: str
) -> None:
    path = tmp_path / "shape.yaml"
    path.write_text(text, encoding="utf-8")
    assert _error(path) == (
        f"{path}: invalid test file: expected a mapping with the key 'x:', found {found}"
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gbk.yaml"
    path.write_bytes("名称: 县医院\n".encode("gbk"))
    assert _error(path).startswith(f"{path}: invalid test file: not UTF-8 text: ")


LOADERS: dict[str, Callable[[Path], object]] = {
    "institution registry": Registry.load,
    "recognition catalogue": load_catalog,
    "matching rules": load_rules,
}


@pytest.mark.parametrize("what", sorted(LOADERS))
def test_every_config_file_reports_the_same_shapes(tmp_path: Path, what: str) -> None:
    """The registry, the catalogue and the matching rules say the same thing the same way."""
    load = LOADERS[what]
    missing = tmp_path / "none.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n", encoding="utf-8")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n", encoding="utf-8")
    for path, reason in (
        (missing, r"cannot read the file: No such file or directory"),
        (bad, r"not valid YAML: .* at line 2, column 1"),
        (listed, r"expected a mapping.*, found a list"),
    ):
        with pytest.raises(ConfigError) as info:
            load(path)
        assert re.search(
            f"{re.escape(str(path))}: (invalid {what}: |.*\\n  - ){reason}", str(info.value)
        ), str(info.value)
