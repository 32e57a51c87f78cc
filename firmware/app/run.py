# Boot: count the boot and any crash before it, load the configuration, decide between the app
# and safe mode, and run the role (docs/firmware.md, "Boot, watchdog and safe mode").
#
# A crash boot is a boot after a watchdog reset or after a run that did not end on purpose (the
# RUNNING flag in RTC memory is still set: an exception main.py caught, a panic, a hang). After
# safe_after crash boots in a row the node runs in safe mode: networking, status and updates
# only, until the app changes (an update over the console or OTA), a `reboot` command asks for
# one more try, or the power is cycled. A deep-sleep wake, a commanded reboot and a clean run
# of HEALTHY_S (always on) or one full cycle (battery) clear the count.

from micropython import const
import gc
import time
import asyncio
import machine

from app import state as st
from app.heap import forget
from app.node import APP_VERSION, Node, log, DEEPSLEEP_RESET, WDT_RESET

BOOTS_FILE = "boots"
_APP_FILES = ("main.py", "boot.py", "app", "lib", "drivers")
_CONFIG_POLL_S = const(30)


def count_boot():
    try:
        with open(BOOTS_FILE) as f:
            boots = int(f.read()) + 1
    except (OSError, ValueError):
        boots = 1
    with open(BOOTS_FILE, "w") as f:
        f.write("%d" % boots)
    return boots


def fingerprint():
    """A hash of the application's files: an update (over the console or OTA) changes it."""
    import hashlib
    import os
    h = hashlib.sha256()
    buf = bytearray(512)
    todo = list(_APP_FILES)
    while todo:
        path = todo.pop()
        try:
            mode = os.stat(path)[0]
        except OSError:
            continue
        if mode & 0x4000:
            todo.extend(sorted(path + "/" + n for n in os.listdir(path)))
            continue
        h.update(path)
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
    return int.from_bytes(h.digest()[:4], "big")


def make_role(node):
    role = node.cfg.role
    if role == "shaft":
        from app.shaft import Shaft
        return Shaft(node)
    if role == "parking":
        from app.parking import Parking
        return Parking(node)
    from app.lighting import Lighting
    return Lighting(node)


def boot_state():
    state = st.State()
    cause = machine.reset_cause()
    woke = cause == DEEPSLEEP_RESET and not state.fresh
    crashed = not state.fresh and (cause == WDT_RESET or bool(state.flags & st.RUNNING))
    if state.fresh:
        state.crashes = 0
        state.load_handled()
    if crashed:
        state.crashes += 1
    if not woke:
        state.boots = count_boot()
        if state.fresh:
            state.session = state.boots & 0xFF
        state.uptime = state.uptime_ms = 0
        state.status_due = 0
        state.wakes = 0
    state.flags |= st.RUNNING
    state.save()
    return state, woke, crashed


def main(heap_base=0):
    import bootswitch
    from app import config
    state, woke, crashed = boot_state()
    if bootswitch.moved:
        # The boot stage switched to a new release or back: its crashes start at zero.
        state.crashes = 0
        state.flags &= ~st.SAFE
        state.save()
    elif crashed:
        log("boot after a crash (%d in a row)" % state.crashes)
    # A release on trial that crashes goes back by itself (bootswitch.py): no safe mode for it.
    ota = bootswitch.load()
    on_trial = ota is not None and ota.get("s") == "trial"
    try:
        cfg = config.load()
        error = None
    except config.ConfigError as e:
        log("config error %d: %s" % (e.code, e))
        error = e
        try:
            cfg = config.load(network_only=True)
        except config.ConfigError:
            offline(state, error)
            return
    del config
    forget("app.config")          # 12 KB of tables: loaded again only for a `config` command
    gc.collect()
    safe = error is not None or (not on_trial and (
        bool(state.flags & st.SAFE) or state.crashes >= cfg.safe_after))
    if safe and error is None:
        fp = fingerprint()
        if state.flags & st.SAFE and fp != state.fingerprint:
            log("safe mode: the application changed, trying it")
            state.flags &= ~st.SAFE
            state.crashes = 0
            safe = False
        elif not state.flags & st.SAFE:
            state.fingerprint = fp
            state.flags |= st.SAFE
        state.save()
    node = Node(cfg, state, safe)
    node.heap_base = heap_base
    node.crashed = crashed
    node.woke = woke
    if error is not None:
        node.config_error = error.code
    if safe:
        from app import safe as safe_mode
        asyncio.run(safe_mode.run(node))
        return
    if not woke:
        log("node %s (%s, site %s) app %s, gateway %s:%d, boot %d" % (
            cfg.id, cfg.role, cfg.site, APP_VERSION, cfg.gateway_host, cfg.gateway_port,
            state.boots))
    node.role = make_role(node)
    node.start_watchdog(cfg.wdt_s)
    if not cfg.battery:
        asyncio.run(node.always_on(node.role))
    elif cfg.sleep == "deep":
        node.deep_sleep(asyncio.run(_one_cycle(node)))
    else:
        asyncio.run(_light_cycles(node))


async def _one_cycle(node):
    asyncio.create_task(node.watchdog(node.cfg.wdt_s))
    return await node.cycle(node.role)


async def _light_cycles(node):
    """Battery roles without deep sleep (bench supply, host runner): the same cycle, awake."""
    asyncio.create_task(node.watchdog(node.cfg.wdt_s))
    while True:
        sleep_ms = await node.cycle(node.role)
        node.state.save()
        node.waiting("cycle")              # sleeping is not hanging
        await asyncio.sleep_ms(sleep_ms)


def offline(state, error):
    """No usable configuration, not even to reach the gateway: say so on the console until
    config.json changes (a field engineer fixes it with mpremote), then start again."""
    import os
    from app import config

    def stamp():
        try:
            s = os.stat(config.PATH)
            return s[6], s[8]
        except OSError:
            return None

    seen = stamp()
    state.flags &= ~st.RUNNING      # waiting for a fix is not a crash
    state.save()
    while True:
        log("config error %d: %s (fix config.json; checking every %d s)"
            % (error.code, error, _CONFIG_POLL_S))
        time.sleep(_CONFIG_POLL_S)
        if stamp() != seen:
            log("config.json changed: restarting")
            machine.reset()
