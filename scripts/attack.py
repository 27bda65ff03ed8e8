"""``flashvsr-attack``: flood your own miner the way an attacker would, to see that it keeps serving.

    flashvsr-attack --target http://127.0.0.1:8091 --duration 60

For ``--duration`` seconds, at once:

- ``--huge`` clients each send unauthenticated ``POST /VideoUpscalingProtocol`` requests declaring a
  ``--huge-bytes`` body (1 GB) and stream zeros until the miner answers or closes;
- junk synapses at ``--junk-rate`` requests/s: missing, malformed or forged ``bt_header_*`` /
  ``X-Bittensor-*`` headers, unknown hotkeys, bad JSON, chunked bodies, unserved routes;
- ``--slow`` idle connections that never finish their headers (one byte every few seconds), each
  reopened half a second after the miner closes it.

Sources are spread over ``--sources`` loopback addresses (127.0.0.2, 127.0.0.3, ...), as a botnet's
would be. The target must be a loopback address unless ``--allow-remote`` is given: this is for
your own miner. Prints (and with ``--report`` writes) a JSON summary: answers by kind and status,
bytes sent before each huge request was answered, slow connections closed by the miner.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHUNK = 64 * 1024
ZEROS = bytes(CHUNK)
JUNK_ROUTES = ("/VideoUpscalingProtocol", "/LengthCheckProtocol", "/TaskWarrantProtocol",
               "/VideoUpscalingJobProtocol", "/VideoUpscalingPollProtocol", "/v1/upscale", "/v1/length",
               "/v1/jobs", "/v1/jobs/x", "/VideoCompressionProtocol", "/files/upscaling/x.mp4", "/nope", "/metrics")
FAKE_HOTKEY = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
RECONNECT_S = 0.5  # a slow connection closed by the miner is reopened after this (keeps the junk rate up)


@dataclass
class Tally:
    """What the attack saw, by kind."""

    answers: Counter = field(default_factory=Counter)  # "kind:status" -> count
    huge_bytes_sent: list[int] = field(default_factory=list)
    huge_seconds: list[float] = field(default_factory=list)
    slow_opened: int = 0
    slow_closed_by_server: int = 0
    slow_lifetimes: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        sent = sorted(self.huge_bytes_sent) or [0]
        seconds = sorted(self.huge_seconds) or [0.0]
        lifetimes = sorted(self.slow_lifetimes) or [0.0]
        return {
            "answers": dict(sorted(self.answers.items())),
            "huge_requests": len(self.huge_bytes_sent),
            "huge_bytes_sent_max": sent[-1], "huge_bytes_sent_median": sent[len(sent) // 2],
            "huge_answer_s_median": round(seconds[len(seconds) // 2], 4), "huge_answer_s_max": round(seconds[-1], 4),
            "slow_opened": self.slow_opened, "slow_closed_by_server": self.slow_closed_by_server,
            "slow_lifetime_s_median": round(lifetimes[len(lifetimes) // 2], 2),
        }


def loopback_sources(count: int) -> list[str]:
    """127.0.0.2 ... : distinct loopback source addresses (Linux routes all of 127/8 to lo)."""
    return [str(ipaddress.ip_address("127.0.0.2") + i) for i in range(count)]


async def _connect(host: str, port: int, source: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, local_addr=(source, 0) if source else None)


async def _status(reader: asyncio.StreamReader, timeout: float) -> str:
    """The status code of the answer, ``closed`` or ``timeout``."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except asyncio.TimeoutError:
        return "timeout"
    except (ConnectionError, OSError):
        return "closed"
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 else "closed"


async def huge_client(host: str, port: int, source: str | None, size: int, stop_at: float, tally: Tally) -> None:
    """Unauthenticated synapse calls declaring ``size`` bytes, streamed until answered or cut off."""
    while time.monotonic() < stop_at:
        began = time.monotonic()
        sent = 0
        try:
            reader, writer = await _connect(host, port, source)
        except OSError:
            tally.answers["huge:connect_failed"] += 1
            await asyncio.sleep(0.1)
            continue
        status_task = asyncio.ensure_future(_status(reader, 30.0))
        try:
            writer.write(f"POST /VideoUpscalingProtocol HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {size}\r\n\r\n".encode())
            while sent < size and not status_task.done() and time.monotonic() < stop_at:
                writer.write(ZEROS)
                sent += CHUNK
                await asyncio.wait_for(writer.drain(), 5.0)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        status = await status_task
        tally.answers[f"huge:{status}"] += 1
        tally.huge_bytes_sent.append(sent)
        tally.huge_seconds.append(time.monotonic() - began)
        writer.close()


def _junk_request(host: str, rng: random.Random) -> bytes:
    route = rng.choice(JUNK_ROUTES)
    body = rng.choice([b"", b"{", b"[" * 5000, json.dumps({"miner_payload": {"reference_video_urls": ["http://x"] * 3}}).encode(),
                       os.urandom(rng.randint(1, 2048))])
    headers = {"Host": host, "Content-Type": "application/json"}
    style = rng.randrange(6)
    nonce = str(time.time_ns())
    if style == 1:  # legacy headers, forged
        headers.update({"bt_header_dendrite_hotkey": FAKE_HOTKEY, "bt_header_dendrite_nonce": nonce,
                        "bt_header_dendrite_uuid": "u", "bt_header_axon_hotkey": FAKE_HOTKEY,
                        "bt_header_dendrite_signature": "0x" + "ab" * 64, "computed_body_hash": "0" * 64})
    elif style == 2:  # btauth headers, forged
        headers.update({"X-Bittensor-Version": "1", "X-Bittensor-Hotkey": FAKE_HOTKEY, "X-Bittensor-Nonce": nonce,
                        "X-Bittensor-Receiver": FAKE_HOTKEY, "X-Bittensor-Signature": "0x" + "cd" * 64})
    elif style == 3:  # malformed values
        headers.update({"bt_header_dendrite_nonce": "soon", "timeout": "nan", "X-Bittensor-Nonce": "-1"})
    elif style == 4:  # many headers
        headers.update({f"x-junk-{i}": "y" * 10 for i in range(100)})
    head = f"POST {route} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if style == 5:  # chunked
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def junk_sender(host: str, port: int, sources: list[str | None], rate: float, stop_at: float, tally: Tally) -> None:
    """``rate`` junk requests per second, each on its own connection."""
    rng = random.Random(7)
    inflight: set[asyncio.Task] = set()

    async def one(request: bytes, source: str | None) -> None:
        try:
            reader, writer = await _connect(host, port, source)
            writer.write(request)
            await writer.drain()
            tally.answers[f"junk:{await _status(reader, 10.0)}"] += 1
            writer.close()
        except (ConnectionError, OSError):
            tally.answers["junk:closed"] += 1

    interval = 1.0 / rate
    next_at = time.monotonic()
    while time.monotonic() < stop_at:
        task = asyncio.ensure_future(one(_junk_request(host, rng), rng.choice(sources)))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*inflight, return_exceptions=True)


async def slow_connection(host: str, port: int, source: str | None, stop_at: float, tally: Tally) -> None:
    """A connection that sends its headers one byte every few seconds; reopened when closed."""
    header = f"POST /VideoUpscalingProtocol HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
    while time.monotonic() < stop_at:
        try:
            reader, writer = await _connect(host, port, source)
        except OSError:
            tally.answers["slow:connect_failed"] += 1
            await asyncio.sleep(1.0)
            continue
        tally.slow_opened += 1
        opened = time.monotonic()
        try:
            writer.write(header)
            await writer.drain()
            while time.monotonic() < stop_at:
                try:
                    data = await asyncio.wait_for(reader.read(1024), 3.0)
                except asyncio.TimeoutError:
                    writer.write(b"a")
                    await writer.drain()
                    continue
                if not data:  # closed by the server
                    tally.slow_closed_by_server += 1
                    tally.slow_lifetimes.append(time.monotonic() - opened)
                    break
        except (ConnectionError, OSError):
            tally.slow_closed_by_server += 1
            tally.slow_lifetimes.append(time.monotonic() - opened)
        finally:
            writer.close()
        await asyncio.sleep(RECONNECT_S)


async def attack(target: str, *, duration: float, huge: int, huge_bytes: int, junk_rate: float, slow: int,
                 sources: list[str | None]) -> dict[str, Any]:
    """Run all three floods for ``duration`` seconds; the tally's summary."""
    url = urlsplit(target)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    stop_at = time.monotonic() + duration
    tally = Tally()
    tasks = [huge_client(host, port, sources[i % len(sources)], huge_bytes, stop_at, tally) for i in range(huge)]
    tasks += [slow_connection(host, port, sources[i % len(sources)], stop_at, tally) for i in range(slow)]
    tasks.append(junk_sender(host, port, sources, junk_rate, stop_at, tally))
    began = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - began
    junk = sum(n for key, n in tally.answers.items() if key.startswith("junk:"))
    return {"target": target, "duration_s": round(elapsed, 1), "junk_per_s": round(junk / elapsed, 1), **tally.summary()}


def is_loopback(target: str) -> bool:
    host = urlsplit(target).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="flashvsr-attack", description=__doc__.splitlines()[0])
    p.add_argument("--target", default="http://127.0.0.1:8091", help="the miner's URL (loopback only by default)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of flood")
    p.add_argument("--huge", type=int, default=16, help="clients sending unauthenticated huge bodies")
    p.add_argument("--huge-bytes", type=int, default=1_000_000_000, help="body size each huge request declares")
    p.add_argument("--junk-rate", type=float, default=200.0, help="junk synapse requests per second")
    p.add_argument("--slow", type=int, default=300, help="idle connections that never finish their headers")
    p.add_argument("--sources", type=int, default=16,
                   help="loopback source addresses to spread over (127.0.0.2...); 0 = the default source")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target (your own miner only)")
    p.add_argument("--report", type=Path, help="also write the JSON summary here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not is_loopback(args.target) and not args.allow_remote:
        print(f"flashvsr-attack: {args.target} is not a loopback address; pass --allow-remote to flood a miner "
              "you run elsewhere", file=sys.stderr)
        return 2
    sources: list[str | None] = list(loopback_sources(args.sources)) if args.sources and is_loopback(args.target) else [None]
    summary = asyncio.run(attack(args.target, duration=args.duration, huge=args.huge, huge_bytes=args.huge_bytes,
                                 junk_rate=args.junk_rate, slow=args.slow, sources=sources))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
