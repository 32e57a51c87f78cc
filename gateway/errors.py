"""One exception hierarchy for the gateway; third-party errors are translated where they enter."""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable or invalid; the message says what to fix."""


class FrameError(GatewayError):
    """A node's frame is not valid SenML-CBOR per docs/protocol.md. ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__("%s: %s" % (reason, detail))
        self.reason = reason
        self.detail = detail


class StartError(GatewayError):
    """The gateway cannot start (state folder, registry); the message says what to fix."""
