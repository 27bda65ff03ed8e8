"""The run's report: per validator, its calls and rounds, per clip the hard checks and metrics of the
miner's output and of the bicubic baseline; a readable table and a JSON document."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from miner.mock_validator.scoring import ClipScore


@dataclass
class CallResult:
    """A one-shot synapse (TaskWarrant, LengthCheck): the value the miner answered."""

    name: str
    status: int
    value: Any
    seconds: float
    message: str = ""


@dataclass
class ClipResult:
    """One clip of a round: where its input was served, what the miner answered, and the scores."""

    index: int
    input_url: str
    result_url: str = ""
    input_downloads: int = 0
    error: str = ""
    download_s: float | None = None
    score: ClipScore | None = None
    baseline: ClipScore | None = None

    @property
    def passed(self) -> bool:
        return self.score is not None and self.score.ok


@dataclass
class RoundResult:
    """One ``VideoUpscalingProtocol`` call (``synthetic``) or one job with its polls (``organic``)."""

    kind: str
    round_id: str
    task: str
    status: int
    message: str
    seconds: float
    deadline_s: float
    clips: list[ClipResult] = field(default_factory=list)
    polls: int = 0

    @property
    def answered(self) -> bool:
        return len(self.clips) > 0 and all(c.result_url or c.error for c in self.clips) and self.status not in (408, 503)

    @property
    def met_deadline(self) -> bool:
        return self.answered and self.seconds <= self.deadline_s


@dataclass
class ValidatorResult:
    """Everything one mock validator (one wallet) did."""

    hotkey: str
    transport: str
    calls: list[CallResult] = field(default_factory=list)
    rounds: list[RoundResult] = field(default_factory=list)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 3) if present else None


@dataclass
class Report:
    """The whole run; ``ok`` when every clip of every round passed every hard check."""

    label: str
    settings: dict[str, Any]
    validators: list[ValidatorResult] = field(default_factory=list)
    miner_tasks: list[dict[str, Any]] = field(default_factory=list)  # the miner's per-clip log lines, when known

    def clips(self) -> list[ClipResult]:
        return [c for v in self.validators for r in v.rounds for c in r.clips]

    @property
    def ok(self) -> bool:
        clips = self.clips()
        return bool(clips) and all(c.passed for c in clips)

    def summary(self) -> dict[str, Any]:
        clips, rounds = self.clips(), [r for v in self.validators for r in v.rounds]
        return {
            "ok": self.ok, "clips": len(clips), "passed": sum(c.passed for c in clips),
            "no_result": sum(not c.result_url for c in clips),
            "failed_checks": sum(bool(c.score and not c.score.ok) for c in clips),
            "rounds": len(rounds), "rounds_met_deadline": sum(r.met_deadline for r in rounds),
            "mean_vmaf": _mean([c.score.vmaf for c in clips if c.score]),
            "mean_psnr": _mean([c.score.psnr for c in clips if c.score]),
            "mean_ssim": _mean([c.score.ssim for c in clips if c.score]),
            "baseline_mean_vmaf": _mean([c.baseline.vmaf for c in clips if c.baseline]),
            "baseline_mean_psnr": _mean([c.baseline.psnr for c in clips if c.baseline]),
            "baseline_mean_ssim": _mean([c.baseline.ssim for c in clips if c.baseline]),
        }

    def as_dict(self) -> dict[str, Any]:
        data = {"label": self.label, "settings": self.settings, "summary": self.summary(),
                "validators": [asdict(v) for v in self.validators], "miner_tasks": self.miner_tasks}
        for v, vd in zip(self.validators, data["validators"]):
            for r, rd in zip(v.rounds, vd["rounds"]):
                rd["met_deadline"] = r.met_deadline
                for c, cd in zip(r.clips, rd["clips"]):
                    cd["passed"] = c.passed
        return data

    def write(self, path: Path) -> None:
        """The report as indented JSON at ``path`` (parent directories created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")

    def table(self) -> str:
        """A readable plain-text rendering."""
        lines = [f"== flashvsr mock validator report: {self.label} ==",
                 "settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        for v in self.validators:
            calls = "  ".join(f"{c.name}={c.value} (HTTP {c.status}, {c.seconds:.2f} s)" for c in v.calls)
            lines += ["", f"validator {v.hotkey} [{v.transport}]  {calls}"]
            for r in v.rounds:
                verdict = "met" if r.met_deadline else "MISSED"
                lines.append(f"  {r.kind} round {r.round_id[:8]} {r.task} x{len(r.clips)}: HTTP {r.status} in "
                             f"{r.seconds:.2f} s (deadline {r.deadline_s:.0f} s: {verdict})"
                             + (f" polls={r.polls}" if r.kind == "organic" else "")
                             + (f" [{r.message}]" if r.message and r.status != 200 else ""))
                lines.append(f"    {'#':>2} {'result':6} {'frames':>7} {'MiB':>6} {'VMAF':>6} {'PSNR':>6} {'SSIM':>6} "
                             f"{'chroma':>6} | {'bicubic VMAF':>12} {'PSNR':>6} {'SSIM':>6} | notes")
                for c in r.clips:
                    lines.append("    " + _clip_row(c))
        if self.miner_tasks:
            lines += ["", "miner, per clip (from its log): seconds per stage"]
            for t in self.miner_tasks:
                stages = " ".join(f"{k[:-2]}={v}" for k, v in t.items() if k.endswith("_s") and k != "est_s")
                lines.append(f"  round {str(t.get('round_id'))[:8]} #{t.get('index')} {t.get('result')} "
                             f"variant={t.get('variant')} frames={t.get('frames')} est={t.get('est_s')} {stages} "
                             f"fps={t.get('fps')}")
        s = self.summary()
        lines += ["", f"summary: {s['passed']}/{s['clips']} clips passed every hard check, "
                      f"{s['no_result']} without a result, {s['rounds_met_deadline']}/{s['rounds']} rounds met the deadline; "
                      f"mean VMAF {s['mean_vmaf']} (bicubic {s['baseline_mean_vmaf']}), "
                      f"PSNR {s['mean_psnr']} (bicubic {s['baseline_mean_psnr']}), "
                      f"SSIM {s['mean_ssim']} (bicubic {s['baseline_mean_ssim']})",
                  "RESULT: " + ("PASS" if self.ok else "FAIL")]
        return "\n".join(lines)


def _num(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def _clip_row(c: ClipResult) -> str:
    s, b = c.score, c.baseline
    if s is None:
        return f"{c.index:>2} {'NONE':6} {'':>7} {'':>6} {'':>6} {'':>6} {'':>6} {'':>6} | " \
               f"{_num(b.vmaf if b else None, 12)} {_num(b.psnr if b else None, 6)} {_num(b.ssim if b else None, 6, 3)} | " \
               f"{c.error or 'no result'}"
    frames = s.stream.get("frames", "?")
    size = int(s.stream.get("size_bytes", 0) or 0) / (1024 * 1024)
    return (f"{c.index:>2} {'PASS' if s.ok else 'FAIL':6} {frames:>7} {size:>6.2f} {_num(s.vmaf, 6)} {_num(s.psnr, 6)} "
            f"{_num(s.ssim, 6, 3)} {_num(s.chroma_ratio, 6, 3)} | {_num(b.vmaf if b else None, 12)} "
            f"{_num(b.psnr if b else None, 6)} {_num(b.ssim if b else None, 6, 3)} | "
            + ("; ".join(s.failed()) or f"dl {c.download_s:.2f} s, scored {s.scoring_s:.1f} s"))
