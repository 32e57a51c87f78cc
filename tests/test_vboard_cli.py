"""`vboard mkflash` and `vboard info` on bad input: a clear error, nothing left behind."""

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
