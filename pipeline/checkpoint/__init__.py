"""Crash-safe training: atomic checkpoints every epoch and on interrupt, resume from the latest valid one.

:class:`TrainingCheckpointer` is an Ignite handler for the trainer. Files in ``ckpt_dir``:

- ``checkpoint_epoch=K.pt`` after epoch K (the newest ``keep_last`` are kept);
- ``checkpoint_epoch=K_iteration=N.pt`` when SIGTERM/SIGINT (or a KeyboardInterrupt) stops training during epoch
  K + 1 after N iterations; SIGTERM/SIGINT stop at the end of the current iteration (a second one stops at once)
  and the process then exits with 128 + the signal number;
- ``model.pt`` stays the best model's plain state dict, written by MONAI's ``CheckpointSaver`` as before.

A checkpoint holds the network, optimizer, LR schedulers, AMP scaler, trainer state (epoch/iteration), every
handler with ``state_dict``/``load_state_dict`` (e.g. :class:`pipeline.handlers.StagedUnfreezeHandler`), the
evaluator's best metric and the best-model saver's record (else a worse model overwrites ``model.pt`` after a
resume), the seed and the RNG states (Python, NumPy, torch, CUDA and every MONAI random transform of the training
dataset), all loadable with ``torch.load(weights_only=True)``. Files are written to a temp file, fsynced and renamed
(``os.replace``), so a crash never leaves a half-written checkpoint under a checkpoint name. With ``resume=True`` the
newest checkpoint that loads is used (unloadable ones are skipped with a warning naming them) and training continues
to the configured ``max_epochs``. How to resume: ``docs/troubleshooting.md``.
"""

from __future__ import annotations

from pipeline.checkpoint.files import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_save,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from pipeline.checkpoint.handler import TrainingCheckpointer
from pipeline.checkpoint.state import get_rng_state, set_rng_state, write_run_info

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "TrainingCheckpointer",
    "atomic_save",
    "find_latest_checkpoint",
    "get_rng_state",
    "list_checkpoints",
    "load_checkpoint",
    "set_rng_state",
    "write_run_info",
]
