"""``MetagraphView``: the subnet's validators (permit, stake, uid) from the chain, refreshed in the background.

    view = MetagraphView(network="finney", netuid=85, snapshot_path="~/.flashvsr-miner/metagraph.json",
                         refresh_s=600.0)          # loads the snapshot, then refreshes in a daemon thread
    view.lookup(hotkey)                            # ValidatorInfo | None
    view.stop()

Every successful refresh replaces the table and rewrites the JSON snapshot (atomically), so a
restart answers from the last snapshot before the chain is reachable. A failed refresh is logged
and the last table is kept. The chain is read through a ``ChainReader``; ``SubtensorReader`` is the
bittensor 11 one (``SyncClient.subnets.metagraph``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional, Protocol

import bittensor as bt

from miner.chain.registry import ValidatorInfo

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1


class ChainReader(Protocol):
    """Reads every neuron of a subnet (validator or not) from the chain."""

    def neurons(self, netuid: int) -> list[ValidatorInfo]:
        ...


class SubtensorReader:
    """``ChainReader`` over a bittensor 11 ``SyncClient`` (connects on first use)."""

    def __init__(self, network: str) -> None:
        self.network = network
        self._client = bt.SyncClient(network)

    def neurons(self, netuid: int) -> list[ValidatorInfo]:
        graph = self._client.subnets.metagraph(netuid, commitments=False)
        if graph is None:
            raise LookupError(f"subnet {netuid} does not exist on {self.network}")
        return [ValidatorInfo(hotkey=n.hotkey, uid=int(n.uid), permit=bool(n.validator_permit),
                              stake=float(n.total_stake), axon=n.axon) for n in graph.neurons]


class MetagraphView:
    """``ValidatorRegistry`` backed by the chain, with a snapshot file and a background refresh thread."""

    def __init__(self, network: str, netuid: int, snapshot_path: str | os.PathLike[str], refresh_s: float,
                 *, reader: Optional[ChainReader] = None, start: bool = True) -> None:
        self.network, self.netuid, self.refresh_s = network, netuid, refresh_s
        self.snapshot_path = Path(snapshot_path).expanduser()
        self._reader = reader
        self._lock = threading.Lock()
        self._by_hotkey: dict[str, ValidatorInfo] = {}
        self._updated_at: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.load_snapshot()
        if start:
            self.start()

    @property
    def updated_at(self) -> Optional[float]:
        """``time.time()`` of the data in use (chain read or snapshot), ``None`` when there is none."""
        return self._updated_at

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_hotkey)

    def lookup(self, hotkey: str) -> Optional[ValidatorInfo]:
        with self._lock:
            return self._by_hotkey.get(hotkey)

    def priority(self, hotkey: str) -> float:
        info = self.lookup(hotkey)
        return info.stake if info else 0.0

    def refresh(self) -> bool:
        """Read the chain now; on success replace the table and save the snapshot. False on failure."""
        started = time.monotonic()
        try:
            reader = self._reader = self._reader or SubtensorReader(self.network)
            neurons = reader.neurons(self.netuid)
        except Exception as exc:  # the chain is someone else's: any failure keeps the last table
            log.warning("metagraph refresh failed; keeping the last table", extra={"fields": {
                "netuid": self.netuid, "network": self.network, "error": f"{type(exc).__name__}: {exc}",
                "neurons": len(self), "updated_at": self._updated_at}})
            return False
        self._install(neurons, time.time())
        self._save_snapshot(neurons)
        log.info("metagraph refreshed", extra={"fields": {
            "netuid": self.netuid, "neurons": len(neurons), "validators": sum(n.permit for n in neurons),
            "seconds": round(time.monotonic() - started, 3)}})
        return True

    def start(self) -> None:
        """Refresh now and every ``refresh_s`` in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metagraph-refresh", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the refresh thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_s)

    def _install(self, neurons: list[ValidatorInfo], updated_at: float) -> None:
        with self._lock:
            self._by_hotkey = {n.hotkey: n for n in neurons}
            self._updated_at = updated_at

    def _save_snapshot(self, neurons: list[ValidatorInfo]) -> None:
        data = {"format": SNAPSHOT_FORMAT, "network": self.network, "netuid": self.netuid,
                "updated_at": self._updated_at,
                "neurons": [{"uid": n.uid, "hotkey": n.hotkey, "permit": n.permit, "stake": n.stake, "axon": n.axon}
                            for n in neurons]}
        try:
            self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.snapshot_path.with_suffix(self.snapshot_path.suffix + ".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.snapshot_path)
        except OSError as exc:
            log.warning("metagraph snapshot not saved", extra={"fields": {"path": str(self.snapshot_path), "error": str(exc)}})

    def load_snapshot(self) -> bool:
        """Load the snapshot file if it exists and is for this subnet; False otherwise."""
        if not self.snapshot_path.exists():
            return False
        try:
            data = json.loads(self.snapshot_path.read_text())
            if data.get("format") != SNAPSHOT_FORMAT or data.get("netuid") != self.netuid:
                raise ValueError(f"snapshot is for format {data.get('format')} netuid {data.get('netuid')}")
            neurons = [ValidatorInfo(hotkey=str(n["hotkey"]), uid=int(n["uid"]), permit=bool(n["permit"]),
                                     stake=float(n["stake"]), axon=n.get("axon")) for n in data["neurons"]]
            updated_at = float(data["updated_at"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("metagraph snapshot ignored", extra={"fields": {"path": str(self.snapshot_path), "error": str(exc)}})
            return False
        self._install(neurons, updated_at)
        log.info("metagraph snapshot loaded", extra={"fields": {
            "path": str(self.snapshot_path), "neurons": len(neurons), "age_s": round(time.time() - updated_at, 1)}})
        return True
