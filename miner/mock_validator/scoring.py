"""Scoring one upscaled clip the way Vidaio's scoring service does: hard checks, then quality metrics."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from miner.mock_validator import metrics
from miner.mock_validator.settings import Geometry
from miner.mock_validator.videoio import StreamInfo, probe, read_planes

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MP4_CONTAINER = "mov,mp4,m4a,3gp,3g2,mj2"
METRICS_LOCK = threading.Lock()
"""Clips scored at once take turns for PSNR/SSIM/VMAF: torch already spreads them over every core, or
runs them on the GPU beside the miner, and on the CPU the metrics of one 3840x2160 clip peak at about
10 GiB; the clips' decoding and checks still overlap."""


@dataclass
class Check:
    """One hard check: a clip failing any scores 0 on the subnet."""

    name: str
    ok: bool
    detail: str
    enforced: bool = True
    """False for quality checks reported but not enforced (a miner running random weights)."""


@dataclass
class ClipScore:
    """Hard checks and metrics of one output clip against its reference."""

    ok: bool
    checks: list[Check]
    vmaf: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    chroma_ratio: float | None = None
    grey_frames: str = ""
    stream: dict[str, Any] = field(default_factory=dict)
    scoring_s: float = 0.0

    def failed(self) -> list[str]:
        """Names and details of the failed checks."""
        return [f"{c.name}: {c.detail}" + ("" if c.enforced else " (not enforced)") for c in self.checks if not c.ok]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """What scoring needs to know about a clip before any output arrives."""

    path: Path
    input_path: Path
    info: StreamInfo
    geometry: Geometry


def _sample_indices(frames: int, count: int, seed: int) -> list[int]:
    if count <= 0 or count >= frames:
        return list(range(frames))
    return sorted(np.random.default_rng(seed).choice(frames, size=count, replace=False).tolist())


def _collect(path: Path, indices: set[int], stats_frames: int) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Luma of the sampled frames, and (YAVG, SATAVG) of the first ``stats_frames`` frames."""
    lumas, stats = [], []
    for i, (y, u, v) in enumerate(read_planes(path)):
        if i in indices:
            lumas.append(y)
        if i < stats_frames:
            stats.append((metrics.luma_average(y), metrics.saturation_average(u, v)))
    return lumas, stats


def _format_checks(out: StreamInfo, ref: Reference, cfg: Mapping[str, Any], max_size_mb: int) -> list[Check]:
    g, checks = ref.geometry, []
    checks.append(Check("geometry", (out.width, out.height) == (g.out_width, g.out_height),
                        f"{out.width}x{out.height} (expected {g.out_width}x{g.out_height})"))
    frame_diff = abs(out.frames - ref.info.frames)
    checks.append(Check("frames", frame_diff <= int(cfg["frame_tolerance"]),
                        f"{out.frames} (expected {ref.info.frames})"))
    fps_diff = abs(float(out.fps - ref.info.fps))
    checks.append(Check("fps", fps_diff <= float(cfg["fps_tolerance"]), f"{out.fps} (expected {ref.info.fps})"))
    multiplier = int(cfg["size_multipliers"][str(g.scale)])
    limit = min(max_size_mb * MIB, multiplier * ref.input_path.stat().st_size)
    checks.append(Check("size", out.size_bytes <= limit,
                        f"{out.size_bytes / MIB:.2f} MiB (limit {limit / MIB:.2f} MiB: {max_size_mb} MB cap, "
                        f"{multiplier}x input)"))
    problems = []
    if out.codec not in cfg["codecs"]:
        problems.append(f"codec {out.codec} not in {'/'.join(cfg['codecs'])}")
    elif out.codec == "hevc" and out.profile not in cfg["profiles"]:
        problems.append(f"HEVC profile {out.profile!r}")
    elif out.codec == "av1" and out.profile != "Main":
        problems.append(f"AV1 profile {out.profile!r}")
    if out.pix_fmt != cfg["pix_fmt"]:
        problems.append(f"pix_fmt {out.pix_fmt}")
    if out.sar not in ("1:1", "0:1"):
        problems.append(f"SAR {out.sar}")
    if out.container != MP4_CONTAINER:
        problems.append(f"container {out.container}")
    checks.append(Check("encoding", not problems, "; ".join(problems) or f"{out.codec} {out.profile} {out.pix_fmt} mp4"))
    return checks


def chroma_check(ref_stats: list[tuple[float, float]], out_stats: list[tuple[float, float]],
                 cfg: Mapping[str, Any]) -> tuple[Check, float | None, str]:
    """The scoring service's two colour checks on signalstats: mean (SATAVG_out/SATAVG_ref)^2 over
    saturated reference frames >= ``chroma_ratio_min``, and at most ``gray_max_ratio`` grey frames."""
    ratios, grey, checked = [], 0, 0
    for (ref_y, ref_sat), (_, out_sat) in zip(ref_stats, out_stats):
        if ref_sat >= float(cfg["chroma_low_saturation"]):
            ratios.append((out_sat / ref_sat) ** 2)
        if ref_y >= float(cfg["gray_brightness_min"]) and ref_sat >= float(cfg["gray_ref_saturation_min"]):
            checked += 1
            grey += out_sat < float(cfg["gray_out_saturation_max"])
    ratio = float(np.mean(ratios)) if ratios else None
    ratio_ok = ratio is None or ratio >= float(cfg["chroma_ratio_min"])
    grey_ok = checked == 0 or grey / checked <= float(cfg["gray_max_ratio"])
    detail = (f"saturation energy ratio {ratio:.3f} (min {cfg['chroma_ratio_min']})" if ratio is not None
              else "reference has no saturated frames (skipped)") + f"; grey frames {grey}/{checked}"
    return Check("chroma", ratio_ok and grey_ok, detail), ratio, f"{grey}/{checked}"


def _luma_metrics(ref_y: list[np.ndarray], out_y: list[np.ndarray], mcfg: Mapping[str, Any]
                  ) -> tuple[float, float, float | None]:
    """PSNR, SSIM and VMAF (None when off or not installed) of the sampled luma, one clip at a time."""
    with METRICS_LOCK:
        device = metrics.pick_device(mcfg["device"])
        ry = torch.from_numpy(np.stack(ref_y)).to(device, torch.float32).unsqueeze(1)
        oy = torch.from_numpy(np.stack(out_y)).to(device, torch.float32).unsqueeze(1)
        psnr, ssim = metrics.psnr(ry, oy), metrics.ssim(ry, oy)
        return psnr, ssim, metrics.vmaf(ry, oy) if mcfg["vmaf"] else None


def score_clip(output: Path, ref: Reference, settings: Mapping[str, Any], *, max_size_mb: int, seed: int,
               quality_gate: bool = True) -> ClipScore:
    """Every hard check and metric of ``output`` against ``ref``; never raises on a bad output file.

    ``quality_gate=False`` still measures the quality checks (chroma, VMAF threshold) but does not
    fail the clip on them: a miner running random weights cannot pass them."""
    start = time.perf_counter()
    cfg, mcfg = settings["checks"], settings["metrics"]
    try:
        out = probe(output)
    except Exception as exc:  # an undecodable answer is a failed clip, whatever the reason
        return ClipScore(False, [Check("decodable", False, f"{type(exc).__name__}: {exc}")],
                         scoring_s=time.perf_counter() - start)
    checks = [Check("decodable", out.frames > 0, f"{out.frames} frames")] + _format_checks(out, ref, cfg, max_size_mb)
    score = ClipScore(False, checks, stream={k: str(v) for k, v in asdict(out).items()})
    if out.frames == 0:
        score.scoring_s = time.perf_counter() - start
        return score
    indices = set(_sample_indices(min(out.frames, ref.info.frames), int(mcfg["sample_frames"]), seed))
    stats_frames = int(cfg["chroma_max_frames"])
    ref_y, ref_stats = _collect(ref.path, indices, stats_frames)
    out_y, out_stats = _collect(output, indices, stats_frames)
    chroma, score.chroma_ratio, score.grey_frames = chroma_check(ref_stats, out_stats, cfg)
    chroma.enforced = quality_gate
    checks.append(chroma)
    if (out.width, out.height) == (ref.info.width, ref.info.height):
        score.psnr, score.ssim, score.vmaf = _luma_metrics(ref_y, out_y, mcfg)
        if score.vmaf is not None:
            threshold = float(cfg["vmaf_threshold"])
            checks.append(Check("vmaf", score.vmaf >= threshold, f"{score.vmaf:.2f} (threshold {threshold})",
                                enforced=quality_gate))
    score.ok = all(c.ok for c in checks if c.enforced)
    score.scoring_s = time.perf_counter() - start
    log.info("clip scored output=%s ok=%s vmaf=%s psnr=%.2f failed=%s", output.name, score.ok, score.vmaf,
             score.psnr or 0.0, score.failed())
    return score
