"""The systemd unit and the configuration examples in the docs: what an installer copies must
work as written."""

import configparser
import dataclasses
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from gateway import config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "citytestbed-gateway.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser


def _toml_blocks(doc: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)


def test_the_unit_runs_the_gateway_unprivileged_and_confined():
    service = _unit()["Service"]
    assert service["User"] == "citytestbed" and service["Group"] == "citytestbed"
    assert service["ExecStart"].endswith("gateway run --config /etc/citytestbed/gateway.toml")
    assert "check-config" in service["ExecStartPre"]
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "always"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[key] == "yes"
    assert service["ProtectSystem"] == "strict" and service["CapabilityBoundingSet"] == ""


def test_the_install_guides_configuration_is_valid_and_matches_the_unit():
    (block,) = _toml_blocks(ROOT / "docs" / "gateway-install.md")
    cfg = config.parse(tomllib.loads(block), "docs/gateway-install.md")
    state_directory = _unit()["Service"]["StateDirectory"]
    assert cfg.state_dir == Path("/var/lib") / state_directory


def test_every_configuration_example_in_the_operator_docs_is_valid():
    blocks = _toml_blocks(ROOT / "docs" / "gateway.md")
    assert blocks
    for block in blocks:
        config.parse(tomllib.loads(block), "docs/gateway.md")


def test_systemd_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:      # .ci/run installs it and requires this test to run
        assert os.environ.get("CITYTESTBED_REQUIRE_SYSTEMD") != "1", "no systemd-analyze"
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/citytestbed/venv/bin/gateway", "/bin/true"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # a misspelt key is only a warning ("…service:18: Unknown key 'Restartt' …, ignoring"),
    # with exit status 0: any line about the unit is a problem
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_the_documented_configuration_shows_the_defaults():
    """docs/gateway.md's full example states the default of every key but the required ones
    and the three it names as set for a Pi install."""
    documented = tomllib.loads(_toml_blocks(ROOT / "docs" / "gateway.md")[0])
    required = {"coap": dict(documented["coap"]), "mqtt": {
        k: documented["mqtt"][k] for k in ("url", "prefix")}, "registry": {
        "url": documented["registry"]["url"]}}
    as_documented = dataclasses.asdict(config.parse(documented, "docs"))
    as_default = dataclasses.asdict(config.parse(required, "defaults"))
    set_for_a_pi = {("gateway", "id"), ("gateway", "state_dir"), ("http", "port"),
                    ("files", "dir")}           # files.dir follows state_dir
    differ = [(section, key) for section, values in as_default.items()
              if isinstance(values, dict) for key, value in values.items()
              if as_documented[section][key] != value and (section, key) not in set_for_a_pi]
    differ += [key for key in ("log_level", "log_format")
               if as_documented[key] != as_default[key]]
    assert differ == []
