"""One source of truth each: the vocabulary (the firmware copy and the protocol doc match the
table), the pins (the firmware's defaults match the board definition) and the config keys a
`config` command may set (the gateway passes what the firmware takes)."""

import ast
import json
import re
from pathlib import Path

from boards.nodeapp import FIRMWARE
from protocol import vocabulary
from vboard.vm import run_source

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_firmware_copy_is_generated_from_the_table():
    assert (FIRMWARE / "lib" / "vocab.py").read_text() == vocabulary.firmware_source(), (
        "firmware/lib/vocab.py is stale: run "
        "`python -m protocol.vocabulary > firmware/lib/vocab.py`")


def test_micropython_sees_the_same_table_as_cpython():
    proc = run_source("import json, vocab\nprint(json.dumps(vocab.TABLE))",
                      path=[FIRMWARE / "lib"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == vocabulary.as_rows()


def test_protocol_doc_lists_exactly_the_table():
    text = DOC.read_text()
    section = text.split("## 4. Vocabulary", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z]+)` \| ([^|]+) \| ([^|]+) \| (\d+) \| (\w+) \| ([^|]+) \|",
                      section, re.M)
    doc = [[n, w.strip(), "" if u.strip() == "-" else u.strip(), int(s), k,
            r.strip()] for n, w, u, s, k, r in rows]
    code = [[q.name, q.wire_unit, q.unit, q.scale, q.kind,
             "all" if q.roles == vocabulary.ROLES else ", ".join(q.roles)]
            for q in vocabulary.TABLE]
    assert doc == code


def test_names_are_unique_and_kinds_known():
    names = [q.name for q in vocabulary.TABLE]
    assert len(names) == len(set(names))
    assert {q.kind for q in vocabulary.TABLE} <= {"v", "vb", "vs"}
    assert all(set(q.roles) <= set(vocabulary.ROLES) for q in vocabulary.TABLE)


def _firmware_config_table(name: str):
    """A literal table of firmware/app/config.py (MicroPython: read, not imported)."""
    tree = ast.parse((FIRMWARE / "app" / "config.py").read_text())
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name)


def test_the_firmware_s_default_pins_are_the_devkitc_s():
    """config.json carries the board's pins (fleet provision writes them); a config.json
    without them falls back to firmware/app/config.py's table, which must be the DevKitC's."""
    from boards.definitions import board

    assert _firmware_config_table("PINS") == board("esp32-devkitc").pins


def test_the_gateway_passes_every_top_level_key_the_firmware_takes_within_its_range():
    """A node in safe mode for a bad value is repaired with a `config` command: the gateway
    must let every key through that the node's config.py can set, and no value it refuses."""
    from protocol.commands import CONFIG_KEYS

    top = _firmware_config_table("TOP")        # key -> (mains, battery, low, high)
    assert set(CONFIG_KEYS) == set(top)
    for key, arg in CONFIG_KEYS.items():
        low, high = top[key][2:]
        assert low <= arg.low <= arg.high == high, key
