"""One or several mock validators against one miner: TaskWarrant, LengthCheck, synthetic rounds, an
organic job; every result downloaded and scored beside a bicubic baseline."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import aiohttp
import bittensor as bt

from miner.mock_validator.client import BtAuthClient, RoundAnswer, TIMEOUT_STATUS
from miner.mock_validator.clips import bicubic_baseline, make_clips, map_clips
from miner.mock_validator.report import CallResult, ClipResult, Report, RoundResult, ValidatorResult
from miner.mock_validator.scoring import ClipScore, Reference, score_clip
from miner.mock_validator.serve import InputServer
from miner.mock_validator.settings import round_workers, task_geometry

log = logging.getLogger(__name__)

TRANSPORTS = ("legacy", "btauth")


@dataclass(frozen=True)
class RunOptions:
    """What to send: the miner, the task, the clips, and how the validators call."""

    miner_url: str
    miner_hotkey: str
    task: str
    clips: int
    seconds: float
    small: bool = False
    rounds: int = 1
    organic: bool = True
    transport: str = "legacy"
    timeout_s: float = 135.0
    max_size_mb: int = 100
    seed: int = 0
    baseline: bool = True
    quality_gate: bool = True
    sources: tuple[Path, ...] = field(default_factory=tuple)
    workers: int = 0
    """Clips made / scored at once by each validator (``round.workers``; 0 = auto: ``settings.round_workers``)."""


def make_client(transport: str, session: aiohttp.ClientSession, base_url: str, wallet: bt.Wallet,
                miner_hotkey: str) -> Any:
    """The client of ``transport`` (``legacy`` or ``btauth``)."""
    if transport == "btauth":
        return BtAuthClient(session, base_url, wallet, miner_hotkey)
    if transport == "legacy":
        from miner.mock_validator.legacy import LegacyClient
        return LegacyClient(session, base_url, wallet, miner_hotkey)
    raise ValueError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")


async def _download(session: aiohttp.ClientSession, url: str, dest: Path, timeout: float) -> tuple[float, str]:
    """GET ``url`` into ``dest``; returns (seconds, error or "")."""
    start = time.perf_counter()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return time.perf_counter() - start, f"result download: HTTP {resp.status}"
            with dest.open("wb") as fh:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    fh.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return time.perf_counter() - start, f"result download: {type(exc).__name__}: {exc}"
    return time.perf_counter() - start, ""


class MockValidator:
    """One validator identity (wallet) running its sequence of calls against the miner."""

    def __init__(self, index: int, wallet: bt.Wallet, opts: RunOptions, settings: Mapping[str, Any],
                 server: InputServer, session: aiohttp.ClientSession, workdir: Path) -> None:
        self.index, self.wallet, self.opts, self.settings = index, wallet, opts, settings
        self.server, self.session = server, session
        self.name = f"v{index}"
        self.input_dir = workdir / "inputs" / self.name
        self.private_dir = workdir / "private" / self.name
        for d in (self.input_dir, self.private_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.client = make_client(opts.transport, session, opts.miner_url, wallet, opts.miner_hotkey)
        self.geometry = task_geometry(settings, opts.task, small=opts.small)
        self.timeouts = settings["timeouts"]

    async def run(self) -> ValidatorResult:
        result = ValidatorResult(self.wallet.hotkey.ss58_address, self.opts.transport)
        warrant, answer = await self.client.warrant(float(self.timeouts["warrant_s"]))
        result.calls.append(CallResult("TaskWarrant", answer.status, warrant, answer.seconds, answer.message))
        length, answer = await self.client.length(float(self.timeouts["length_s"]))
        result.calls.append(CallResult("LengthCheck", answer.status, length, answer.seconds, answer.message))
        seconds = self.opts.seconds
        if self.settings["round"]["use_length_check"] and length in (5, 10):
            seconds = float(length)
        for r in range(self.opts.rounds):
            result.rounds.append(await self._synthetic(r, seconds))
        if self.opts.organic:
            result.rounds.append(await self._organic(seconds))
        return result

    async def _make(self, count: int, seconds: float, prefix: str, seed: int) -> tuple[list[Reference], list[str]]:
        workers, start = round_workers(self.opts.workers, count), time.perf_counter()
        refs = await asyncio.to_thread(make_clips, self.private_dir, self.input_dir, self.geometry, count, seconds,
                                       self.settings, seed=seed, sources=self.opts.sources, prefix=prefix,
                                       workers=workers)
        log.info("clips made validator=%s prefix=%s clips=%d workers=%d seconds=%.2f", self.name, prefix, count,
                 workers, time.perf_counter() - start)
        return refs, [self.server.url(f"{self.name}/{ref.input_path.name}") for ref in refs]

    async def _synthetic(self, r: int, seconds: float) -> RoundResult:
        refs, urls = await self._make(self.opts.clips, seconds, f"r{r}_", self.opts.seed + 1000 * self.index + 100 * r)
        round_id = str(uuid.uuid4())
        log.info("synthetic round validator=%s round_id=%s task=%s clips=%d seconds=%.1f transport=%s",
                 self.name, round_id, self.opts.task, len(urls), seconds, self.opts.transport)
        answer: RoundAnswer = await self.client.upscale(urls, self.opts.task, max_size_mb=self.opts.max_size_mb,
                                                        round_id=round_id, timeout=self.opts.timeout_s)
        log.info("round answered validator=%s round_id=%s status=%d seconds=%.2f urls=%d message=%s",
                 self.name, round_id, answer.status, answer.seconds, sum(bool(u) for u in answer.urls), answer.message)
        rnd = RoundResult("synthetic", round_id, self.opts.task, answer.status, answer.message, answer.seconds,
                          self.opts.timeout_s)
        rnd.clips = await self._collect(refs, urls, answer.urls, answer.errors, answer.message)
        return rnd

    async def _organic(self, seconds: float) -> RoundResult:
        count = int(self.settings["round"]["organic_clips"])
        refs, urls = await self._make(count, seconds, "job_", self.opts.seed + 1000 * self.index + 99)
        job_id, budget = str(uuid.uuid4()), float(self.timeouts["organic_budget_s"])
        start = time.perf_counter()
        accepted, answer = await self.client.start_job(job_id, urls, self.opts.task, max_size_mb=self.opts.max_size_mb,
                                                       timeout=float(self.timeouts["job_kickoff_s"]))
        rnd = RoundResult("organic", job_id, self.opts.task, answer.status, answer.message, 0.0, budget)
        result_urls: list[str] = []
        if accepted:
            status = "processing"
            while status == "processing" and time.perf_counter() - start < budget:
                await asyncio.sleep(float(self.timeouts["poll_interval_s"]))
                status, result_urls, poll = await self.client.poll(job_id, float(self.timeouts["poll_s"]))
                rnd.polls += 1
                rnd.status, rnd.message = poll.status, status
        else:
            rnd.message = f"not accepted: {answer.message}"
        rnd.seconds = time.perf_counter() - start
        if rnd.message == "processing":
            rnd.status = TIMEOUT_STATUS
        log.info("organic job done validator=%s job_id=%s accepted=%s status=%s polls=%d seconds=%.2f",
                 self.name, job_id, accepted, rnd.message, rnd.polls, rnd.seconds)
        reason = "" if result_urls else rnd.message
        rnd.clips = await self._collect(refs, urls, result_urls, [], reason)
        return rnd

    async def _collect(self, refs: Sequence[Reference], urls: Sequence[str], result_urls: Sequence[str],
                       errors: Sequence[str], reason: str) -> list[ClipResult]:
        """Every result downloaded, then each clip scored with its bicubic baseline, ``round.workers`` at once."""
        clips = []
        for i, (ref, url) in enumerate(zip(refs, urls)):
            clip = ClipResult(i, url, result_url=result_urls[i] if i < len(result_urls) else "",
                              input_downloads=self.server.downloads[f"{self.name}/{ref.input_path.name}"])
            clip.error = (errors[i] if i < len(errors) else "") or ("" if clip.result_url else reason or "empty URL")
            clips.append(clip)
        outputs = await asyncio.gather(*(self._fetch_result(clip, ref) for clip, ref in zip(clips, refs)))
        start = time.perf_counter()
        scores = await asyncio.to_thread(map_clips, lambda i: self._score(refs[i], outputs[i], i),
                                         [ref.path.name for ref in refs], round_workers(self.opts.workers, len(refs)),
                                         "scoring clips")
        for clip, (score, baseline) in zip(clips, scores):
            clip.score, clip.baseline = score, baseline
        log.info("clips scored validator=%s clips=%d seconds=%.2f", self.name, len(clips), time.perf_counter() - start)
        return clips

    async def _fetch_result(self, clip: ClipResult, ref: Reference) -> Path | None:
        """The clip's result downloaded beside its reference; None when it has none or the download failed
        (then ``clip.error`` says why)."""
        if not clip.result_url:
            return None
        dest = ref.path.with_name(ref.path.stem.replace("_ref", "_out") + ".mp4")
        clip.download_s, error = await _download(self.session, clip.result_url, dest,
                                                 float(self.timeouts["download_s"]))
        if error:
            clip.error = error
            return None
        return dest

    def _score(self, ref: Reference, output: Path | None, i: int) -> tuple[ClipScore | None, ClipScore | None]:
        """Scores of clip ``i``: its result (when downloaded) and its bicubic baseline (when asked for)."""
        seed, max_size_mb = self.opts.seed + i, self.opts.max_size_mb
        score = None if output is None else score_clip(output, ref, self.settings, max_size_mb=max_size_mb, seed=seed,
                                                       quality_gate=self.opts.quality_gate)
        baseline = None
        if self.opts.baseline:
            baseline = score_clip(bicubic_baseline(ref, self.settings), ref, self.settings, max_size_mb=max_size_mb,
                                  seed=seed)
        return score, baseline


async def run_validators(wallets: Sequence[bt.Wallet], opts: RunOptions, settings: Mapping[str, Any], workdir: Path,
                         label: str) -> Report:
    """All validators at once (one per wallet) against the miner; the combined report."""
    opts = replace(opts, workers=round_workers(opts.workers, opts.clips, len(wallets)))
    report = Report(label, {
        "miner_url": opts.miner_url, "task": opts.task, "clips": opts.clips, "clip_seconds": opts.seconds,
        "small": opts.small, "rounds": opts.rounds, "organic": opts.organic, "transport": opts.transport, "quality_gate": opts.quality_gate,
        "timeout_s": opts.timeout_s, "validators": len(wallets), "workers": opts.workers,
        "geometry": "{0.in_width}x{0.in_height} -> {0.out_width}x{0.out_height}".format(
            task_geometry(settings, opts.task, small=opts.small)),
        "source": "files" if opts.sources else "procedural"})
    (workdir / "inputs").mkdir(parents=True, exist_ok=True)
    with InputServer(workdir / "inputs") as server:
        async with aiohttp.ClientSession() as session:
            validators = [MockValidator(i, w, opts, settings, server, session, workdir) for i, w in enumerate(wallets)]
            report.validators = list(await asyncio.gather(*(v.run() for v in validators)))
    return report
