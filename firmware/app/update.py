# Over-the-air update, the node core's side (docs/firmware.md, "Updates"): the `ota` command,
# the update's state in the status frame, and the new release's trial. The work of an update
# (the manifest fetched and checked: app/release.py; the files and image staged:
# app/staging.py) is imported one step at a time and dropped after, so that an update fits the
# heap budget beside a running role (the peak is logged per step: "ota: heap peak").
#
# The state is /ota.json, in the boot stage's format (/bootswitch.py, which switches to a staged
# app at the reset and goes back when the new one does not prove itself).

from micropython import const
import gc
import time

import coap
import bootswitch as bs

# What the state is called in the status frame (`upd`); internal states not listed report as is
_SHOWN = {"fetch": "fetching", "stage": "downloading", "fw": "downloading",
          "switch": "switching", "trial": "switched"}
ACTIVE = ("fetch", "stage", "fw")
_FINAL = ("confirmed", "failed", "rolledback")
RETRY_S = 30         # always-on: pause after a failed attempt
_TRIES = const(10)    # failed fetch attempts in a row before giving up


def log(msg):
    print("ota: " + msg)


def running(node):
    """(version, number) of the app that runs: the last release installed, else the app that
    was provisioned (release 0)."""
    st = bs.load()
    cur = st.get("cur") if st else None
    if isinstance(cur, list) and len(cur) == 2:
        return cur[0], cur[1]
    return node.app_version, 0


# --- the command ------------------------------------------------------------------------------

def start(node, args):
    """`ota` {version, manifest}: True (acknowledged) once the update is taken on."""
    version = args.get("version")
    path = args.get("manifest")
    if not isinstance(version, str) or not isinstance(path, str) or \
            path != "f/%s/manifest" % version:
        node.log_once("ota: bad arguments %r" % (args,))
        return False
    if node.cfg.release_key is None:
        node.log_once("ota %s: refused, this node has no release key (provision it again)"
                      % version)
        return False
    st = bs.load() or {}
    s = st.get("s")
    if s in ("switch", "trial", "rollback"):
        node.log_once("ota %s: refused, release %s is on trial" % (version, st.get("v")))
        return False
    if s in ACTIVE and st.get("v") == version:
        return True                       # already under way
    cur_v, cur_n = running(node)
    for path_ in ("next", "prev", "drop", "next.lst"):
        bs.remove_tree(path_)
    bs.save({"s": "fetch", "v": version, "m": path, "b": 0, "e": 0,
             "cur": [cur_v, cur_n], "prev": [cur_v, cur_n]})
    log("release %s announced" % version)
    node.report_soon()
    node.update_active = True
    return True


# --- the work -------------------------------------------------------------------------------

class UpdateError(Exception):
    """The release cannot be taken (its reason is what the operator reads): not retried."""


async def step(node, budget_ms):
    """Work on the update for about `budget_ms`; False when nothing is left to do now. The
    step's module (app/release.py, app/staging.py) is imported for it and dropped after."""
    from app.heap import forget, note, peak
    st = bs.load()
    if st is None or st.get("s") not in ACTIVE:
        node.update_active = False
        return False
    until = time.ticks_add(time.ticks_ms(), budget_ms)
    fetched = st.get("b", 0)
    try:
        if not await node.link.up():
            raise OSError("no WiFi")
        if st["s"] == "fetch":
            from app import release
            await release.fetch(node, st)
        else:
            from app import staging
            await staging.stage(node, st, until)
        if node.cfg.battery and st["s"] in ACTIVE and st.get("b", 0) != fetched:
            node.report_soon()        # a battery node shows its progress in every wake
        return st["s"] in ACTIVE
    except UpdateError as e:
        _fail(node, st, str(e))
        return False
    except (OSError, coap.Timeout) as e:
        st["e"] = st.get("e", 0) + 1
        if st["e"] >= _TRIES:
            _fail(node, st, "%s (%d tries)" % (e.args[0] if e.args else repr(e), st["e"]))
            return False
        bs.save(st)
        log("%s: %r, trying again later (%d)" % (st["s"], e, st["e"]))
        node.link.close()
        return False
    finally:
        note(node.heap_base)
        log("heap peak %d B used by the app" % peak())
        for name in ("app.staging", "app.release", "ecdsa"):
            forget(name)
        gc.collect()


def _fail(node, st, why):
    log("release %s refused: %s" % (st.get("v"), why))
    st["s"] = "failed"
    st["r"] = why[:120]
    st.pop("rep", None)
    bs.save(st)
    for path in ("next", "next.lst"):
        bs.remove_tree(path)
    node.update_active = False
    node.report_soon()


# --- on trial -----------------------------------------------------------------------------------

def confirm(node):
    """The new app's first uplink was answered: it stays."""
    st = bs.load()
    if st is None or st.get("s") != "trial":
        node.on_trial = False
        return
    if st.get("fwp"):
        import esp32
        esp32.Partition.mark_app_valid_cancel_rollback()
    st["s"] = "confirmed"
    st.pop("rep", None)
    bs.save(st)
    bs.remove_tree("prev")
    node.on_trial = False
    log("release %s confirmed" % st.get("v"))
    node.report_soon()


def give_up(node, why):
    """The app on trial cannot prove itself (no answer within trial_s): back at the reset."""
    st = bs.load()
    if st is None or st.get("s") != "trial":
        return
    st["s"] = "rollback"
    st["r"] = why
    bs.save(st)
    log("release %s: %s; going back to %s" % (st.get("v"), why, (st.get("prev") or ["?"])[0]))


def records():
    """The status frame's update records, until a final state has been reported once."""
    st = bs.load()
    if st is None or st.get("rep"):
        return []
    s = st.get("s")
    out = [("upd", _SHOWN.get(s, s)), ("updv", st.get("v") or "")]
    if s in ACTIVE or st.get("b"):
        out.append(("updb", st.get("b", 0)))
    if st.get("r") and s in ("failed", "rolledback"):
        out.append(("updr", st["r"]))
    return out


def reported(shown):
    """A status frame with update state `shown` went through: a final state is not sent
    again (one that came after the frame was built still is). True when that was the last."""
    st = bs.load()
    if st is not None and st.get("s") in _FINAL and not st.get("rep") and st["s"] == shown:
        st["rep"] = 1
        bs.save(st)
        return True
    return False
