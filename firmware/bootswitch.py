# The boot stage's half of an over-the-air update (docs/firmware.md, "Updates"): before main.py
# imports the app, switch to a staged app, count the boots of an app on probation, and switch
# back to the previous one when it does not prove itself in time.
#
# Written by provisioning, never by an update (a release holds app/, lib/ and drivers/ only),
# so a release cannot break the code that undoes it.
#
# An update (app/update.py) stages the new app complete in /next/ (every one of DIRS, even an
# empty one), then writes /ota.json with "s": "switch" and resets. Here each folder moves
# /X -> /prev/X, then /next/X -> /X: every rename is atomic on littlefs and each is done only if
# still needed, so a power cut anywhere leaves a state the next boot completes. The app that is
# imported is all old or all new, never a mix. Going back is the same in reverse, the new
# folders moving to /drop/ first.
#
# /ota.json ("s" the state): switch -> trial -> confirmed (by the app, at the first answered
# uplink) or -> rollback -> rolledback (here). While on trial a boot that is not a deep-sleep
# wake counts; more than "tries" of them, "trial_s" seconds by the clock, or a new MicroPython
# image that the bootloader refused ("fwp": the partition it should run from) send it back.

import os
import time
import json
import machine

STATE = "ota.json"
DIRS = ("app", "lib", "drivers")
_DEEPSLEEP_RESET = 4
moved = False        # this boot switched to another app (the app's crash count starts again)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def load():
    try:
        with open(STATE) as f:
            st = json.load(f)
        return st if isinstance(st, dict) else None
    except (OSError, ValueError):
        return None


def save(st):
    """Replace /ota.json in one step (a power cut leaves the old or the new state)."""
    with open("ota.tmp", "w") as f:
        json.dump(st, f)
    os.rename("ota.tmp", STATE)


def remove_tree(path):
    if not exists(path):
        return
    if os.stat(path)[0] & 0x4000:
        for name in os.listdir(path):
            remove_tree(path + "/" + name)
        os.rmdir(path)
    else:
        os.remove(path)


def makedirs(path):
    """The folders above file `path` (an update stages nested paths in /next)."""
    part = ""
    for seg in path.split("/")[:-1]:
        part = part + "/" + seg if part else seg
        if not exists(part):
            os.mkdir(part)


def _forward():
    # Only a stale /prev (which the update removes before it asks for the switch) has all
    # three; a switch cut short never does. Nothing moves then: the old app stays whole.
    for d in DIRS:
        if exists(d) and exists("next/" + d) and exists("prev/" + d):
            return False
    if not exists("prev"):
        os.mkdir("prev")
    for d in DIRS:
        if exists("next/" + d):
            if exists(d) and not exists("prev/" + d):
                os.rename(d, "prev/" + d)
            if not exists(d):
                os.rename("next/" + d, d)
    return True


def _back():
    if not exists("drop"):
        os.mkdir("drop")
    for d in DIRS:
        if exists("prev/" + d):
            if exists(d) and not exists("drop/" + d):
                os.rename(d, "drop/" + d)
            if not exists(d):
                os.rename("prev/" + d, d)


def running_partition():
    try:
        import esp32
        return esp32.Partition(esp32.Partition.RUNNING).info()[4]
    except (ImportError, OSError, AttributeError):
        return None


def _verdict(st):
    """Why the app on trial goes back, or None."""
    fwp = st.get("fwp")
    if fwp and running_partition() != fwp:
        return "the new MicroPython image did not start (the bootloader went back)"
    if st.get("boots", 0) > st.get("tries", 3):
        return "it did not reach the gateway in %d boots (crash or watchdog)" % st.get("tries", 3)
    now = time.time()
    t = st.get("t", now)
    if now < t:                  # the clock restarted (power cut): count from here
        st["t"] = now
    elif now - t > st.get("trial_s", 600):
        return "no answer from the gateway within %d s" % st.get("trial_s", 600)
    return None


def run():
    global moved
    st = load()
    if st is None:
        return None
    s = st.get("s")
    if s == "switch":
        if not _forward():
            st["s"] = "failed"
            st["r"] = "switch: a folder of the old app was still in /prev"
            save(st)
            return st
        moved = True
        st["s"] = s = "trial"
        st["boots"] = 0
        st["t"] = time.time()
        remove_tree("next")
    if s == "trial":
        if machine.reset_cause() != _DEEPSLEEP_RESET:
            st["boots"] = st.get("boots", 0) + 1
        why = _verdict(st)
        if why is not None:
            st["s"] = s = "rollback"
            st["r"] = why
        save(st)
    if s == "rollback":
        _back()
        moved = True
        st["s"] = "rolledback"
        st["cur"] = st.get("prev")
        st.pop("rep", None)
        save(st)
        remove_tree("drop")
        remove_tree("prev")
    elif s == "confirmed" and exists("prev"):
        remove_tree("prev")
    return st
