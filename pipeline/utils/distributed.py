"""Helpers for ``torchrun`` multi-GPU / multi-node training, called from ``configs/multi_gpu_train.json``.

``torchrun`` starts one process per device and tells each who it is through environment variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...). Bundle configs must not read the environment themselves
(``pipeline verify`` refuses ``os``), so the overlay calls these functions instead::

    "device": "$pipeline.utils.distributed.ddp_device()"

Everything here also works without ``torchrun`` (rank 0 of a world of 1, ``LOCAL_RANK`` unset), so the helpers
can be called from single-process code and tests.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

__all__ = [
    "default_backend",
    "ddp_device",
    "destroy_distributed",
    "init_distributed",
    "is_rank0",
    "local_rank",
    "rank",
    "world_size",
]

logger = logging.getLogger(__name__)

_IGNITE_SYNCED: list[object] = []  # the process group ignite.distributed was last synced with


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        out = int(value)
    except ValueError:
        raise ValueError(
            f"Environment variable {name} must be an integer >= 0 (set by torchrun), got {value!r}."
        ) from None
    if out < 0:
        raise ValueError(f"Environment variable {name} must be an integer >= 0 (set by torchrun), got {value!r}.")
    return out


def local_rank() -> int:
    """This process's index on its node: ``LOCAL_RANK`` (set by ``torchrun``), 0 when unset."""
    return _env_int("LOCAL_RANK", 0)


def rank() -> int:
    """Global rank: from the process group when initialised, else ``RANK`` (0 when unset)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def world_size() -> int:
    """Number of processes: from the process group when initialised, else ``WORLD_SIZE`` (1 when unset)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, _env_int("WORLD_SIZE", 1))


def is_rank0() -> bool:
    """True in the process that logs and saves (global rank 0), and in single-process runs."""
    return rank() == 0


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, else ``"gloo"`` (CPU; also what CI uses)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def ddp_device(use_cuda: bool | None = None) -> torch.device:
    """The device of this process: ``cuda:<LOCAL_RANK>`` when CUDA is available (or ``use_cuda``), else ``cpu``.

    Raises:
        ValueError: ``LOCAL_RANK`` names a GPU this node does not have (more processes than GPUs per node).
    """
    cuda = torch.cuda.is_available() if use_cuda is None else bool(use_cuda)
    if not cuda:
        return torch.device("cpu")
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"LOCAL_RANK={index} but this node has {count} GPU(s). Fix: torchrun --nproc_per_node={count} "
            "(one process per GPU)."
        )
    return torch.device("cuda", index)


def init_distributed(backend: str | None = None, device: torch.device | str | None = None) -> int:
    """Join the ``torchrun`` process group (once) on every rank; returns this process's global rank.

    Also sets the CUDA device (before NCCL starts) and makes ``ignite.distributed`` learn the group now, on every
    rank at once: its first use runs collectives (a new gloo group, an all-reduce), and if that first use happened
    in a rank-0-only handler (e.g. the checkpoint saver) rank 0 would wait for ranks that never join.

    Args:
        backend: ``"nccl"``, ``"gloo"``, ...; default :func:`default_backend`.
        device: this process's device (:func:`ddp_device`); a CUDA device becomes the current one.
    """
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = backend or default_backend()
        dist.init_process_group(backend=backend)
        logger.info("process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    group = dist.group.WORLD
    if not _IGNITE_SYNCED or _IGNITE_SYNCED[-1] is not group:
        import ignite.distributed as idist

        idist.set_local_rank(local_rank())  # else ignite guesses it from all-gathered hostnames
        idist.sync()
        _IGNITE_SYNCED[:] = [group]
    return dist.get_rank()


def destroy_distributed() -> None:
    """Leave the process group, if any, and reset ``ignite.distributed`` to single-process (idempotent)."""
    if _IGNITE_SYNCED:
        _IGNITE_SYNCED.clear()
        if dist.is_initialized():
            import ignite.distributed as idist

            idist.finalize()  # destroys the group and forgets it
    if dist.is_initialized():
        dist.destroy_process_group()
