"""The downlink command set (docs/protocol.md §8): names, arguments and the roles they apply to.

The gateway checks every command before it queues it, so a node only ever receives commands
whose arguments have the right names, types and ranges; a node still refuses (``rej``) what it
cannot do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.errors import CommandError
from protocol.vocabulary import ROLES

MAX_TEXT = 64
_CONFIG_KEY = re.compile(r"^(lighting|parking|shaft)\.[a-z][a-z0-9_]{0,31}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
_FILE_PATH = re.compile(r"^f(/[A-Za-z0-9][A-Za-z0-9._+-]{0,63}){2}$")


@dataclass(frozen=True)
class Arg:
    kind: type                   # int, str or bool
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()
    required: bool = True
    pattern: re.Pattern | None = None

    def check(self, name: str, value: object) -> object:
        if self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise CommandError("%s must be an integer" % name)
            if not self.low <= value <= self.high:
                raise CommandError("%s must be %d to %d, not %d" % (name, self.low, self.high,
                                                                    value))
        elif self.kind is str:
            if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
                raise CommandError("%s must be a text of 1 to %d characters" % (name, MAX_TEXT))
            if self.choices and value not in self.choices:
                raise CommandError("%s must be one of %s" % (name, ", ".join(self.choices)))
            if self.pattern is not None and not self.pattern.match(value):
                raise CommandError("%s %r is not allowed here" % (name, value))
        elif self.kind is bool and not isinstance(value, bool):
            raise CommandError("%s must be true or false" % name)
        return value


@dataclass(frozen=True)
class Command:
    name: str
    roles: tuple[str, ...]
    args: dict[str, Arg]
    meaning: str
    at_least_one: bool = False   # all args optional, but not none of them


_PCT = Arg(int, 0, 100)
_DAY_S = 86400
# Keys a `config` command may set at the top of the node's config.json (protocol.md §8.3):
# the firmware's optional top-level keys with its ranges (tests/test_vocabulary.py holds them
# to firmware/app/config.py TOP), interval_s no shorter than 10 s. All of them, so that a node
# in safe mode for any bad value can be repaired over the air.
CONFIG_KEYS: dict[str, Arg] = {
    "interval_s": Arg(int, 10, _DAY_S),
    "max_retransmit": Arg(int, 0, 4),
    "ack_timeout_ms": Arg(int, 200, 10000),
    "status_s": Arg(int, 10, 7 * _DAY_S),
    "wdt_s": Arg(int, 5, 3600),
    "safe_wdt_s": Arg(int, 30, 3600),
    "safe_after": Arg(int, 1, 20),
    "safe_awake_s": Arg(int, 10, 3600),
    "queue_kb": Arg(int, 4, 256),
    "queue_stage": Arg(int, 0, 1024),
    "wifi_timeout_s": Arg(int, 1, 120),
    "ota_trial_boots": Arg(int, 1, 20),
    "ota_trial_s": Arg(int, 60, 86400),
}

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("reboot", ROLES, {}, "restart the node (machine.reset) after acknowledging"),
    Command("config", ROLES, {}, "set configuration keys (persisted in config.json)"),
    Command("calibrate", ("parking",), {},
            "take the empty-bay magnetometer baseline now (the bay must be empty)"),
    Command("boost", ("lighting",), {"level": _PCT, "hold_s": Arg(int, 1, 3600)},
            "raise the lamp to level % for hold_s from now (a neighbour saw someone)"),
    Command("levels", ("lighting",), {"night": Arg(int, 0, 100, required=False),
                                      "full": Arg(int, 0, 100, required=False)},
            "set the night floor and the full level, %", at_least_one=True),
    Command("hold", ("lighting",), {"hold_s": Arg(int, 0, 3600)},
            "time the lamp stays at full after the last presence, s"),
    Command("force", ("lighting",), {"mode": Arg(str, choices=("on", "off", "auto"))},
            "force the lamp on (full), off, or back to automatic"),
    Command("schedule", ("lighting",), {"start": Arg(int, 0, 2 ** 32 - 1, required=False),
                                        "end": Arg(int, 0, 2 ** 32 - 1, required=False),
                                        "level": Arg(int, 0, 100, required=False)},
            "override the level from start to end (unix s); empty args clear the override"),
    Command("ota", ROLES, {"version": Arg(str, pattern=_VERSION),
                           "manifest": Arg(str, pattern=_FILE_PATH)},
            "a release is ready: fetch its signed manifest from the gateway's file service"),
)}


def validate(name: object, args: object, role: str) -> dict:
    """Return the checked arguments of command ``name`` for a device of ``role``."""
    if not isinstance(name, str) or name not in COMMANDS:
        raise CommandError("unknown command %r (known: %s)" % (name, ", ".join(COMMANDS)))
    command = COMMANDS[name]
    if role not in command.roles:
        raise CommandError("%s does not apply to a %s node" % (name, role))
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise CommandError("args must be an object")
    if name == "config":
        return _validate_config(args)
    unknown = set(args) - set(command.args)
    if unknown:
        raise CommandError("%s takes no argument(s) %s" % (name, ", ".join(sorted(unknown))))
    out = {}
    for key, spec in command.args.items():
        if key in args:
            out[key] = spec.check(key, args[key])
        elif spec.required:
            raise CommandError("%s needs %s" % (name, key))
    if command.at_least_one and not out:
        raise CommandError("%s needs at least one of %s" % (name, ", ".join(command.args)))
    if name == "schedule" and out:
        if set(out) != {"start", "end", "level"}:
            raise CommandError("schedule needs start, end and level (or nothing, to clear)")
        if out["end"] <= out["start"]:
            raise CommandError("schedule end must be after start")
    return out


def _validate_config(args: dict) -> dict:
    if not args:
        raise CommandError("config needs at least one key")
    if len(args) > 8:
        raise CommandError("config sets at most 8 keys at once")
    out = {}
    for key, value in args.items():
        if key in CONFIG_KEYS:
            out[key] = CONFIG_KEYS[key].check(key, value)
        elif isinstance(key, str) and _CONFIG_KEY.match(key):
            if isinstance(value, bool) or isinstance(value, int) and -2 ** 31 <= value < 2 ** 31:
                out[key] = value
            elif isinstance(value, str) and len(value) <= MAX_TEXT:
                out[key] = value
            else:
                raise CommandError("%s must be an integer, true/false or a short text" % key)
        else:
            raise CommandError("config key %r is not settable (known: %s, or <role>.<key>)"
                               % (key, ", ".join(CONFIG_KEYS)))
    return out
