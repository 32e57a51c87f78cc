"""gateway.toml validation: every mistake gets a message that says what to fix."""

import pytest

from gateway import config
from gateway.cli import main as gateway_main
from gateway.errors import ConfigError

GOOD = """
[coap]
bind = "127.0.0.1"
port = 5683
[mqtt]
url = "mqtt://broker.local:1884"
prefix = "city"
[registry]
url = "sqlite:///fleet.db"
"""


def test_minimal_file_loads(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(GOOD)
    cfg = config.load(path)
    assert (cfg.coap.bind, cfg.coap.port) == ("127.0.0.1", 5683)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.prefix) == ("broker.local", 1884, "city")
    assert cfg.registry.url == "sqlite:///fleet.db"


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("port = 5683", "port = 70000"), "port number"),
    (lambda t: t.replace("port = 5683", 'port = "5683"'), "must be int"),
    (lambda t: t.replace('bind = "127.0.0.1"', 'bind = "localhost"'), "IP address"),
    (lambda t: t.replace("mqtt://broker.local:1884", "tcp://broker"), "mqtt://host:port"),
    (lambda t: t.replace('prefix = "city"', 'prefix = "city/#"'), "wildcards"),
    (lambda t: t.replace("[registry]\nurl", "[registry]\nuri"), "unknown key"),
    (lambda t: t + "\n[extra]\n", "unknown section"),
    (lambda t: t.replace('url = "sqlite:///fleet.db"', ""), "[registry] needs url"),
    (lambda t: t.replace("[coap]", "[coap"), "not valid TOML"),
    (lambda t: t + '\n[spool]\nwhen_full = "ignore"\n', "one of reject, drop_oldest"),
    (lambda t: t + "\n[spool]\nmax_rows = 5\n", "between 100"),
    (lambda t: t + "\n[files]\nblock_size = 100\n", "power of two"),
    (lambda t: t + "\n[neighbours]\nlevel = 150\n", "between 0 and 100"),
    (lambda t: t + "\n[neighbours]\nenabled = 1\n", "must be bool"),
    (lambda t: t + "\n[downlink]\ndefault_ttl_s = 0\n", "default_ttl_s"),
    (lambda t: t.replace('prefix = "city"', 'prefix = "city"\nca_file = "/x"'),
     "need an mqtts:// url"),
    (lambda t: t.replace('prefix = "city"', 'prefix = "city"\npassword = "x"'),
     "needs a username"),
    (lambda t: t.replace('prefix = "city"', 'prefix = "city"\ncert_file = "/x"')
     .replace("mqtt://", "mqtts://"), "go together"),
    (lambda t: t + '\n[gateway]\nid = "gw 1"\n', "[gateway] id"),
    (lambda t: t + '\n[outputs]\nhome_assistant_prefix = "ha/#"\n', "wildcards"),
    (lambda t: t + '\n[log]\nformat = "xml"\n', "text, json"),
    (lambda t: t.replace("mqtt://broker.local", "mqtt://gw:pw@broker.local"),
     "must not carry a user name or password"),
    (lambda t: t.replace('url = "sqlite:///fleet.db"', 'url = "fleet.db"'), "SQLAlchemy URL"),
])
def test_mistakes_are_named(tmp_path, edit, message):
    path = tmp_path / "gw.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert message in str(info.value)


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    assert gateway_main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the configuration" in err and "Traceback" not in err


def test_check_config(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text(GOOD)
    assert gateway_main(["check-config", "--config", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


def test_the_database_password_is_never_shown(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text(GOOD.replace('url = "sqlite:///fleet.db"',
                                 'url = "postgresql://fleet:s3cret-db-pw@db.local/fleet"'))
    assert gateway_main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "postgresql://fleet:***@db.local/fleet" in out and "s3cret-db-pw" not in out
    assert config.load(path).registry.password == "s3cret-db-pw"    # for the log filter


def test_every_optional_section_has_defaults(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(GOOD.replace("mqtt://", "mqtts://"))
    cfg = config.load(path)
    assert cfg.mqtt.tls and cfg.mqtt.port == 1884
    assert (cfg.spool.when_full, cfg.downlink.max_pending, cfg.neighbours.enabled) == (
        "reject", 8, False)
    assert cfg.files_dir == cfg.state_dir / "files"
