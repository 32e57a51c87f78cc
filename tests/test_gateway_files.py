"""The OTA file service: the cache filled from the release store, files served block-wise
(RFC 7959) under OSCORE, to a simulated node and to aiocoap; libcoap's coap-client sees the
gateway's resource directory."""

import asyncio
import hashlib
import os
import shutil
import subprocess

import pytest

from gateway import coap
from gateway.files import FileCache
from registry.db import Registry, export_oscore
from testbed.gwharness import Node, aiocoap_as_device, make_config, running
from testbed.nodesim import SimNode


def _release(store, version, files):
    folder = store / version
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_the_cache_takes_complete_releases_only_and_follows_the_store(tmp_path):
    store, cache_dir = tmp_path / "store", tmp_path / "cache"
    _release(store, "1.0.0", {"manifest": b"m1", "app.bin": b"a" * 100})
    _release(store, "1.1.0", {"app.bin": b"b" * 10})            # manifest not written yet
    (store / "1.0.0" / "..hidden").write_bytes(b"x")
    cache = FileCache(cache_dir, store)
    assert cache.sync() == (["1.0.0"], [])
    assert sorted(p.name for p in (cache_dir / "1.0.0").iterdir()) == ["app.bin", "manifest"]
    (store / "1.1.0" / "manifest").write_bytes(b"m2")
    shutil.rmtree(store / "1.0.0")
    assert cache.sync() == (["1.1.0"], ["1.0.0"])
    assert cache.releases() == ["1.1.0"]
    assert not list(cache_dir.glob(".partial-*"))


def test_blocks_cover_the_file_and_names_cannot_escape(tmp_path):
    cache_dir = tmp_path / "cache"
    data = os.urandom(2000)
    _release(cache_dir, "2.0.0", {"manifest": b"m", "app.bin": data})
    (tmp_path / "secret").write_bytes(b"no")
    cache = FileCache(cache_dir, None, max_block=512)
    first = cache.serve(("f", "2.0.0", "app.bin"), None)
    assert first.code == coap.CONTENT
    block = coap.decode_block(coap.option(first.options, coap.BLOCK2))
    assert (block.num, block.more, block.size) == (0, True, 512)
    assert coap.decode_uint(coap.option(first.options, coap.SIZE2)) == 2000
    # a client asking for 1024-byte blocks gets 512 (the gateway's largest), same offsets
    ask = coap.encode_block(coap.Block(1, False, 6))
    second = cache.serve(("f", "2.0.0", "app.bin"), ask)
    assert second.payload == data[1024:1536]
    assert cache.serve(("f", "2.0.0", "app.bin"), coap.encode_block(
        coap.Block(9, False, 5))).code == coap.BAD_OPTION
    for path in (("f", "..", "secret"), ("f", "2.0.0", "../../secret"), ("f", "2.0.0"),
                 ("f", "2.0.0", "missing")):
        assert cache.serve(path, None).code == coap.NOT_FOUND


async def test_a_node_fetches_a_release_block_by_block(tmp_path, broker):
    registry = Registry("sqlite:///%s" % (tmp_path / "fleet.db"))
    device = registry.add_device("shaft-01", "shaft", "north")
    store = tmp_path / "store"
    data = os.urandom(5000)
    _release(store, "1.2.0", {"manifest": b"signed-manifest", "app.bin": data})
    cfg = make_config(tmp_path, broker.port, registry.url,
                      files={"source": str(store), "block_size": 256})
    async with running(cfg) as gw:
        async with asyncio.timeout(5):
            while gw.files.releases() != ["1.2.0"]:
                await asyncio.sleep(0.05)
        node = Node(SimNode.of(device), gw.config.coap.port)
        got = bytearray()
        num = 0
        etags = set()
        while True:
            answer = await node.post("f/1.2.0/app.bin", b"", code=coap.GET, inner=[
                (coap.BLOCK2, coap.encode_block(coap.Block(num, False, 4)))])
            assert answer.code == coap.CONTENT
            block = coap.decode_block(answer.option(coap.BLOCK2))
            etags.add(answer.option(coap.ETAG))
            got += answer.payload
            if not block.more:
                break
            num += 1
        assert bytes(got) == data and len(etags) == 1 and num == 19
        assert gw.metrics.value("file_blocks_total") == 20
        node.close()


async def test_aiocoap_fetches_a_file_blockwise_through_oscore(tmp_path, broker):
    import aiocoap

    registry = Registry("sqlite:///%s" % (tmp_path / "fleet.db"))
    device = registry.add_device("lamp-01", "lighting", "north")
    export_oscore(device, tmp_path / "ctx", seq_start=0)
    data = os.urandom(3000)
    files = tmp_path / "state" / "files"
    _release(files, "3.0.0", {"manifest": b"m", "app.bin": data})
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw, \
            aiocoap_as_device(tmp_path / "ctx") as ctx:
        request = aiocoap.Message(code=aiocoap.GET, uri="coap://127.0.0.1:%d/f/3.0.0/app.bin"
                                  % gw.config.coap.port)
        response = await asyncio.wait_for(ctx.request(request).response, 20)
        assert response.code == aiocoap.CONTENT
        assert hashlib.sha256(response.payload).digest() == hashlib.sha256(data).digest()


def _coap_client():
    found = shutil.which("coap-client") or shutil.which("coap-client-openssl") \
        or shutil.which("coap-client-gnutls")
    if found is None and os.environ.get("CITYTESTBED_REQUIRE_LIBCOAP") != "1":
        pytest.skip("libcoap's coap-client is not installed (apt-get install libcoap3-bin)")
    assert found, "CITYTESTBED_REQUIRE_LIBCOAP=1 but no coap-client on PATH"
    return found


async def test_libcoap_coap_client_reads_the_resource_directory(tmp_path, broker):
    """Debian's libcoap is built without OSCORE, so it meets the unprotected side: the
    resource directory, and the 4.01 every other unprotected request gets."""
    client = _coap_client()
    registry = Registry("sqlite:///%s" % (tmp_path / "fleet.db"))
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw:
        base = "coap://127.0.0.1:%d" % gw.config.coap.port

        def run(*args):
            return subprocess.run([client, "-B", "5", *args], capture_output=True, text=True,
                                  timeout=20)

        directory = await asyncio.to_thread(run, "-m", "get", base + "/.well-known/core")
        assert '</c>;obs;ct=60' in directory.stdout
        refused = await asyncio.to_thread(run, "-m", "post", "-e", "x", base + "/u")
        assert "4.01" in refused.stdout + refused.stderr
