"""The configuration contract of ARCHITECTURE.md §7: every key accepted, errors name the key."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance import config

CONTRACT = tomllib.loads(config.example())


def _without(section: str, key: str) -> str:
    lines, current = [], None
    for line in config.example().splitlines():
        m = re.match(r"\[(\w+)\]", line)
        if m:
            current = m.group(1)
        if current == section and line.split("=")[0].strip() == key:
            continue
        lines.append(line)
    return "\n".join(lines)


def test_example_has_every_contract_key_and_parses(tmp_path: Path) -> None:
    cfg = config.parse(config.example(str(tmp_path)))
    assert cfg.box.data_dir == tmp_path
    assert cfg.pacs.retrieve == "c-move"
    assert cfg.hsm.module == Path("/usr/lib/softhsm/libsofthsm2.so")
    assert set(CONTRACT) == {"box", "dicom", "pacs", "hl7", "http", "roles", "hsm", "dmp"}


@pytest.mark.parametrize("section,key", [(s, k) for s, t in CONTRACT.items() for k in t])
def test_every_contract_key_is_required(section: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(_without(section, key))
    assert str(e.value).startswith(f"{section}.{key}: missing key")


@pytest.mark.parametrize("section,key,value,expect", [
    ("dicom", "port", "70000", "TCP port"),
    ("dicom", "ae_title", '"A_TITLE_FAR_TOO_LONG"', "AE title"),
    ("pacs", "retrieve", '"c-teleport"', "'c-move', 'c-get'"),
    ("http", "tls", '"yes"', "true or false"),
    ("box", "public_url", '"db1.example.org"', "absolute http(s) URL"),
    ("pacs", "host", '"not a host!"', "IP address or a host name"),
    ("hl7", "port", '"2575"', "integer"),
])
def test_bad_value_names_key_and_expectation(section, key, value, expect) -> None:
    text = config.example().replace(
        f"{key} = {_value_in_example(section, key)}", f"{key} = {value}", 1)
    with pytest.raises(config.ConfigError) as e:
        config.parse(text)
    assert str(e.value).startswith(f"{section}.{key}:")
    assert expect in str(e.value)


def _value_in_example(section: str, key: str) -> str:
    v = CONTRACT[section][key]
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)


def test_unknown_key_and_unknown_section() -> None:
    with pytest.raises(config.ConfigError, match=r"^dicom\.colour: unknown key"):
        config.parse(config.example().replace("[dicom]", "[dicom]\ncolour = 'blue'"))
    with pytest.raises(config.ConfigError, match=r"^telemetry: unknown section"):
        config.parse(config.example() + "\n[telemetry]\nenabled = true\n")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "box.toml"
    f.write_text(config.example().replace('"/var/lib/drimbox"', '"data"'))
    assert config.load(f).box.data_dir == tmp_path / "data"


def test_added_keys_have_defaults_and_are_validated() -> None:
    cfg = config.parse(config.example() + '\n[store]\nmax_bytes = 1000\n')
    assert cfg.store.max_bytes == 1000 and cfg.dicom.max_pdu == 131072
    text = config.example().replace("[dicom]", '[dicom]\nmodalities = [{ae_title = "CT1"}]')
    assert config.parse(text).dicom.modalities[0].ae_title == "CT1"
    with pytest.raises(config.ConfigError, match=r"^dicom\.modalities\[0\]\.ae_title: missing"):
        config.parse(config.example().replace("[dicom]", "[dicom]\nmodalities = [{port = 4}]"))


def test_cli_config_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(config.example(str(tmp_path)))
    bad = tmp_path / "bad.toml"
    bad.write_text(config.example(str(tmp_path)).replace("port = 11112", "port = -1"))
    ok = subprocess.run([sys.executable, "-m", "appliance.cli", "config", "check", "-c", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    ko = subprocess.run([sys.executable, "-m", "appliance.cli", "config", "check", "-c", str(bad)],
                        capture_output=True, text=True)
    assert ko.returncode == 2
    assert "dicom.port" in ko.stderr and "TCP port" in ko.stderr
    missing = subprocess.run([sys.executable, "-m", "appliance.cli", "config", "check", "-c",
                              str(tmp_path / "nope.toml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_invalid_toml_is_a_config_error() -> None:
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.parse("[box\nname=")
