"""Cost of keeping the feedback cache identical across ranks: bytes and time of one epoch's exchange.

Each of ``--world`` gloo processes on this machine (localhost) plays a rank that trained on ``samples / world`` of
the samples in the epoch: it stores their predicted masks (``--size``² with a few irregular blobs each, made with a
fixed seed) in its :class:`~fanet_monai.feedback.FeedbackMaskCache`, then runs
:meth:`~fanet_monai.feedback.distributed.FeedbackCacheSyncHandler.synchronize` as the trainer does at the end of the
epoch (export of the RLE updates, ``all_gather_object``, merge, digest check). Reported: the payload (RLE bytes and
pickled bytes) and the median time of the whole exchange and of its parts.

Two mask profiles: ``smooth`` (clean blob outlines, a trained network's output) and ``ragged`` (outlines frayed
pixel by pixel, as early in training: more runs, larger payload).

    python benchmarks/distributed_cache.py --samples 1000 --size 512 --world 2
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fanet_monai.feedback import FeedbackMaskCache
from fanet_monai.feedback.distributed import FeedbackCacheSyncHandler, cache_digest, resolve_updates


def blob_mask(size: int, rng: np.random.RandomState, ragged: bool) -> np.ndarray:
    """``(1, size, size)`` uint8 mask: 2-6 irregular (star-shaped) blobs of radius 3-18 % of the size."""
    mask = np.zeros((size, size), bool)
    for _ in range(rng.randint(2, 7)):
        r0 = rng.uniform(0.03, 0.18) * size
        cy, cx = rng.uniform(0, size, 2)
        k1, k2 = rng.randint(2, 6, 2)
        a1, a2 = rng.uniform(0.05, 0.2, 2)
        p1, p2 = rng.uniform(0, 2 * np.pi, 2)
        reach = int(r0 * (1 + a1 + a2)) + 2
        y0, y1 = max(0, int(cy) - reach), min(size, int(cy) + reach + 1)
        x0, x1 = max(0, int(cx) - reach), min(size, int(cx) + reach + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        theta = np.arctan2(dy, dx)
        radius = r0 * (1 + a1 * np.sin(k1 * theta + p1) + a2 * np.sin(k2 * theta + p2))
        ratio = np.sqrt(dy * dy + dx * dx) / radius
        inside = ratio < 1
        if ragged:  # fray the outline: pixels within ~3 % of the radius are foreground at random
            band = np.abs(ratio - 1) < 0.03 + 2.0 / r0
            inside = np.where(band, rng.rand(*band.shape) < 0.5, inside)
        mask[y0:y1, x0:x1] |= inside
    return mask[None].astype(np.uint8)


def median_time(fn, repeats: int, setup=None) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        if setup is not None:
            setup()
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def worker(rank: int, world: int, port: int, args: argparse.Namespace, profile: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    rng = np.random.RandomState(0)
    masks = {}
    for i in range(args.samples):  # every rank draws the same sequence; it keeps the samples it "trained on"
        mask = blob_mask(args.size, rng, profile == "ragged")
        if i % world == rank:
            masks[f"case_{i:05d}.png"] = mask
    cache = FeedbackMaskCache()
    handler = FeedbackCacheSyncHandler(cache)

    def put_all() -> None:
        for key, mask in masks.items():
            cache.put(key, mask)

    start = time.perf_counter()
    put_all()
    encode_s = (time.perf_counter() - start) / len(masks)
    payload = {key: (1, rle) for key, rle in cache.export_updates().items()}
    pickled = len(pickle.dumps(payload))
    rle_bytes = sum(len(rle["runs"]) for _, rle in payload.values())
    sizes = [None] * world
    dist.all_gather_object(sizes, (rle_bytes, pickled, len(payload)))

    gathered = [None] * world
    gather_s = median_time(lambda: dist.all_gather_object(gathered, payload), args.repeats)
    resolve_s = median_time(lambda: resolve_updates(gathered), args.repeats)
    received = {k: rle for k, (owner, rle) in resolve_updates(gathered).items() if owner != rank}
    merge_s = median_time(lambda: cache.merge_updates(received), args.repeats)
    digest_s = median_time(lambda: cache_digest(cache), args.repeats)
    sync_s = median_time(lambda: handler.synchronize(), args.repeats, setup=put_all)
    assert len(cache) == args.samples and handler.history[-1]["consistent"]
    digests = [None] * world
    dist.all_gather_object(digests, cache_digest(cache))
    assert len(set(digests)) == 1

    if rank == 0:
        raw = args.samples * args.size * args.size
        total_rle = sum(s[0] for s in sizes)
        total_pickled = sum(s[1] for s in sizes)
        foreground = np.mean([m.mean() for m in masks.values()])
        print(f"\n## profile `{profile}`: {args.samples} masks of {args.size}² (mean foreground {foreground:.1%}), "
              f"{world} gloo ranks on localhost")
        print("| quantity | value |\n| --- | --- |")
        print(f"| masks exported per rank | {', '.join(str(s[2]) for s in sizes)} |")
        print(f"| RLE payload, all ranks | {total_rle / 1e6:.2f} MB ({total_rle / args.samples:.0f} B per mask; "
              f"raw uint8 {raw / 1e6:.0f} MB, {raw / total_rle:.0f}x smaller) |")
        print(f"| pickled payload, all ranks | {total_pickled / 1e6:.2f} MB |")
        print(f"| received by each rank | {(total_pickled - sizes[0][1]) / 1e6:.2f} MB (the other ranks' exports) |")
        print(f"| `all_gather_object` | {gather_s * 1e3:.1f} ms |")
        print(f"| resolve (newest wins) | {resolve_s * 1e3:.1f} ms |")
        print(f"| merge into the cache | {merge_s * 1e3:.1f} ms |")
        print(f"| digest of the cache (consistency check) | {digest_s * 1e3:.1f} ms |")
        print(f"| **whole exchange per epoch** (`synchronize`: export, gather, merge, digest all-gather) | "
              f"**{sync_s * 1e3:.1f} ms** |")
        print(f"| for comparison: RLE-encoding one prediction (`cache.put`) | {encode_s * 1e3:.2f} ms |")
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profiles", nargs="+", default=["smooth", "ragged"], choices=["smooth", "ragged"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 thread per rank")
    for profile in args.profiles:
        mp.spawn(worker, args=(args.world, free_port(), args, profile), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
