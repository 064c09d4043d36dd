"""Test-only handler for the multi-process bundle runs of tests/test_distributed.py (imported by a bundle config).

It records, on its rank, what the rank predicted for each sample (mapped to the cache frame exactly as the
feedback handler does) and, when the run ends, writes ``rank<r>.pt`` with those records, the rank's final cache and
the synchronisation statistics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch
import torch.distributed as dist
from ignite.engine import Events

from fanet_monai.feedback.handler import FeedbackMaskHandler
from fanet_monai.feedback.rle import rle_encode


class PredictionRecorder:
    def __init__(
        self, mask_handler: FeedbackMaskHandler, cache: Any, out_dir: str, sync: Any = None, commit: Any = None
    ) -> None:
        self.mask_handler = mask_handler
        self.cache = cache
        self.out_dir = Path(out_dir)
        self.sync = sync
        self.commit = commit
        self.records: Dict[int, Dict[str, Dict[str, Any]]] = {}  # epoch -> key -> RLE dict

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def record(self, engine: Any) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):
            key, mask = self.mask_handler.inverse.to_cache_frame(item["mask"], out["pred"])
            self.records.setdefault(engine.state.epoch, {})[key] = rle_encode(mask).to_dict()

    def save(self, engine: Any) -> None:
        rank = dist.get_rank() if dist.is_initialized() else 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "rank": rank,
                "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                "backend": dist.get_backend() if dist.is_initialized() else None,
                "network_type": type(engine.network).__name__,
                "find_unused_parameters": getattr(engine.network, "find_unused_parameters", None),
                "records": self.records,
                "cache": self.cache.state_dict(),
                "sync_history": list(getattr(self.sync, "history", [])),
                "commit_best": getattr(self.commit, "best", None),
                "epochs": engine.state.epoch,
                "pid": os.getpid(),
            },
            self.out_dir / f"rank{rank}.pt",
        )
