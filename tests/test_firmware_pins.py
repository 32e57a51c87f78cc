"""What the MicroPython firmware spells by hand, held to protocol/ (no VM: the sources are read
with ``ast``, never imported).

The firmware cannot import protocol/ (it runs on the node, in a few kilobytes of heap), so it
repeats what it must know: the SenML names each role sends, the downlink envelope's keys, the
response codes it acts on, its content format and resource paths. A change on either side that
the other does not follow fails here.
"""

from __future__ import annotations

import ast

import pytest

from boards.nodeapp import FIRMWARE
from protocol import envelope, vocabulary, wire

# The role each role module implements; node.py and state.py are shared by all of them.
ROLE_FILES = {"lighting": "app/lighting.py", "parking": "app/parking.py", "shaft": "app/shaft.py"}
SHARED_FILES = ("app/node.py", "app/state.py", "app/update.py", "app/staging.py")
# Calls that take records: a list of them, or one record (``insert(0, record)``).
RECORD_CALLS = frozenset(("append", "insert", "extend", "submit", "_apply"))


def _tree(relative: str) -> ast.Module:
    return ast.parse((FIRMWARE / relative).read_text(), filename=relative)


def _names_of(first: ast.expr) -> list[str] | None:
    """The record name(s) a record's first element can be: a text constant, or a conditional
    between text constants (``"ack" if ok else "rej"``); None for anything else."""
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return [first.value]
    if isinstance(first, ast.IfExp):
        body, orelse = _names_of(first.body), _names_of(first.orelse)
        if body is not None and orelse is not None:
            return body + orelse
    return None


def _records_in(node: ast.AST) -> list[tuple[str, int]]:
    """(name, line) of every record built under ``node``: a 2-tuple with a text first element
    that is an element of a list (literal or comprehension) or an argument of a record call."""
    found: list[tuple[str, int]] = []

    def take(candidate: ast.expr) -> None:
        if isinstance(candidate, ast.Tuple) and len(candidate.elts) == 2:
            names = _names_of(candidate.elts[0])
            if names is not None:
                found.extend((name, candidate.lineno) for name in names)

    for sub in ast.walk(node):
        if isinstance(sub, ast.List):
            for elt in sub.elts:
                take(elt)
        elif isinstance(sub, ast.ListComp):
            take(sub.elt)
        elif isinstance(sub, ast.Call):
            func = sub.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in RECORD_CALLS:
                for arg in sub.args:
                    take(arg)
    return found


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _bases(cls: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in cls.bases]


def records_by_role() -> dict[str, dict[str, list[str]]]:
    """role -> record name -> where it is built ("app/x.py:line"), for every record the
    firmware builds. A shared class (node.py's ``BatteryRole``) counts for the roles whose
    class inherits from it, a shared class no role inherits from (``Node``) for all roles."""
    out: dict[str, dict[str, list[str]]] = {role: {} for role in vocabulary.ROLES}

    def add(roles, records, where: str) -> None:
        for role in roles:
            for name, line in records:
                out[role].setdefault(name, []).append("%s:%d" % (where, line))

    # Which role classes inherit from which shared classes, transitively.
    shared = {name: cls for f in SHARED_FILES for name, cls in _classes(_tree(f)).items()}
    parents = {name: _bases(cls) for name, cls in shared.items()}
    inherits: dict[str, set[str]] = {name: set() for name in shared}
    for role, relative in ROLE_FILES.items():
        for cls in _classes(_tree(relative)).values():
            todo = _bases(cls)
            while todo:
                base = todo.pop()
                if base in inherits and role not in inherits[base]:
                    inherits[base].add(role)
                    todo.extend(parents[base])
    for relative in SHARED_FILES:
        tree = _tree(relative)
        classes = _classes(tree)
        for name, cls in classes.items():
            add(sorted(inherits[name]) or vocabulary.ROLES, _records_in(cls), relative)
        outside = ast.Module([n for n in tree.body if n not in classes.values()], [])
        add(vocabulary.ROLES, _records_in(outside), relative)
    for role, relative in ROLE_FILES.items():
        add([role], _records_in(_tree(relative)), relative)
    return out


def test_there_is_a_role_module_for_every_role():
    assert set(ROLE_FILES) == set(vocabulary.ROLES)


def test_the_record_finder_sees_what_each_role_sends():
    """Guards the finder itself: if it missed records, the next test would pass vacuously."""
    found = records_by_role()
    status = {"fw", "app", "reset", "boots", "uptime", "heap", "rssi", "faults", "ack", "rej"}
    assert status <= set(found["lighting"])
    assert {"batt"} <= set(found["parking"]) & set(found["shaft"])
    assert {"lux", "pres", "dim", "power", "energy", "alarm"} <= set(found["lighting"])
    assert {"occ", "mag"} <= set(found["parking"])
    assert {"level", "temp", "alarm"} <= set(found["shaft"])
    assert "batt" not in found["lighting"]


@pytest.mark.parametrize("role", vocabulary.ROLES)
def test_every_record_a_role_sends_is_in_the_vocabulary_for_that_role(role):
    sent = records_by_role()[role]
    unknown = {n: w for n, w in sent.items() if n not in vocabulary.BY_NAME}
    assert not unknown, "not in protocol/vocabulary.py: %s" % unknown
    foreign = {n: w for n, w in sent.items() if role not in vocabulary.BY_NAME[n].roles}
    assert not foreign, "sent by a %s node but not one of its names in protocol/vocabulary.py: " \
                        "%s" % (role, foreign)


def _consts(relative: str) -> dict[str, int]:
    """The module-level ``NAME = const(value)`` of a firmware module."""
    out = {}
    for node in _tree(relative).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)
                and getattr(node.value.func, "id", "") == "const"):
            out[node.targets[0].id] = ast.literal_eval(node.value.args[0])
    return out


def test_the_envelope_keys_are_the_protocol_s():
    link = _consts("app/link.py")
    assert (link["_ENV_TIME"], link["_ENV_COMMANDS"], link["_ENV_OBSERVING"]) == (
        envelope.TIME, envelope.COMMANDS, envelope.OBSERVING)


@pytest.mark.parametrize("name", ["CHANGED", "CONTENT", "BAD_REQUEST", "UNAUTHORIZED",
                                  "BAD_OPTION", "NOT_FOUND", "METHOD_NOT_ALLOWED",
                                  "SERVICE_UNAVAILABLE"])
def test_the_response_codes_are_the_protocol_s(name):
    assert _consts("lib/coap.py")[name] == getattr(wire, name)


def test_the_link_compares_response_codes_by_name_only():
    """A bare number in ``code == 0x84`` is a code the test above cannot see."""
    bare = sorted({n.lineno for n in ast.walk(_tree("app/link.py"))
                   if isinstance(n, ast.Compare) and isinstance(n.left, ast.Name)
                   and n.left.id == "code"
                   and any(isinstance(c, ast.Constant) for c in n.comparators)})
    assert not bare, "app/link.py compares code with a literal on line(s) %s" % bare


def test_the_content_format_is_the_protocol_s():
    assert _consts("lib/oscore.py")["CONTENT_FORMAT_SENML_CBOR"] == wire.CF_SENML_CBOR


def _first_args(relative: str, method: str) -> list[object]:
    return [ast.literal_eval(n.args[0]) for n in ast.walk(_tree(relative))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == method and n.args and isinstance(n.args[0], ast.Constant)]


def test_the_resource_paths_are_the_protocol_s():
    posted = _first_args("app/node.py", "_post")
    assert posted and set(posted) <= set(wire.UPLINKS)
    assert _first_args("app/observe.py", "aobserve") == [wire.COMMANDS]
