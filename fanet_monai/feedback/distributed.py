"""Keeping the feedback mask cache identical on every rank of a distributed (DDP) training.

With a ``DistributedSampler`` each rank trains on a different part of the training set, and the part changes from
epoch to epoch (``set_epoch`` reshuffles). Each rank's :class:`~fanet_monai.feedback.handler.FeedbackMaskHandler`
stores the predictions of *its* samples in *its* cache, but next epoch any rank may be handed any sample, so after
every epoch the ranks exchange what they wrote:

1. each rank exports the masks it committed since the last exchange
   (:meth:`~fanet_monai.feedback.cache.FeedbackMaskCache.export_updates`: run-length encoded, a few kB per mask);
2. ``torch.distributed.all_gather_object`` sends every rank's export to every rank (gloo or NCCL, one node or many:
   no shared file system is involved);
3. every rank merges the same gathered updates in the same way
   (:meth:`~fanet_monai.feedback.cache.FeedbackMaskCache.merge_updates`), so all caches end identical and hold
   every sample's newest mask; the checkpoint that rank 0 writes holds the full cache.

When two ranks exported a mask for the same sample, the newest wins: each rank stamps the samples it trains on with
the epoch (``on_improvement`` with a validation interval > 1 commits predictions of several epochs at once), and an
equal stamp (the padded ``DistributedSampler`` gives a few samples to two ranks in one epoch) goes to the higher rank.

The initial (Otsu) masks are not exchanged: every rank computes them for the whole training list at the start
(:meth:`FeedbackMaskHandler.initialize`), which is deterministic and runs in parallel, so it takes no longer than
in a single-process run; then the cache's "changed" flags are cleared, so that only predictions travel.

An optional check (on by default) all-gathers a 20-byte digest of each cache after the exchange; should the caches
ever differ (a bug, or initial masks that came out differently on dissimilar hardware), rank 0's cache is broadcast
to all ranks and a warning is logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Tuple

import torch.distributed as dist
from monai.data import MetaTensor
from monai.utils import ImageMetaKey, min_version, optional_import

from fanet_monai.distributed import get_rank, get_world_size
from fanet_monai.feedback.cache import FeedbackMaskCache, sample_key

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["FeedbackCacheSyncHandler", "cache_digest", "resolve_updates"]

Payload = Dict[str, Tuple[int, Dict[str, Any]]]
"""What one rank sends: ``{sample key: (stamp, RLE dict)}``; the stamp is the epoch the mask was predicted in."""


def resolve_updates(gathered: Sequence[Mapping[str, Tuple[int, Mapping[str, Any]]]]) -> Dict[str, Tuple[int, Any]]:
    """Pick one mask per sample from the payloads of all ranks (``gathered[r]`` is rank ``r``'s payload).

    Returns ``{key: (rank, RLE dict)}``: for each key the mask with the highest stamp, ties going to the highest
    rank. Every rank computes the same result from the same gathered list.
    """
    best: Dict[str, Tuple[int, int, Any]] = {}
    for rank, payload in enumerate(gathered):
        for key, (stamp, rle) in payload.items():
            current = best.get(key)
            if current is None or (int(stamp), rank) >= (current[0], current[1]):
                best[key] = (int(stamp), rank, rle)
    return {key: (rank, rle) for key, (_, rank, rle) in best.items()}


def cache_digest(cache: FeedbackMaskCache) -> bytes:
    """SHA-1 of a cache's committed masks (keys, shapes and run lengths, in key order): equal caches, equal digests."""
    digest = hashlib.sha1()
    for key, rle in sorted(cache.state_dict()["masks"].items()):
        digest.update(key.encode())
        digest.update(repr((list(rle["shape"]), rle["dtype"], len(rle["runs"]))).encode())
        digest.update(rle["runs"])
    return digest.digest()


class FeedbackCacheSyncHandler:
    """Ignite handler that keeps every rank's feedback mask cache identical (see the module docstring).

    Attach it to the trainer *after* the :class:`~fanet_monai.feedback.handler.FeedbackMaskHandler` and the
    ``ValidationHandler`` (whose evaluator commits staged masks under the ``on_improvement`` policy), and before
    the checkpoint saver, e.g. as the last entry of ``train_handlers``:

    - ``Events.EPOCH_STARTED``: clear the cache's "changed" flags (initial Otsu masks, a restored checkpoint:
      every rank has the same);
    - ``Events.ITERATION_COMPLETED``: stamp this rank's samples of the batch with the epoch;
    - ``Events.EPOCH_COMPLETED``: all-gather the updates, merge them, optionally check that the caches agree.

    Without a process group (or with one rank) nothing is exchanged. Every rank must run the same epochs (the
    exchange is a collective).

    Only committed masks travel. Under ``on_improvement`` with a validation interval > 1, predictions staged in
    epochs without validation stay on the rank that made them until the next commit; a checkpoint written in
    between (by rank 0) holds rank 0's staged masks only, so after a resume the other ranks' staged masks of those
    epochs are lost (those samples keep their last committed mask).

    Args:
        cache: the feedback mask cache of this rank.
        mask_key: key of the feedback mask in the batch (its meta data names the sample).
        check_consistency: all-gather a digest of every cache after the exchange and repair differences from rank 0.
        group: process group; default the world.

    Attributes:
        history: one dict per exchange: ``epoch``, ``sent`` (masks this rank exported), ``received`` (masks merged
            from other ranks), ``payload_bytes`` (RLE bytes sent by all ranks together), ``seconds`` (gather + merge)
            and ``consistent``.
    """

    def __init__(
        self,
        cache: FeedbackMaskCache,
        mask_key: str = "mask",
        check_consistency: bool = True,
        group: Any | None = None,
    ) -> None:
        self.cache = cache
        self.mask_key = mask_key
        self.check_consistency = check_consistency
        self.group = group
        self.history: List[Dict[str, Any]] = []
        self._stamps: Dict[str, int] = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.stamp)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.synchronize)

    # ----------------------------------------------------------------------------------------------- handlers
    def epoch_started(self, engine: Engine) -> None:
        """Forget the "changed" flags of masks that every rank holds alike (initial masks, a restored checkpoint)."""
        self.cache.export_updates()

    def _batch_keys(self, batch: Any) -> List[str]:
        if isinstance(batch, Mapping):  # decollate=False: one collated dict
            mask = batch[self.mask_key]
            names = mask.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(mask, MetaTensor) else None
            if names is None:
                names = batch.get(f"{self.mask_key}_meta_dict", {}).get(ImageMetaKey.FILENAME_OR_OBJ)
            return [sample_key(name) for name in ([names] if isinstance(names, str) else names)]
        return [sample_key(item[self.mask_key].meta) for item in batch]

    def stamp(self, engine: Engine) -> None:
        """Remember that this rank predicted the batch's samples in the current epoch."""
        for key in self._batch_keys(engine.state.batch):
            self._stamps[key] = engine.state.epoch

    def synchronize(self, engine: Engine | None = None) -> Dict[str, Any]:
        """Exchange the masks committed since the last call with all ranks; returns this exchange's statistics."""
        rank, world = get_rank(self.group), get_world_size(self.group)
        epoch = engine.state.epoch if engine is not None else None
        start = time.perf_counter()
        updates = self.cache.export_updates()
        if world == 1:
            record = {"epoch": epoch, "sent": len(updates), "received": 0, "payload_bytes": 0, "seconds": 0.0,
                      "consistent": True}
            self.history.append(record)
            return record
        payload: Payload = {key: (self._stamps.get(key, 0), rle) for key, rle in updates.items()}
        gathered: List[Payload | None] = [None] * world
        dist.all_gather_object(gathered, payload, group=self.group)
        resolved = resolve_updates([p or {} for p in gathered])
        received = {key: rle for key, (owner, rle) in resolved.items() if owner != rank}
        self.cache.merge_updates(received)
        consistent = self._check() if self.check_consistency else True
        record = {
            "epoch": epoch,
            "sent": len(updates),
            "received": len(received),
            "payload_bytes": sum(len(rle["runs"]) for p in gathered for _, rle in (p or {}).values()),
            "seconds": time.perf_counter() - start,
            "consistent": consistent,
        }
        self.history.append(record)
        self.logger.info(
            f"epoch {epoch}: feedback cache synchronised across {world} ranks: sent {record['sent']}, received "
            f"{record['received']} masks ({record['payload_bytes']} RLE bytes from all ranks) in "
            f"{record['seconds']:.3f} s; cache {len(self.cache)} masks"
        )
        return record

    def _check(self) -> bool:
        """All-gather the caches' digests; if they differ, give every rank rank 0's masks. True if they agreed."""
        digests: List[bytes | None] = [None] * get_world_size(self.group)
        dist.all_gather_object(digests, cache_digest(self.cache), group=self.group)
        if all(d == digests[0] for d in digests):
            return True
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        self.logger.warning(f"feedback caches of ranks {differing} differ from rank 0's: copying rank 0's cache.")
        masks = [self.cache.state_dict()["masks"] if get_rank(self.group) == 0 else None]
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        dist.broadcast_object_list(masks, src=src, group=self.group)
        state = self.cache.state_dict()
        state.update(masks=masks[0], dirty=[])
        self.cache.load_state_dict(state)
        return False
