"""The one error type of the fleet tools: something a user can act on, said in one line.

Bugs stay tracebacks. Everything a field engineer can fix (the cable, the BOOT button, the
board they picked, a firmware file that does not fit) is a ``FleetError`` whose message says
what happened and what to do; ``kind`` names the case for scripts, tests and the batch table.
Third-party errors (esptool, pyserial, littlefs, paho) are translated where they enter.
"""

from __future__ import annotations


class FleetError(Exception):
    """An operation cannot be done; ``str(error)`` is the one-line message for the user."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


# The kinds provisioning reports (docs/field-guide.md explains each).
NO_ANSWER = "no-answer"              # nothing answers on the port
NO_PORT = "no-port"                  # the port does not exist
PORT_BUSY = "port-busy"              # another program has the port open
WRONG_CHIP = "wrong-chip"            # the chip is not the board definition's chip
FLASH_TOO_SMALL = "flash-too-small"  # the chip's flash is smaller than the board's
FLASH_MISMATCH = "flash-mismatch"    # the chip's flash is larger: probably another board
IMAGE_TOO_LARGE = "image-too-large"  # firmware or filesystem content does not fit
BAD_FIRMWARE = "bad-firmware"        # the firmware file is not a usable image
NO_FIRMWARE = "no-firmware"          # nothing in the firmware cache for this board
VERIFY_FAILED = "verify-failed"      # what is in flash is not what was written
KEY_IN_USE = "key-in-use"            # re-provisioning would reuse OSCORE nonces
BOARD_TAKEN = "board-taken"          # the board is registered as another device
NO_UPLINK = "no-uplink"              # the node did not report through the gateway
NO_SITE = "no-site"                  # no site profile for the device's site
CONNECTION_LOST = "connection-lost"  # the port went away in the middle of a session
NO_BROKER = "no-broker"              # the site's MQTT broker cannot be reached
CONSOLE = "console"                  # mpremote could not use the board's console
USAGE = "usage"                      # the command line asks for something impossible
BUILD = "build"                      # the node application does not compile

# The kinds `fleet release` reports (docs/updates.md explains each).
NO_RELEASE_KEY = "no-release-key"    # no private key file, or no public key in the registry
KEY_EXISTS = "key-exists"            # creating a key would replace the one nodes trust
KEY_MISMATCH = "key-mismatch"        # the key file is not the registry's key
BAD_RELEASE_KEY = "bad-release-key"  # the key file is not a P-256 private key in PEM
RELEASE_EXISTS = "release-exists"    # the store already has this version
NO_RELEASE = "no-release"            # the store has no such release
BAD_RELEASE = "bad-release"          # a release in the store is damaged or does not verify
