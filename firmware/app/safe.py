# Safe mode: after repeated crash boots (or with a configuration the app cannot run on) the node
# runs only what it needs to be repaired: WiFi, the OSCORE link, a status frame every
# SAFE_STATUS_S (faults: SAFE_MODE, CRASHED, CONFIG + code), and the commands that can fix it:
# `config`, `ota`, and `reboot` (one more try of the app). No role code is imported. A lighting
# node drives its lamp at safe_pct (fail-safe: lit). A battery node stays awake safe_awake_s
# (so a field engineer's console and the gateway's commands can reach it), then deep-sleeps
# interval_s and comes back in safe mode.

from micropython import const
import asyncio
import machine

from app import state as st
from app.node import UPDATE_RUN_MS, log

SAFE_STATUS_S = const(60)


def lamp_fail_safe(node):
    cfg = node.cfg
    if cfg.role != "lighting":
        return
    pct = cfg.raw.get("lighting", {}).get("safe_pct", 100) if isinstance(
        cfg.raw.get("lighting"), dict) else 100
    if not isinstance(pct, int) or not 0 <= pct <= 100:
        pct = 100
    try:
        machine.PWM(machine.Pin(cfg.pins["pwm_led"]), freq=1000, duty_u16=pct * 65535 // 100)
    except (OSError, ValueError) as e:
        log("safe mode: lamp output: %r" % (e,))


async def run(node):
    cfg = node.cfg
    state = node.state
    log("SAFE MODE (%d crash boots; config error %d): only networking, status and updates run"
        % (state.crashes, node.config_error))
    lamp_fail_safe(node)
    node.start_watchdog(cfg.safe_wdt_s)
    node.alive("safe")
    asyncio.create_task(node.watchdog(cfg.safe_wdt_s))
    if not cfg.battery:
        asyncio.create_task(node._observe())
    started = node.now_s()
    while True:
        node.waiting("safe")
        await node.send_status()
        await node.flush()
        node.alive("safe")
        state.save()
        if node.reboot_pending and not state.acks:
            if not node.config_error:
                # one more try: a crash on it brings the node straight back here
                state.crashes = max(0, cfg.safe_after - 1)
            state.flags &= ~st.SAFE
            node.restart()
        if node.update_active or node.switch_pending:
            await node.update(UPDATE_RUN_MS)      # an update may be what repairs the node
        if cfg.battery and cfg.sleep == "deep" and node.now_s() - started >= cfg.safe_awake_s:
            node.deep_sleep(cfg.interval_s * 1000)
        for _ in range(SAFE_STATUS_S // 5):
            node.alive("safe")
            if node.link.commands:
                node.run_commands()
            if node.reboot_pending or state.acks:
                break
            await asyncio.sleep(5)
