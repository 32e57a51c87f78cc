"""`fleet update`'s reading of outcomes and status frames, and what it shows (fleet/update.py);
the command end to end is in hil_tests/test_fleet_update.py."""

from __future__ import annotations

import io

from fleet import update as up


def node(**kw) -> up.NodeUpdate:
    return up.NodeUpdate("lamp-01", "north", "city", 7437, **kw)


def test_status_frames_move_a_node_through_its_states_and_ignore_other_releases():
    n = node(exact=True)
    up.on_status(n, {"upd": "confirmed", "updv": "0.2.9"}, "0.3.0")   # an earlier update
    assert n.state == "sent"
    up.on_status(n, {"upd": "downloading", "updv": "0.3.0", "updb": 4096}, "0.3.0")
    assert n.describe() == "downloading 4,096 / 7,437 B" and not n.final
    up.on_status(n, {"upd": "switching", "updv": "0.3.0", "updb": 7437}, "0.3.0")
    assert n.describe() == "verified (7,437 B fetched)"
    up.on_status(n, {"upd": "rolledback", "updv": "0.3.0", "updr": "no answer"}, "0.3.0")
    assert n.final and not n.ok and n.describe() == "rolled back: no answer"
    up.on_status(n, {"upd": "confirmed", "updv": "0.3.0"}, "0.3.0")   # final stays final
    assert n.state == "rolled back"


def test_a_missed_confirmation_is_read_from_the_version_the_node_reports():
    n = node(state="switched")
    up.on_status(n, {"app": "0.3.0"}, "0.3.0")
    assert n.ok


def test_outcomes_of_our_command_only():
    n = node()
    up.on_outcome(n, {"outcome": "queued", "id": 5, "cmd": "ota", "ref": up.REF})
    assert (n.state, n.command_id) == ("queued", 5)
    up.on_outcome(n, {"outcome": "expired", "id": 4, "cmd": "ota", "ref": up.REF})
    assert n.state == "queued"                        # an earlier run's command
    up.on_outcome(n, {"outcome": "rejected", "id": 5, "cmd": "boost", "ref": up.REF})
    assert n.state == "queued"                        # not an ota
    up.on_outcome(n, {"outcome": "rejected", "id": 5, "cmd": "ota", "ref": up.REF})
    assert n.state == "failed" and "refused the ota command" in n.reason


def test_a_command_the_gateway_could_not_read_for_the_device_ends_it():
    n = node()
    up.on_outcome(n, {"device": "lamp-01", "outcome": "refused",
                      "reason": "no device lamp-01 at site north in the registry"})
    assert n.state == "not reached" and "no device lamp-01" in n.reason


def test_a_terminal_gets_bars_redrawn_in_place_and_a_log_a_line_per_change():
    nodes = [node(state="downloading", fetched=3718, exact=True),
             up.NodeUpdate("lamp-02", "north", "city", 100, state="queued")]
    term = io.StringIO()
    view = up.View(term, live=True)
    view.draw(nodes)
    view.draw(nodes)                                  # nothing changed: nothing drawn
    nodes[0].fetched = 3719
    view.draw(nodes)
    text = term.getvalue()
    assert text.count("\x1b[2F") == 1                  # the second drawing went back up
    assert "lamp-01 [" + "#" * 11 in text and "] downloading 3,718 / 7,437 B" in text
    assert text.endswith("] queued\n") and "3,719 / 7,437 B" in text
    log = io.StringIO()
    view = up.View(log, live=False)
    view.draw(nodes)
    view.draw(nodes)                                  # nothing changed: nothing printed
    nodes[1].state = "notified"
    view.draw(nodes)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and "\x1b" not in log.getvalue()
    assert lines[-1].endswith("lamp-02 notified")
