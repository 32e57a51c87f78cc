# An update's first step: the release's signed manifest (protocol.md §9.1) fetched from the
# gateway's file service and believed only once its signature is the release key's from
# config.json; then refused unless it is for this role, this MicroPython and .mpy format, and
# newer than what runs. What staging needs of it is written to /next.lst, one line per file
# ("size sha256-hex path"), so that staging reads one file's entry at a time instead of holding
# the decoded manifest; an image's entry goes into /ota.json ("fw").
#
# Imported by app/update.py for this step only (with the signature check's ecdsa module).

from micropython import const
import gc
import sys
import hashlib
from binascii import hexlify

import cbor
import coap
import bootswitch as bs
from app.heap import note
from app.update import UpdateError, log, running

_SZX = const(5)                 # 512-byte blocks (the gateway's default largest)
_MANIFEST_MAX = const(8192)
LIST = "next.lst"


async def fetch(node, st):
    got = bytearray()

    def sink(offset, data):
        if offset + len(data) > _MANIFEST_MAX:
            raise UpdateError("the manifest is larger than %d bytes" % _MANIFEST_MAX)
        got.extend(data)
    code, _ = await node.link.client().aget_blocks(st["m"], sink, _SZX)
    if code == coap.NOT_FOUND:
        # The gateway may not have copied the release from the fleet's store yet: asked
        # again later, like a gateway that does not answer, until the tries run out.
        raise OSError("the gateway has no release %s" % st["v"])
    if code != coap.CONTENT:
        raise OSError("manifest: %d.%02d" % (code >> 5, code & 31))
    m = check(node, got, st["v"])
    got = None                # the bytes are not needed any more
    total = 0
    with open(LIST, "w") as f:
        for path, size, digest in m["files"]:
            f.write("%d %s %s\n" % (size, hexlify(digest).decode(), path))
            total += size
    if m.get("fw"):
        version, size, digest = m["fw"]
        st["fw"] = [version, size, hexlify(digest).decode()]
        total += size
    for d in bs.DIRS:
        bs.makedirs("next/" + d + "/x")
    log("release %s (%d) verified: %d files" % (st["v"], m["n"], len(m["files"])))
    st.update({"s": "stage", "n": m["n"], "i": 0, "e": 0, "tot": total})
    bs.save(st)
    node.report_soon()


def check(node, data, version):
    """The manifest's body if its signature is the release key's and it is for this node;
    UpdateError with the reason otherwise."""
    import ecdsa
    try:
        outer = cbor.loads(data)
    except ValueError:
        raise UpdateError("the manifest is not CBOR")
    if not (isinstance(outer, list) and len(outer) == 3 and outer[0] == 1
            and isinstance(outer[1], bytes) and isinstance(outer[2], bytes)):
        raise UpdateError("not a manifest of format 1")
    body, signature = outer[1], outer[2]
    del outer
    if not ecdsa.verify(node.cfg.release_key, hashlib.sha256(body).digest(), signature):
        raise UpdateError("bad signature: not signed with this node's release key")
    note(node.heap_base)
    m = cbor.loads(body)
    del body
    gc.collect()
    note(node.heap_base)
    if m.get("v") != version:
        raise UpdateError("the manifest is for release %s, not %s" % (m.get("v"), version))
    if node.cfg.role not in m.get("roles", ()):
        raise UpdateError("release %s is not for %s nodes" % (version, node.cfg.role))
    _, cur_n = running(node)
    if not isinstance(m.get("n"), int) or m["n"] <= cur_n:
        raise UpdateError("release %s (%s) is not newer than the running one (%d)"
                          % (version, m.get("n"), cur_n))
    need = _version_tuple(m.get("mp", ""))
    if not need or tuple(sys.implementation.version[:len(need)]) < need:
        raise UpdateError("release %s needs MicroPython %s" % (version, m.get("mp")))
    mpy = getattr(sys.implementation, "_mpy", None)
    if mpy is not None and m.get("mpy") != mpy & 0xFF:
        raise UpdateError("release %s is built for .mpy format %s, this node reads %d"
                          % (version, m.get("mpy"), mpy & 0xFF))
    return m


def _version_tuple(text):
    out = []
    for seg in text.lstrip("v").split("-")[0].split("."):
        try:
            out.append(int(seg))
        except ValueError:
            break
    return tuple(out)

