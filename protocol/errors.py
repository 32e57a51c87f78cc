"""One exception hierarchy for the protocol definitions."""


class ProtocolError(Exception):
    """Base of every error the protocol definitions raise on purpose."""


class CommandError(ProtocolError):
    """A downlink command that the protocol does not allow; the message says why."""
