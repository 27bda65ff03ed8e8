"""Record golden vectors of the bittensor-10 synapse wire format from a REAL bittensor 10.1.0 Dendrite and Axon.

Runs only in a scratch venv with bittensor 10.1.0 (not a project dependency)::

    python3 -m venv scratch/bt10venv
    scratch/bt10venv/bin/pip install bittensor==10.1.0 async-substrate-interface==1.6.4
    git -C <vidaio-subnet checkout> show HEAD:vidaio_subnet_core/protocol.py > scratch/vidaio/protocol.py
    scratch/bt10venv/bin/python scripts/record_golden_vectors.py --vidaio-protocol scratch/vidaio/protocol.py \
        --out tests/data/golden/legacy_bt10.json

Setup on 127.0.0.1: a real ``bittensor.Axon`` serving Vidaio's own synapse classes (forward functions
fill in answers; a blacklist refuses the "outsider" key), and a recording proxy in front of it. A real
``bittensor.Dendrite`` calls the proxy; every exchange is recorded byte for byte (request method, path,
headers, body; the axon's status, headers, body) with what the dendrite made of the answer. Failure
cases: a forged signature, a request signed for another receiver, a blacklisted caller, a stale nonce,
and a replayed request. Last, the dendrite calls a FastAPI app answering with this repository's
``miner.protocol.answer_synapse`` and its parsed results are recorded and checked (compatibility).
Keys are fresh test-only mnemonics, stored in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import socket
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any, Tuple

import uvicorn
from fastapi import FastAPI, Request, Response

REPO = Path(__file__).resolve().parents[1]
EXTERNAL_IP = "203.0.113.5"  # the dendrite's "external" address (no network lookup)
URLS = ["https://example.com/clips/a.mp4", "https://example.com/clips/b.mp4"]
RESULT_URLS = ["https://results.example/a_up.mp4", "https://results.example/b_up.mp4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_vidaio_protocol(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("vidaio_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wallet(bt_wallet: Any, root: str, name: str, mnemonic: str) -> Any:
    wallet = bt_wallet.Wallet(name=name, hotkey="default", path=root)
    wallet.regenerate_coldkey(mnemonic=mnemonic, use_password=False, overwrite=True, suppress=True)
    wallet.regenerate_hotkey(mnemonic=mnemonic, use_password=False, overwrite=True, suppress=True)
    return wallet


def attach_all(axon: Any, proto: types.ModuleType, outsider: str) -> None:
    """Forward functions for the five served synapses, each with a blacklist refusing ``outsider``."""

    def upscale(s):
        s.miner_response = proto.MinerResponse(optimized_video_urls=RESULT_URLS[: len(s.miner_payload.reference_video_urls)])
        return s

    def length(s):
        s.max_content_length = proto.ContentLength.TEN
        return s

    def warrant(s):
        s.warrant_task = proto.TaskType.UPSCALING
        return s

    def job(s):
        s.job_response = proto.JobKickoffResponse(accepted=True)
        return s

    def poll(s):
        s.poll_response = proto.PollResponse(job_id=s.job_id, status="completed", optimized_video_urls=RESULT_URLS)
        return s

    for cls, fn in ((proto.VideoUpscalingProtocol, upscale), (proto.LengthCheckProtocol, length),
                    (proto.TaskWarrantProtocol, warrant), (proto.VideoUpscalingJobProtocol, job),
                    (proto.VideoUpscalingPollProtocol, poll)):
        param = [inspect.Parameter("synapse", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=cls)]

        def forward(synapse, _fn=fn):
            return _fn(synapse)

        def blacklist(synapse):
            return (synapse.dendrite.hotkey == outsider, "outsider hotkey")

        forward.__signature__ = inspect.Signature(param, return_annotation=cls)
        blacklist.__signature__ = inspect.Signature(param, return_annotation=Tuple[bool, str])
        axon.attach(forward_fn=forward, blacklist_fn=blacklist)


class Proxy:
    """Records each exchange and forwards it to the axon; ``mode`` tampers with the next request."""

    def __init__(self, aiohttp: Any, target: str) -> None:
        self.aiohttp, self.target = aiohttp, target
        self.mode: str | None = None
        self.exchanges: list[dict] = []

    async def handle(self, request: Any) -> Any:
        web = self.aiohttp.web
        body = await request.read()
        entry: dict[str, Any] = {"request": {"method": request.method, "path": request.path,
                                             "headers": [[k, v] for k, v in request.headers.items()],
                                             "body": body.decode()},
                                 "received_at_ns": time.time_ns()}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        if self.mode == "forge":
            headers["bt_header_dendrite_signature"] = "0x" + "ab" * 64
            entry["sent_to_axon"] = {"bt_header_dendrite_signature": headers["bt_header_dendrite_signature"]}
        async with self.aiohttp.ClientSession() as session:
            for attempt in range(2 if self.mode == "replay" else 1):
                async with session.request(request.method, self.target + request.path, headers=headers, data=body) as resp:
                    raw = await resp.read()
                    answer = {"status": resp.status, "headers": [[k, v] for k, v in resp.headers.items()],
                              "body": raw.decode()}
                if attempt == 0 and self.mode == "replay":
                    entry["first_response"] = answer
        entry["response"] = answer
        self.exchanges.append(entry)
        passed = {k: v for k, v in resp.headers.items()
                  if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "date", "server")}
        return web.Response(status=resp.status, body=raw, headers=passed)


async def serve_proxy(aiohttp: Any, proxy: Proxy, port: int) -> Any:
    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def start_compat_server(port: int, outsider: str) -> Any:
    """A FastAPI app answering every served synapse with this repository's ``answer_synapse``, and
    ``outsider`` with the 403 that ``miner.auth`` sends (``legacy_response`` without a synapse)."""
    sys.path.insert(0, str(REPO))
    from miner import protocol as ours

    app = FastAPI()

    def fill(synapse: Any) -> None:
        if isinstance(synapse, ours.VideoUpscalingProtocol):
            synapse.miner_response = ours.MinerResponse(optimized_video_urls=RESULT_URLS)
        elif isinstance(synapse, ours.LengthCheckProtocol):
            synapse.max_content_length = ours.ContentLength.TEN
        elif isinstance(synapse, ours.TaskWarrantProtocol):
            synapse.warrant_task = ours.TaskType.UPSCALING
        elif isinstance(synapse, ours.VideoUpscalingJobProtocol):
            synapse.job_response = ours.JobKickoffResponse(accepted=True)
        elif isinstance(synapse, ours.VideoUpscalingPollProtocol):
            synapse.poll_response = ours.PollResponse(job_id=synapse.job_id, status="completed",
                                                      optimized_video_urls=RESULT_URLS)

    def route(cls: Any) -> Any:
        async def handler(request: Request) -> Any:
            if request.headers.get("bt_header_dendrite_hotkey") == outsider:
                body, headers = ours.legacy_response(None, 403, f"hotkey {outsider} is not a registered validator")
                return Response(content=body, status_code=403, headers=headers)
            synapse = ours.parse_synapse(cls, await request.body())
            fill(synapse)
            return ours.answer_synapse(synapse, status_code=200, message="Success")

        return handler

    for name, cls in ours.SERVED_SYNAPSES.items():
        app.add_api_route(f"/{name}", route(cls), methods=["POST"])

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server


def dump(synapse: Any) -> dict:
    return json.loads(synapse.model_dump_json())


async def record(args: argparse.Namespace) -> dict:
    import aiohttp
    import aiohttp.web  # noqa: F401
    import bittensor as bt
    import bittensor_wallet as btw
    from bittensor.core import dendrite as dendrite_module
    from bittensor.core.chain_data import AxonInfo
    from bittensor.core.settings import version_as_int

    dendrite_module.networking.get_external_ip = lambda: EXTERNAL_IP
    proto = load_vidaio_protocol(args.vidaio_protocol)
    mnemonics = {role: btw.Keypair.generate_mnemonic(12) for role in ("validator", "miner", "outsider")}
    keys = {role: btw.Keypair.create_from_mnemonic(m) for role, m in mnemonics.items()}
    root = tempfile.mkdtemp(prefix="golden-wallets-")
    miner_wallet = make_wallet(btw, root, "miner", mnemonics["miner"])

    axon_port, proxy_port, compat_port = free_port(), free_port(), free_port()
    axon = bt.Axon(wallet=miner_wallet, ip="127.0.0.1", port=axon_port, external_ip="127.0.0.1")
    attach_all(axon, proto, keys["outsider"].ss58_address)
    axon.start()
    proxy = Proxy(aiohttp, f"http://127.0.0.1:{axon_port}")
    runner = await serve_proxy(aiohttp, proxy, proxy_port)
    time.sleep(1.0)

    def target(port: int, hotkey: str) -> Any:
        return AxonInfo(version=version_as_int, ip="127.0.0.1", ip_type=4, port=port, hotkey=hotkey,
                        coldkey=miner_wallet.coldkeypub.ss58_address, protocol=4, placeholder1=0, placeholder2=0)

    payload = proto.UpscalingMinerPayload(reference_video_urls=URLS, task_types=["SD2HD", "SD24K"],
                                          maximum_optimized_size_mb=50)
    calls = [
        ("VideoUpscalingProtocol", proto.VideoUpscalingProtocol(round_id="round-42", miner_payload=payload,
                                                                version=proto.Version(major=2, minor=1, patch=0)), 135.0),
        ("LengthCheckProtocol", proto.LengthCheckProtocol(version=proto.Version(major=2, minor=1, patch=0)), 10.0),
        ("TaskWarrantProtocol", proto.TaskWarrantProtocol(), 60.0),
        ("VideoUpscalingJobProtocol", proto.VideoUpscalingJobProtocol(job_id="job-7", miner_payload=payload), 60.0),
        ("VideoUpscalingPollProtocol", proto.VideoUpscalingPollProtocol(job_id="job-7"), 15.0),
    ]
    miner_hotkey = keys["miner"].ss58_address
    exchanges: list[dict] = []

    async def call(case: str, dendrite: Any, synapse: Any, timeout: float, *, mode: str | None = None,
                   receiver: str = miner_hotkey, port: int = proxy_port, expect: int) -> dict:
        proxy.mode = mode
        result = await dendrite.call(target(port, receiver), synapse, timeout=timeout, deserialize=False)
        proxy.mode = None
        status = int(result.dendrite.status_code)
        if status != expect:
            raise SystemExit(f"{case}: expected {expect}, got {status} {result.dendrite.status_message}")
        entry = {"case": case, "synapse": type(synapse).__name__, "timeout": timeout, "expect_status": expect,
                 "dendrite_result": dump(result)}
        if port == proxy_port:
            entry.update(proxy.exchanges.pop())
        return entry

    async with bt.Dendrite(wallet=keys["validator"]) as dendrite:
        for name, synapse, timeout in calls:
            exchanges.append(await call(f"ok/{name}", dendrite, synapse, timeout, expect=200))
        exchanges.append(await call("forged_signature", dendrite, proto.LengthCheckProtocol(), 10.0, mode="forge", expect=401))
        exchanges.append(await call("wrong_receiver", dendrite, proto.LengthCheckProtocol(), 10.0,
                                    receiver=keys["outsider"].ss58_address, expect=401))
        exchanges.append(await call("replay", dendrite, proto.TaskWarrantProtocol(), 10.0, mode="replay", expect=401))
        real_time = time.time_ns
        dendrite_module.time = types.SimpleNamespace(time=time.time, time_ns=lambda: real_time() - 60 * 10**9)
        try:
            async with bt.Dendrite(wallet=keys["validator"]) as old:
                exchanges.append(await call("stale_nonce", old, proto.LengthCheckProtocol(), 10.0, expect=401))
        finally:
            dendrite_module.time = time
    async with bt.Dendrite(wallet=keys["outsider"]) as outsider:
        exchanges.append(await call("blacklisted", outsider, proto.LengthCheckProtocol(), 10.0, expect=403))

    compat_server = start_compat_server(compat_port, keys["outsider"].ss58_address)
    compat = []
    async with bt.Dendrite(wallet=keys["validator"]) as dendrite:
        for name, synapse, timeout in calls:
            compat.append(await call(f"ours/{name}", dendrite, synapse, timeout, port=compat_port, expect=200))
    async with bt.Dendrite(wallet=keys["outsider"]) as outsider:
        compat.append(await call("ours/refused", outsider, proto.LengthCheckProtocol(), 10.0, port=compat_port,
                                 expect=403))
    check_compat(compat)
    compat_server.should_exit = True
    await runner.cleanup()
    axon.stop()
    return {
        "generator": "scripts/record_golden_vectors.py",
        "bittensor": bt.__version__,
        "python": sys.version.split()[0],
        "vidaio_protocol": str(args.vidaio_commit or ""),
        "note": "test-only keys; requests recorded from a real bittensor 10.1.0 Dendrite, responses from a real Axon",
        "dendrite_external_ip": EXTERNAL_IP,
        "keys": {role: {"mnemonic": m, "ss58": keys[role].ss58_address} for role, m in mnemonics.items()},
        "exchanges": exchanges,
        "ours_parsed_by_bt10_dendrite": compat,
    }


def check_compat(compat: list[dict]) -> None:
    """The real dendrite must read our answers as successes with the values we filled in."""
    refused = next(c["dendrite_result"] for c in compat if c["case"] == "ours/refused")
    assert refused["dendrite"]["status_code"] == 403 and "not a registered validator" in refused["dendrite"]["status_message"]
    by_name = {c["synapse"]: c["dendrite_result"] for c in compat if c["case"] != "ours/refused"}
    assert by_name["VideoUpscalingProtocol"]["miner_response"]["optimized_video_urls"] == RESULT_URLS
    assert by_name["LengthCheckProtocol"]["max_content_length"] == 10
    assert by_name["TaskWarrantProtocol"]["warrant_task"] == 2
    assert by_name["VideoUpscalingJobProtocol"]["job_response"]["accepted"] is True
    assert by_name["VideoUpscalingPollProtocol"]["poll_response"]["status"] == "completed"
    for result in by_name.values():
        assert result["dendrite"]["status_code"] == 200, result["dendrite"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vidaio-protocol", type=Path, required=True, help="a copy of vidaio_subnet_core/protocol.py")
    parser.add_argument("--vidaio-commit", default="", help="the vidaio-subnet commit the copy comes from")
    parser.add_argument("--out", type=Path, default=REPO / "tests/data/golden/legacy_bt10.json")
    args = parser.parse_args()
    vectors = asyncio.run(record(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {len(vectors['exchanges'])} exchanges and {len(vectors['ours_parsed_by_bt10_dendrite'])} "
          f"compatibility results to {args.out}")


if __name__ == "__main__":
    main()
