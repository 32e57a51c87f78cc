"""One exception hierarchy for the board definitions and ESP32 formats."""


class BoardsError(Exception):
    """Base of every error boards/ raises on purpose."""


class FlashError(BoardsError):
    """The flash holds something the boot path cannot use; the message says what."""


class AppImageError(BoardsError):
    """What is wrong with an app image: ``kind`` is "invalid", "digest" or "descriptor"."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


class ImageError(BoardsError):
    """Files do not fit a filesystem image, or an image cannot be read."""
