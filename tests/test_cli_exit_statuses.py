"""One meaning of the exit status across `gateway`, `fleet` and `vboard`: 0 done, 1 the
operation failed, 2 the command line or a file it names is wrong."""

import pytest

from fleet.cli import main as fleet_main
from gateway.cli import main as gateway_main
from vboard.cli import main as vboard_main


@pytest.mark.parametrize("main,argv", [
    (gateway_main, ["rnu"]),
    (fleet_main, ["device", "ad"]),
    (vboard_main, ["mkflash", "--board", "esp32-nosuchboard", "--out", "x.bin"]),
])
def test_a_mistyped_command_line_exits_2(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_a_file_with_a_mistake_exits_2_in_each_tool(tmp_path, capsys):
    gateway_toml = tmp_path / "gateway.toml"
    gateway_toml.write_text('[coap]\nbind = "127.0.0.1"\nport = 70000\n')
    assert gateway_main(["check-config", "--config", str(gateway_toml)]) == 2
    group_toml = tmp_path / "boards.toml"
    group_toml.write_text('[group]\nspeeed = 2\n[[board]]\nid = "b1"\n')
    assert vboard_main(["group", str(group_toml)]) == 2
    err = capsys.readouterr().err
    assert "[mqtt] needs url, prefix" in err and "unknown key(s) speeed" in err


def test_fleet_exits_2_for_an_impossible_request_and_1_for_a_failed_operation(tmp_path,
                                                                               capsys):
    registry = ["--registry", "sqlite:///%s" % (tmp_path / "fleet.db")]
    assert fleet_main(registry + ["batch", "--site", "north", "--role", "shaft",
                                  "--names", "shaft", "--count", "1"]) == 2
    assert "the pattern needs {n}" in capsys.readouterr().err
    assert fleet_main(registry + ["device", "export-oscore", "lamp-99",
                                  str(tmp_path / "ctx")]) == 1
    assert "no device lamp-99" in capsys.readouterr().err
