"""The transport an OTA update needs, against the real gateway: the node's OSCORE client fetches
a release file from the gateway's file service block by block (RFC 7959 Block2, protocol.md §9).
The update itself waits for the fleet's signed manifest format; until then the node refuses the
`ota` command (docs/firmware.md) and is updated over its console."""

from __future__ import annotations

import hashlib
import json
import os
import time

from boards.nodeapp import FIRMWARE
from fleet.nodeconfig import node_config
from testbed import bed as tb
from vboard.vm import SHIMS, run_source

FETCH = """
import asyncio, hashlib
from app import config, state as st
from app.link import Link
cfg = config.load()
link = Link(cfg, st.State(), print)
got = bytearray()
blocks = []
def sink(offset, data):
    assert offset == len(got)
    blocks.append(len(data))
    got.extend(data)
async def main():
    await link.up()
    return await link.client().aget_blocks("f/1.2.0/app.mpy", sink, szx=6)
code, total = asyncio.run(main())
print("@", code, total, len(got), hashlib.sha256(got).digest().hex(), len(blocks), max(blocks))
"""


def test_a_release_file_comes_block_by_block_through_oscore(tmp_path, broker):
    store = tmp_path / "releases" / "1.2.0"
    store.mkdir(parents=True)
    payload = os.urandom(2600)                  # five 512-byte blocks and a short one
    (store / "app.mpy").write_bytes(payload)
    (store / "manifest").write_bytes(b"signed manifest (the fleet's format)")
    bed = tb.Testbed(tmp_path / "bed", broker=broker, gateway_toml=(
        '[files]\nsource = "%s"\nsync_interval_s = 1\n' % (tmp_path / "releases"))).start()
    try:
        device = bed.registry.add_device("shaft-01", "shaft", "north")
        node = tmp_path / "node"
        node.mkdir()
        (node / "config.json").write_text(json.dumps(node_config(device, bed.site_profile())))
        deadline = time.monotonic() + 20
        while True:               # the gateway copies the release into its cache first
            proc = run_source(FETCH, [".frozen", FIRMWARE, FIRMWARE / "lib", SHIMS], cwd=node)
            out = proc.stdout.decode()
            line = next((ln for ln in out.splitlines() if ln.startswith("@")), None)
            assert proc.returncode == 0, out + proc.stderr.decode()
            if line and line.split()[1] == str(0x45):
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.5)
    finally:
        bed.stop(broker=False)
    _, code, total, size, digest, count, largest = line.split()
    # asked for 1024-byte blocks, served 512 (the gateway's largest): 5 of them and a short one
    assert (int(count), int(largest)) == (6, 512)
    assert int(total) == int(size) == len(payload)
    assert digest == hashlib.sha256(payload).hexdigest()
