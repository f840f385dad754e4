"""Training on several GPUs or nodes with ``torchrun``: process group from the environment, rank-aware
seeding and sampling, gradient averaging, and "only rank 0 writes".

Launch the ordinary ``gase train`` command under ``torchrun``::

    torchrun --standalone --nproc_per_node 4 -m gase.cli train --images imgs --labels labs --out model
    torchrun --nnodes 2 --node_rank 0 --master_addr host0 --master_port 29500 --nproc_per_node 8 \\
        -m gase.cli train ...          # one such line per node; --out on a filesystem all nodes share

Semantics (what a user can rely on):

- ``batch_size`` in the training config is the **global** batch. Each of the W processes samples
  ``batch_size / W`` crops per iteration (so ``batch_size`` must be a multiple of W), and the gradients
  are averaged over the processes after every backward pass. W processes therefore take the same
  optimisation steps, with the same learning rate and iteration budget, as one process with the full
  batch; only the random crops differ.
- Every rank builds the networks from the same seed and then receives rank 0's weights (a broadcast),
  so all ranks start identical and stay identical (checked when training ends). Data sampling and
  augmentation use a per-rank seed derived from ``(seed, rank)``, and after a resume from
  ``(seed, rank, iteration)``: a run is repeatable for a given seed and number of processes. One process
  behaves exactly as without ``torchrun``.
- Only rank 0 validates, prints progress, writes checkpoints, logs and the model folder. A stop request
  (SIGTERM, the stop file) seen by any rank stops every rank after the same iteration.
- Backend: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is used, gloo on the CPU.

Why gradients are averaged here rather than by wrapping the networks in ``DistributedDataParallel``:
a GASE step runs the discriminator several times before one backward pass and freezes it while the
generator learns; DDP's reducer expects one forward per backward over a fixed set of trainable
parameters. Averaging the flattened gradients with one all-reduce per optimiser, right after
``backward()``, is the same arithmetic as DDP (mean of the per-rank gradients), as StyleGAN3's training
loop does it, and it holds for any number of forward passes.
"""
from __future__ import annotations

import datetime
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import InputError

DEFAULT_TIMEOUT_S = 1800  # rank 0 validates and exports while the others wait


def rank_seed(seed: int, rank: int, iteration: int = 0) -> int:
    """The seed of one rank's sampling/augmentation stream (non-overlapping across ranks and resumes)."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(iteration), 0xD157]).generate_state(1)[0])


@dataclass
class DistContext:
    """Where this process sits in a (possibly one-process) training job. The default is one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # of collective tensors

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- data ------------------------------------------------------------------------------------
    def local_batch(self, global_batch: int) -> int:
        """Crops this rank samples per iteration: ``global_batch / world_size``."""
        if global_batch % self.world_size:
            raise InputError(f"The batch size ({global_batch}) must be a multiple of the number of training "
                             f"processes ({self.world_size}): each process takes batch_size / processes crops. "
                             "Change batch_size in the training config or --nproc_per_node.")
        return global_batch // self.world_size

    def main_only(self, fn: Callable[[dict], None]) -> Callable[[dict], None]:
        """``fn`` on rank 0, a no-op elsewhere (events, printing)."""
        return fn if self.is_main else (lambda event: None)

    # -- set-up ----------------------------------------------------------------------------------
    def attach(self, trainer) -> "DistContext":
        """Give every rank rank 0's initial weights and its own random streams. No-op for one process."""
        if self.is_distributed:
            for module in _networks(trainer):
                self.broadcast_module(module)
            self._reseed(trainer, rank_seed(trainer.cfg.seed, self.rank))
        return self

    def after_resume(self, trainer) -> None:
        """All ranks must resume from the same iteration (the checkpoint must be on a shared filesystem);
        then each rank re-derives its random streams from (seed, rank, iteration)."""
        if not self.is_distributed:
            return
        it = torch.tensor([float(trainer.state.iteration)], device=self.device)
        lo, hi = it.clone(), it.clone()
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        if lo.item() != hi.item():
            raise InputError(f"The training processes found different checkpoints (iterations {int(lo.item())} "
                             f"and {int(hi.item())}). Put --out on a filesystem that every node shares, or "
                             "start afresh with --no-resume.")
        for module in _networks(trainer):  # rank 0's copy wins, whatever each rank loaded
            self.broadcast_module(module)
        self._reseed(trainer, rank_seed(trainer.cfg.seed, self.rank, trainer.state.iteration))

    @staticmethod
    def _reseed(trainer, seed: int) -> None:
        trainer.gen.manual_seed(seed)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    # -- collectives -----------------------------------------------------------------------------
    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        tensors = [t.data for t in list(module.parameters()) + list(module.buffers())]
        if not self.is_distributed or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(self.device, torch.float32) for t in tensors])
        torch.distributed.broadcast(flat, src=src)
        _unflatten_into(flat, tensors)

    def average_gradients(self, *modules: nn.Module) -> None:
        """Replace each gradient by its mean over the ranks (call after ``backward()``, before ``step()``)."""
        if not self.is_distributed:
            return
        grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1).to(self.device, torch.float32) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        _unflatten_into(flat, grads)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (so all ranks stop after the same iteration)."""
        if not self.is_distributed:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key mean over the ranks (the losses that progress events and logs report)."""
        if not self.is_distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64 if self.device.type == "cpu"
                         else torch.float32, device=self.device)
        torch.distributed.all_reduce(t)
        t /= self.world_size
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def verify_in_sync(self, trainer, rtol: float = 1e-5) -> None:
        """Raise if the ranks' weights differ (a bug: gradients were not averaged somewhere)."""
        if not self.is_distributed:
            return
        sums = torch.stack([torch.cat([p.detach().reshape(-1).float() for p in m.parameters()]).double().sum()
                            .to(self.device) for m in _networks(trainer)]).float()
        lo, hi = sums.clone(), sums.clone()
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        if not torch.allclose(lo, hi, rtol=rtol, atol=rtol):
            raise RuntimeError(f"Training processes diverged (weight sums {lo.tolist()} vs {hi.tolist()}).")

    def barrier(self) -> None:
        if self.is_distributed:
            torch.distributed.barrier()


def _networks(trainer) -> list[nn.Module]:
    return [trainer.seg, trainer.enc, trainer.G, trainer.M]


def _unflatten_into(flat: torch.Tensor, tensors: Iterable[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t).to(t.device, t.dtype))
        offset += n


_CURRENT = DistContext()


def context() -> DistContext:
    """This process's context: set by :func:`init_from_env`, else one process."""
    return _CURRENT


def init_from_env(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group ``torchrun`` describes in ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_*``.

    Without those variables (or with one process) nothing happens and the one-process context is returned.
    CUDA processes use NCCL and the GPU ``LOCAL_RANK``; CPU processes use gloo.
    """
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        _CURRENT = DistContext()
        return _CURRENT
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = (device or "auto").lower()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available to PyTorch. Use --device cpu.")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"{os.environ.get('LOCAL_WORLD_SIZE', '?')} training processes on this node but only "
                             f"{torch.cuda.device_count()} GPU(s). Use --nproc_per_node "
                             f"{torch.cuda.device_count()} (one process per GPU), or --device cpu.")
        torch.cuda.set_device(local_rank)  # so that "cuda" in the trainer means this rank's GPU
    backend = "nccl" if use_cuda else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _CURRENT = DistContext(rank, world, local_rank, backend,
                           torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (if any) and fall back to the one-process context."""
    global _CURRENT
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        store = None
        if torch.distributed.get_backend() == "gloo":
            # gloo aborts a process (std::terminate) whose peers close their connections while it still
            # tears down: leave together. Bounded wait, so a dead peer cannot hang the exit.
            try:
                torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=120), wait_all_ranks=True)
                store = _default_store()
            except RuntimeError:
                pass
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        torch.distributed.destroy_process_group()
        if store is not None:
            _leave_in_order(store, rank, world)
    _CURRENT = DistContext()


def _default_store():
    try:  # private but long-standing (torch 1.x-2.x); without it the ordered exit is skipped
        return torch.distributed.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError):
        return None


def _leave_in_order(store, rank: int, world: int, timeout_s: float = 30.0) -> None:
    """Rank 0 hosts the rendezvous store: it leaves only once every other rank has finished tearing down
    its process group (a store counter), so no rank is still closing gloo connections when the store and
    rank 0's sockets go away. Seen without it: an occasional SIGABRT ("terminate called without an active
    exception") at the end of a 2-process CPU run, with all work done. Bounded: a dead rank costs at most
    ``timeout_s``."""
    try:
        if rank != 0:
            store.add("gase/left", 1)
            return
        deadline = time.monotonic() + timeout_s
        while store.add("gase/left", 0) < world - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    except (RuntimeError, OSError):  # the store is gone (rank 0 exited first, or a timeout): nothing to order
        pass
