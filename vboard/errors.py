"""One exception hierarchy for the virtual board."""


class VBoardError(Exception):
    """Base of every error the virtual board raises on purpose."""
