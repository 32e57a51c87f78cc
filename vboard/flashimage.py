"""Flash files for virtual boards: built as a board looks after flashing MicroPython and
copying the application onto it (`vboard mkflash`), and described as its bootloader sees them
(`vboard info`)."""

from __future__ import annotations

from pathlib import Path

from boards.app_image import bootloader_offset, build_app_image, merged_image, read_app
from boards.definitions import Board
from boards.errors import FlashError, ImageError
from boards.firmware_image import FirmwareFileError, read_firmware_file
from boards.fsimage import build_littlefs, read_littlefs
from boards.nodeapp import app_dir_files
from boards.otadata import select_boot_partition
from boards.partition_table import filesystem_partition, read_partition_table
from vboard.flash import FlashFile


def make_flash(board: Board, out: Path, *, firmware: Path | None = None,
               version: str = "v1.24.1", app_dir: Path | None = None,
               files: dict[str, bytes] | None = None) -> Path:
    """A flash file with bootloader, partition table, MicroPython app and littlefs: what a
    board looks like after flashing MicroPython and copying the application onto it. Built
    in a temporary file and renamed: a failure leaves ``out`` as it was."""
    tmp = out.with_name(out.name + ".part")
    tmp.unlink(missing_ok=True)
    flash = FlashFile(tmp, board.flash_size)
    try:
        start = bootloader_offset(board.chip)
        if firmware is not None:
            try:
                image = read_firmware_file(firmware)
            except FirmwareFileError as exc:
                raise FlashError(str(exc)) from None
            # A merged image goes where the chip's bootloader is; an app image alone to the
            # app partition, behind a stand-in bootloader and this board's partition table.
            if image.merged:
                flash.write(image.offset, image.data)
            else:
                app_offset = next(p.offset for p in board.partitions if p.type == "app")
                flash.write(start, merged_image(board, image.app)[:app_offset - start])
                flash.write(app_offset, image.app)
        else:
            flash.write(start, merged_image(board, build_app_image("micropython", version)))
        parts = read_partition_table(flash)
        read_app(flash, next(p for p in parts if p.type == "app"))    # FlashError if not one
        content = dict(files or {})
        if app_dir is not None:
            content.update(app_dir_files(app_dir))
        if content:
            fs = filesystem_partition(parts)
            try:
                flash.write(fs.offset, build_littlefs(content, fs.size))
            except ImageError as exc:
                raise FlashError(str(exc)) from None
    except BaseException:
        flash.close()
        tmp.unlink(missing_ok=True)
        raise
    flash.close()
    tmp.replace(out)
    return out


def describe_flash(board: Board, path: Path) -> str:
    if not path.is_file():     # FlashFile would make an erased one: info must not write
        raise FlashError("no flash file %s (vboard mkflash makes one)" % path)
    flash = FlashFile(path, board.flash_size)
    try:
        lines = ["%s (%d KB, board %s)" % (path, board.flash_size // 1024, board.name)]
        parts = read_partition_table(flash)
        for p in parts:
            lines.append("  %-10s %-5s %-9s 0x%06x  %5d KB" % (p.name, p.type, p.subtype,
                                                           p.offset, p.size // 1024))
        app_part, why = select_boot_partition(flash, parts, commit=False)
        app = read_app(flash, app_part)
        lines.append("boots: %s %s from %s (%s)" % (app.project, app.version, app.partition,
                                                    why))
        fs = filesystem_partition(parts)
        try:
            files = read_littlefs(flash.read(fs.offset, fs.size))
            lines.append("filesystem: %d files" % len(files))
            lines += ["  %7d  %s" % (len(d), n) for n, d in sorted(files.items())]
        except ImageError:
            lines.append("filesystem: not formatted (MicroPython formats it on first boot)")
        return "\n".join(lines)
    finally:
        flash.close()
