"""``fleet update DEVICE... --release VERSION``: tell nodes that a release is ready and follow
each one to its end (docs/updates.md, "Updating nodes").

The fleet sends the ``ota`` command through the site's broker to the gateway that serves the
node (``<prefix>/<site>/<device>/down``) and then only listens: the gateway's outcomes for the
command (queued, delivered, acknowledged, or why not) and the node's status frames, whose
update records (``upd``, ``updv``, ``updb``, ``updr``; docs/firmware.md, "Updates") say how
far the node is. The node does the work by itself, at its own pace (a battery node in its
wakes), and decides by itself whether the new release stays: this command can stop at any
time, or run out of time, without changing what happens on the node.

A node is final when it confirmed the release (or already ran it), when it failed or rolled
back (with its reason), or when the command could not reach it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from fleet.errors import BAD_RELEASE, NO_SITE, USAGE, FleetError
from fleet.mqtt import BrokerSession
from fleet.release import StoredRelease, find_release, read_release
from protocol import manifest as mf
from protocol import outcomes, senmljson, topics
from registry.db import Registry

TIMEOUT_S = 3600.0            # a battery node downloads in its wakes: give it an hour
RETAINED_SETTLE_S = 1.0       # the retained state (which app runs) arrives after SUBACK
REF = "fleet-update"          # the command's ref, so that its outcomes are known as ours
DEFAULT_PREFIX = "city"
BAR_WIDTH = 24

# What a node's update state (``upd``) is shown as, and the final ones
_SHOWN = {"fetching": "notified", "downloading": "downloading", "switching": "verified",
          "switched": "switched", "confirmed": "confirmed", "failed": "failed",
          "rolledback": "rolled back"}
CONFIRMED = "confirmed"
ALREADY = "already runs it"
FAILED_STATES = ("failed", "rolled back", "not reached")


@dataclass
class NodeUpdate:
    """One node's way through the update, as the fleet sees it."""

    device: str
    site: str
    prefix: str
    total: int                     # bytes the node fetches at most
    exact: bool = False            # total is what it fetches (the release it runs is known)
    state: str = "sent"
    fetched: int = 0
    reason: str = ""
    command_id: int | None = None
    since: float = field(default_factory=time.monotonic)

    @property
    def final(self) -> bool:
        return self.state in (CONFIRMED, ALREADY) or self.state in FAILED_STATES

    @property
    def ok(self) -> bool:
        return self.state in (CONFIRMED, ALREADY)

    def topic(self, leaf: str) -> str:
        return topics.device(self.prefix, self.site, self.device, leaf)

    def describe(self) -> str:
        if self.state == "downloading":
            if self.exact:
                return "downloading %s / %s B" % (format(self.fetched, ","),
                                                  format(self.total, ","))
            return "downloading %s B (of at most %s)" % (format(self.fetched, ","),
                                                         format(self.total, ","))
        if self.reason:
            return "%s: %s" % (self.state, self.reason)
        if self.state in ("verified", "switched", CONFIRMED) and self.fetched:
            return "%s (%s B fetched)" % (self.state, format(self.fetched, ","))
        return self.state

    def fraction(self) -> float:
        """How far along, for the bar: the download is most of the way."""
        if self.ok:
            return 1.0
        if self.state == "downloading":
            return 0.1 + 0.7 * min(self.fetched / self.total, 1.0) if self.total else 0.1
        return {"notified": 0.05, "verified": 0.85, "switched": 0.95}.get(self.state, 0.0)


@dataclass
class Plan:
    release: StoredRelease
    broker: str
    nodes: list[NodeUpdate]


def plan(registry: Registry, store: Path, version: str, device_ids: list[str], *,
         mqtt_url: str | None = None) -> Plan:
    """Check that the release can go to these devices (it is in the store, sound as far as
    the fleet can tell, for their roles) and find the broker that reaches them; FleetError
    naming what to fix otherwise."""
    release = find_release(store, version)
    m = release.manifest
    if m is None:
        raise FleetError("release %s cannot be offered: %s" % (version, release.problem),
                         BAD_RELEASE)
    key = registry.release_key()
    if key is None or not mf.verify(key.public_key, release.body, release.signature):
        raise FleetError("release %s is not signed with the registry's release key: nodes "
                         "would refuse it (check it: fleet release verify %s)"
                         % (version, version), BAD_RELEASE)
    brokers: set[str] = set()
    nodes = []
    for device_id in dict.fromkeys(device_ids):
        device = registry.get(device_id)
        if device.role not in m.roles:
            raise FleetError("release %s is for %s nodes; %s is a %s node" % (
                version, ", ".join(m.roles), device_id, device.role), USAGE)
        site = registry.site(device.site)
        url = mqtt_url or (site.mqtt_url if site else None)
        if not url:
            raise FleetError("no MQTT broker for site %s: set one (fleet site set %s --mqtt "
                             "mqtt://HOST:PORT) or give --mqtt" % (device.site, device.site),
                             NO_SITE)
        brokers.add(url)
        prefix = (site.mqtt_prefix if site else None) or DEFAULT_PREFIX
        nodes.append(NodeUpdate(device_id, device.site, prefix, _release_bytes(m)))
    if len(brokers) > 1:
        raise FleetError("these devices are reached through different brokers (%s): update "
                         "them one site at a time" % ", ".join(sorted(brokers)), USAGE)
    return Plan(release, brokers.pop(), nodes)


def _release_bytes(m: mf.Manifest, running: mf.Manifest | None = None) -> int:
    """What a node fetches for release ``m``: the files that differ from the release it runs
    (all of them when that one is unknown), and the image if there is one."""
    have = {(f.path, f.sha256) for f in running.files} if running else set()
    total = sum(f.size for f in m.files if (f.path, f.sha256) not in have)
    return total + (m.firmware.size if m.firmware else 0)


# --- following the nodes ----------------------------------------------------------------------

def command(version: str, ttl_s: float) -> bytes:
    return json.dumps({"cmd": "ota", "args": {"version": version,
                                              "manifest": "f/%s/%s" % (version, mf.MANIFEST)},
                       "ttl_s": max(1, int(ttl_s)), "ref": REF}).encode()


def on_state(node: NodeUpdate, state: dict, p: Plan, store: Path) -> None:
    """The retained state says which app the node runs: done already, or what it will fetch."""
    app = state.get("app")
    if app == p.release.version:
        node.state = ALREADY
    elif isinstance(app, str) and mf.VERSION_RE.match(app):
        running = read_release(store / app)
        if running.manifest is not None:
            node.total = _release_bytes(p.release.manifest, running.manifest)
            node.exact = True


def on_outcome(node: NodeUpdate, msg: dict) -> None:
    # A command refused before it was read (no such device at the gateway) has no ref
    unread = msg.get("outcome") == outcomes.REFUSED and "ref" not in msg and "cmd" not in msg
    if not unread and (msg.get("ref") != REF or msg.get("cmd") != "ota"):
        return
    if node.command_id is not None and msg.get("id") not in (None, node.command_id):
        return                           # an earlier run's command
    outcome = msg.get("outcome")
    if outcome == outcomes.QUEUED:
        node.command_id = msg.get("id")
        if node.state == "sent":
            node.state = "queued"
    elif outcome in (outcomes.DELIVERED, outcomes.ACKNOWLEDGED):
        if node.state in ("sent", "queued"):
            node.state = "notified"
    elif outcome == outcomes.REJECTED:
        _end(node, "failed", "the node refused the ota command (no release key: provision it "
                             "again; or another release is on trial): its console says which")
    elif outcome == outcomes.EXPIRED:
        _end(node, "not reached", "the node did not take the command before it expired")
    elif outcome == outcomes.REFUSED:
        _end(node, "not reached", "the gateway refused the command: %s" % msg.get("reason"))


def on_status(node: NodeUpdate, values: dict, version: str) -> None:
    upd = values.get("upd")
    if upd is None:
        if values.get("app") == version and node.state == "switched":
            node.state = CONFIRMED       # the confirmation's own frame was missed
        return
    if values.get("updv") != version:
        return                           # an earlier update's final state
    shown = _SHOWN.get(str(upd), str(upd))
    if isinstance(values.get("updb"), (int, float)):
        node.fetched = int(values["updb"])
    if shown in ("failed", "rolled back"):
        _end(node, shown, str(values.get("updr") or "no reason given"))
    elif not node.final:
        node.state = shown


def _end(node: NodeUpdate, state: str, reason: str) -> None:
    if not node.final:
        node.state = state
        node.reason = reason


def follow(p: Plan, store: Path, *, timeout_s: float = TIMEOUT_S, view: "View") -> int:
    """Send the command to each node not on the release yet and follow all to a final state
    or the timeout; the exit status (0: every node confirmed)."""
    by_topic = {}
    for node in p.nodes:
        for leaf in (topics.STATE, topics.STATUS, topics.OUTCOME):
            by_topic[node.topic(leaf)] = (node, leaf)
    session = BrokerSession(p.broker, list(by_topic))
    try:
        seen = _read(session, 0, RETAINED_SETTLE_S, by_topic, p, store)
        for node in p.nodes:
            if not node.final:
                session.publish(node.topic(topics.DOWN), command(p.release.version, timeout_s))
        view.draw(p.nodes)
        deadline = time.monotonic() + timeout_s
        while not all(n.final for n in p.nodes) and time.monotonic() < deadline:
            count = _read(session, seen, min(1.0, deadline - time.monotonic()), by_topic,
                          p, store)
            if count != seen:
                seen = count
                view.draw(p.nodes)
    finally:
        session.close()
    view.done(p.nodes, timeout_s)
    return 0 if all(n.ok for n in p.nodes) else 1


def _read(session: BrokerSession, seen: int, wait_s: float, by_topic: dict, p: Plan,
          store: Path) -> int:
    count = session.wait(seen, wait_s)
    for msg in session.messages[seen:count]:
        node, leaf = by_topic.get(msg.topic, (None, None))
        if node is None:
            continue
        if leaf == topics.STATUS and not msg.retained:
            on_status(node, senmljson.values(msg.payload), p.release.version)
            continue
        try:
            data = json.loads(msg.payload)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if leaf == topics.STATE:
            if node.state == "sent":
                on_state(node, data, p, store)
        elif not msg.retained:
            on_outcome(node, data)
    return count


# --- showing them -----------------------------------------------------------------------------

class View:
    """A bar per node redrawn in place on a terminal; elsewhere (logs, CI) a line per change."""

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._drawn = 0
        self._last: dict[str, str] = {}
        self._started = time.monotonic()

    def _line(self, node: NodeUpdate, width: int) -> str:
        if self.live:
            filled = round(node.fraction() * BAR_WIDTH)
            bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "] "
        else:
            bar = ""
        return "%-*s %s%s" % (width, node.device, bar, node.describe())

    def draw(self, nodes: list[NodeUpdate]) -> None:
        """Show what changed since the last drawing (nothing when nothing did)."""
        width = max(len(n.device) for n in nodes)
        changed = [n for n in nodes if self._last.get(n.device) != n.describe()]
        if not changed:
            return
        for node in changed:
            self._last[node.device] = node.describe()
        if self.live:
            if self._drawn:
                self.stream.write("\x1b[%dF" % self._drawn)
            for node in nodes:
                self.stream.write("\r\x1b[K" + self._line(node, width) + "\n")
            self._drawn = len(nodes)
        else:
            for node in changed:
                self.stream.write("%6.0f s  %s\n" % (time.monotonic() - self._started,
                                                    self._line(node, width)))
        self.stream.flush()

    def done(self, nodes: list[NodeUpdate], timeout_s: float) -> None:
        self.draw(nodes)
        ok = sum(n.ok for n in nodes)
        failed = [n for n in nodes if n.final and not n.ok]
        open_ = [n for n in nodes if not n.final]
        self.stream.write("%d confirmed, %d failed, %d not finished after %.0f s\n" % (
            ok, len(failed), len(open_), time.monotonic() - self._started))
        if open_:
            self.stream.write(
                "not final within the %.0f s of --timeout: %s. The nodes go on by themselves; "
                "follow them on their state topics or run this again\n"
                % (timeout_s, ", ".join(n.device for n in open_)))
        self.stream.flush()
