"""`vboard mkflash` and `vboard info` on bad input: a clear error, nothing left behind."""

import pytest

from vboard import group
from vboard.cli import main as vboard_main

MKFLASH = ["mkflash", "--board", "esp32-devkitc"]


def test_mkflash_refuses_a_file_that_is_no_firmware_and_leaves_nothing(tmp_path, capsys):
    junk = tmp_path / "hostname"
    junk.write_text("not-an-image\n")
    out = tmp_path / "x.bin"
    assert vboard_main(MKFLASH + ["--out", str(out), "--firmware", str(junk)]) != 0
    err = capsys.readouterr().err
    assert "is not an ESP32 firmware image" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostname"]


def test_a_failed_mkflash_keeps_the_flash_file_that_was_there(tmp_path, capsys):
    out = tmp_path / "y.bin"
    assert vboard_main(MKFLASH + ["--out", str(out)]) == 0
    before = out.read_bytes()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xe9" + bytes(100))
    assert vboard_main(MKFLASH + ["--out", str(out), "--firmware", str(junk)]) != 0
    assert out.read_bytes() == before


def test_info_on_a_missing_flash_file_says_so_and_writes_nothing(tmp_path, capsys):
    missing = tmp_path / "missing.bin"
    assert vboard_main(["info", "--board", "esp32-devkitc", "--flash", str(missing)]) != 0
    assert "no flash file" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("text,message", [
    ('[group]\nspeeed = 2\n[[board]]\nid = "b1"\n', r"\[group\]: unknown key\(s\) speeed"),
    ('[[board]]\nid = "b1"\nrol = "shaft"\n', r"\[\[board\]\] #1: unknown key\(s\) rol"),
    ('[[board]]\nid = "b1"\nrole = "lamp"\n', "role 'lamp' is not one of lighting"),
    ('[[board]]\nid = "b1"\nboard = "esp32-s9"\n', "board 'esp32-s9' is not a board"),
    ('[[board]]\nid = "b1"\nconsole_port = "7000"\n', "console_port = '7000' is not a number"),
    ('[[board]]\nrole = "shaft"\n', "#1: it needs an id"),
    ('[group]\nspeed = 2\n', "no \\[\\[board\\]\\] entries"),
    ('[grup]\n[[board]]\nid = "b1"\n', r"\[group\] table and \[\[board\]\] entries, not grup"),
    ('[group\n', "not valid TOML"),
])
def test_a_group_file_is_read_strictly(tmp_path, text, message):
    path = tmp_path / "boards.toml"
    path.write_text(text)
    with pytest.raises(group.GroupFileError, match=message):
        group.load_group(path)


def test_a_group_file_of_before_the_rename_still_reads(tmp_path):
    path = tmp_path / "boards.toml"
    path.write_text('[fleet]\nspeed = 4\nrole = "shaft"\n[[board]]\nid = "b1"\n'
                    '[[board]]\nid = "b2"\nrole = "parking"\n')
    spec = group.load_group(path)
    assert spec.speed == 4.0
    assert [(b.id, b.role, b.serial) for b in spec.boards] == [("b1", "shaft", 1),
                                                               ("b2", "parking", 2)]
