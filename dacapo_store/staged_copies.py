"""Copying loaded tensors into tensors that already exist (a model's parameters, an optimizer's
state): on the CPU with ``copy_`` (large copies in slices over two threads, which releases the
GIL: 300 MB in 9.5 ms instead of 16.7 ms on one 2-core VM; no gain on the VM of
``docs/performance.md``, where one core already saturates the memory's bandwidth: 15.0 ms
instead of 15.4), and into CUDA memory through a few small pinned staging
buffers, so that the host-to-device transfer of one piece overlaps the host copy of the next.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import helper_threads

STAGING_BYTES = 32 * 1024 * 1024
"""Size of one pinned staging buffer."""
PARALLEL_COPY_BYTES = 16 * 1024 * 1024
"""Host copies smaller than this in total run on the calling thread alone."""
COPY_SLICE_BYTES = 4 * 1024 * 1024
"""Large host copies are cut into slices of this size, dealt to the threads in turn."""
STAGING_BUFFERS = 3
"""How many staging buffers take turns: one filled on the host while others transfer."""


def copy_pairs(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``target.copy_(source)`` for every pair (sources in host memory, same shapes), the CUDA
    targets through :func:`copy_to_cuda`; returns once every copy is complete."""
    with torch.no_grad():
        cuda: dict[torch.device, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        host: list[tuple[torch.Tensor, torch.Tensor]] = []
        for target, source in pairs:
            if target.is_cuda and source.device.type == "cpu":
                cuda.setdefault(target.device, []).append((target, source))
            else:
                host.append((target, source))
        copy_on_host(host)
        for device, device_pairs in cuda.items():
            copy_to_cuda(device, device_pairs)


def copy_on_host(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``target.copy_(source)`` for every pair; from :data:`PARALLEL_COPY_BYTES` in all, the
    pairs are shared by :func:`~dacapo_store.helper_threads.thread_count` (at most 2) threads
    started for this call, tensors larger than :data:`COPY_SLICE_BYTES` (same dtypes, contiguous
    targets) cut into slices of that size so that the threads' shares even out."""
    threads = min(2, helper_threads.thread_count())
    if threads < 2 or sum(target.nbytes for target, _ in pairs) < PARALLEL_COPY_BYTES:
        _copy_all(pairs)
        return
    shares: list[tuple[torch.Tensor, torch.Tensor]] = []
    for target, source in pairs:
        if target.nbytes > COPY_SLICE_BYTES and target.dtype == source.dtype and target.is_contiguous() and target.device.type == "cpu":
            into = target.view(-1).view(torch.uint8)
            out_of = source.contiguous().view(-1).view(torch.uint8)
            shares.extend(
                (into[start : start + COPY_SLICE_BYTES], out_of[start : start + COPY_SLICE_BYTES])
                for start in range(0, into.numel(), COPY_SLICE_BYTES)
            )
        else:
            shares.append((target, source))
    helper_threads.run_together([lambda share=shares[turn::threads]: _copy_all(share) for turn in range(threads)])


def _copy_all(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():  # on a helper thread too: grad mode is per thread
        for target, source in pairs:
            target.copy_(source)


def copy_to_cuda(device: torch.device, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy host ``source``\\ s into CUDA ``target``\\ s on ``device``: each source's bytes go
    through :data:`STAGING_BUFFERS` pinned buffers of :data:`STAGING_BYTES` (bounded pinned memory
    whatever the checkpoint's size), each transferred with a non-blocking copy on a side stream
    that first waits for the work already queued on the current stream; returns once the side
    stream is done. A pair whose dtypes differ or whose target is not contiguous is copied by a
    plain ``copy_`` once the staged copies before it are done."""
    with torch.cuda.device(device):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        buffers = [torch.empty(STAGING_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(STAGING_BUFFERS)]
        in_flight: list[torch.cuda.Event | None] = [None] * STAGING_BUFFERS
        turn = 0
        for target, source in pairs:
            if target.numel() == 0:
                continue
            if target.dtype != source.dtype or not target.is_contiguous():
                stream.synchronize()
                with torch.cuda.stream(stream):
                    target.copy_(source)
                continue
            into = target.view(-1).view(torch.uint8)
            out_of = source.contiguous().view(-1).view(torch.uint8)
            for start in range(0, into.numel(), STAGING_BYTES):
                piece = out_of[start : start + STAGING_BYTES]
                if in_flight[turn] is not None:
                    in_flight[turn].synchronize()  # this buffer's previous transfer is done
                staged = buffers[turn][: piece.numel()]
                staged.copy_(piece)
                with torch.cuda.stream(stream):
                    into[start : start + piece.numel()].copy_(staged, non_blocking=True)
                    in_flight[turn] = stream.record_event()
                turn = (turn + 1) % STAGING_BUFFERS
        stream.synchronize()
