"""Crash-safe training: atomic checkpoints every epoch and on interrupt, resume from the latest valid one, and the
best model written atomically.

:class:`TrainingCheckpointer` (on the trainer) writes ``checkpoint_epoch=K.pt`` after epoch K (the newest ``keep_last``
kept) and ``checkpoint_epoch=K_iteration=N.pt`` when SIGTERM/SIGINT (or Ctrl-C) stops training; what it saves is named
explicitly: the network, optimizer, AMP scaler, trainer state, the evaluator's best metric, every object of
``to_save`` (anything with ``state_dict``/``load_state_dict``, e.g. ``StagedUnfreezeHandler`` or an LR scheduler, as in
Ignite's ``Checkpoint(to_save)``), the seed and the RNG states. :class:`BestModelSaver` (on the evaluator) writes
``model.pt`` when the evaluator's key metric reaches a new best. Every file is written to a temp file, fsynced and
renamed (``os.replace``), so a crash never leaves a half-written file under a real name.

Resume checks what it restores: temp files of killed writes are removed; unloadable checkpoints are moved to
``ckpt_dir/corrupt/`` (never deleted, never overwritten), and when none is left the run stops instead of silently
starting over; an epoch whose validation was cut short by SIGTERM/SIGINT (its checkpoint says
``validation_pending``) is validated again before training goes on, so no best model is missed and the metric history
has no hole. Nothing depends on ``model.pt`` being there. How to resume: ``docs/troubleshooting.md``.
"""

from __future__ import annotations

import datetime
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.handlers.checkpoint_files import (
    CHECKPOINT_FORMAT,
    CORRUPT_DIR,
    CheckpointError,
    atomic_save,
    describe_mismatch,
    find_latest_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    move_aside,
    remove_stale_temps,
)
from pipeline.handlers.run_state import get_rng_state, plain, set_rng_state, write_run_info
from pipeline.networks.unet import unwrap

__all__ = ["BestModelSaver", "check_checkpoint_dir", "CheckpointSettingError", "TrainingCheckpointer"]


class CheckpointSettingError(CheckpointError, ValueError):
    """A checkpointer setting (``resume``, ``keep_last``, ...) has a wrong value; the message names it and the fix."""


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _resume_flag(resume: bool | str, ckpt_dir: str | Path) -> bool:
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    if not isinstance(resume, bool):
        raise CheckpointSettingError(
            f"'resume' must be True or False, got {resume!r}. Fix: pass --resume True to continue the run in "
            f"{ckpt_dir}, or --resume False to start a new one (capital T/F: other spellings arrive as strings)."
        )
    return resume


def check_checkpoint_dir(ckpt_dir: str | Path, resume: bool | str = False) -> bool:
    """Refuse a fresh run (``resume`` False) in a ``ckpt_dir`` that holds an earlier run's checkpoints, and a
    ``resume`` that is not True/False. The bundles' ``run`` calls it first, before any engine, TensorBoard writer or
    dataset is built, so a refused start leaves nothing behind; :class:`TrainingCheckpointer` checks again.

    Returns:
        ``resume`` as a bool.
    """
    resume = _resume_flag(resume, ckpt_dir)
    existing = list_checkpoints(ckpt_dir)
    if existing and not resume:
        raise CheckpointError(
            f"{ckpt_dir} already holds checkpoints of an earlier run ({', '.join(p.name for p in existing)}); "
            "a fresh run would mix with them. Fix: pass --resume True to continue that run, or move them away "
            "(or pass another --ckpt_dir) to start over."
        )
    return resume


class TrainingCheckpointer:
    """Ignite handler: checkpoint every epoch and on interrupt; with ``resume=True`` continue from the latest one.

    Attach it to the trainer *first* (before ``StatsHandler``), so its ``EXCEPTION_RAISED`` handler runs before
    others re-raise; its epoch checkpoint is registered at ``STARTED`` and so runs after validation.

    Args:
        ckpt_dir: folder of ``checkpoint_epoch=K.pt`` (and MONAI's ``model.pt``).
        network: the trained network (DDP/DataParallel are unwrapped).
        optimizer: its optimizer.
        evaluator: the validation evaluator; its ``best_metric``/``best_metric_epoch`` are saved and restored (so
            :class:`BestModelSaver` never overwrites ``model.pt`` with a worse model after a resume).
        to_save: ``{name: object}`` saved and restored by name: each object has ``state_dict()`` and
            ``load_state_dict()`` (``StagedUnfreezeHandler``, an LR scheduler, ...). None values (components
            disabled in the config) are skipped. Bundles: ``checkpointer#to_save``; overlays add entries by name.
        dataset: the training dataset; the RNG states of its MONAI random transforms are saved.
        resume: continue from the newest valid checkpoint in ``ckpt_dir`` (none: start from scratch).
        keep_last: epoch/interrupt checkpoints kept (older ones are deleted after each successful save).
        every_n_epochs: checkpoint every N epochs (and always after the last one).
        seed: recorded in checkpoints and ``run_info.json``.
        output_dir: where ``run_info.json`` is written; None: not written.
        handle_signals: stop gracefully on SIGTERM/SIGINT (main thread only).
        validate: ``validate(epoch)`` validates that epoch again after a resume whose checkpoint says its validation
            was cut short; None: ``evaluator.run(epoch)`` for a MONAI ``Evaluator`` (what ``ValidationHandler``
            calls), else a warning.

    Raises:
        CheckpointSettingError: ``resume`` is not True/False (``--resume yes``), or ``keep_last``/``every_n_epochs``
            is not an integer >= 1.
        CheckpointError: at construction, when ``resume`` is False but ``ckpt_dir`` already holds checkpoints of
            an earlier run (continue it with ``resume=True``, or move them away); at the start of a resumed run, when
            every checkpoint is unloadable (they are moved to ``ckpt_dir/corrupt/``) or one does not fit the network.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        evaluator: Any = None,
        to_save: Mapping[str, Any] | None = None,
        dataset: Any = None,
        resume: bool | str = False,
        keep_last: int = 2,
        every_n_epochs: int = 1,
        seed: int | None = None,
        output_dir: str | Path | None = None,
        handle_signals: bool = True,
        validate: Callable[[int], Any] | None = None,
    ) -> None:
        resume = _resume_flag(resume, ckpt_dir)
        for name, value in (("keep_last", keep_last), ("every_n_epochs", every_n_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointSettingError(f"'{name}' must be an integer >= 1, got {value!r}. Fix: e.g. --{name} 2.")
        self.ckpt_dir, self.network, self.optimizer, self.evaluator = Path(ckpt_dir), network, optimizer, evaluator
        self.dataset, self.resume, self.keep_last = dataset, resume, keep_last
        self.every_n_epochs, self.seed, self.handle_signals = every_n_epochs, seed, handle_signals
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.validate = validate
        self.to_save: dict[str, Any] = {}
        for key, obj in dict(to_save or {}).items():
            if obj is None:
                continue
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise TypeError(
                    f"'to_save' entry {key!r} must have state_dict() and load_state_dict(), got {type(obj).__name__}. "
                    "Fix: save the object that holds the state (e.g. an LR handler's lr_scheduler)."
                )
            self.to_save[str(key)] = obj
        check_checkpoint_dir(self.ckpt_dir, resume)
        self.resumed_from: Path | None = None
        self._last_saved: int | None = None
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._started = False
        self._epoch_end = False  # the epoch's last iteration is done, its EPOCH_COMPLETED handlers not all yet
        self._raising = False

    # -------------------------------------------------------------------------------------------- state
    def checkpoint(self, engine: Any, reason: str = "epoch") -> dict[str, Any]:
        """Everything needed to continue ``engine`` (a dict loadable with ``weights_only=True``)."""
        ev = getattr(self.evaluator, "state", None)
        scaler = getattr(engine, "scaler", None)
        return plain(
            {
                "format": CHECKPOINT_FORMAT,
                "reason": reason,
                # the epoch's training is done, its validation (EPOCH_COMPLETED) was cut short: redo it on resume
                "validation_pending": self._epoch_end and (self._signal is not None or self._raising),
                "epoch": int(engine.state.iteration // max(1, engine.state.epoch_length or 1)),
                "iteration": int(engine.state.iteration),
                "seed": self.seed,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "trainer": dict(engine.state_dict()),
                "trainer_best": [
                    getattr(engine.state, "best_metric", None),
                    getattr(engine.state, "best_metric_epoch", None),
                ],
                "network": unwrap(self.network).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "to_save": {k: obj.state_dict() for k, obj in self.to_save.items()},
                "evaluator": None
                if ev is None
                else [getattr(ev, "best_metric", None), getattr(ev, "best_metric_epoch", None)],
                "rng": get_rng_state(getattr(self.dataset, "transform", None)),
            }
        )

    def restore(self, engine: Any, ckpt: Mapping[str, Any], path: str | Path | None = None) -> None:
        """Load ``ckpt`` into the network, optimizer, schedulers, handlers, evaluator, RNGs and ``engine``'s state
        (``max_epochs`` stays the configured one).

        Raises:
            CheckpointError: the checkpoint does not fit the network or optimizer (one line: what differs, the fix).
        """
        net = unwrap(self.network)
        try:
            net.load_state_dict(ckpt["network"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            what = describe_mismatch(net.state_dict(), ckpt.get("network")) or " ".join(str(e).split())[:300]
            raise CheckpointError(
                f"{path or 'checkpoint'} does not fit this network/optimizer ({what}). Fix: resume with the "
                "configuration the run started with (same backbone, class_names, channels), or start a new run in "
                "another --ckpt_dir."
            ) from e
        saved = dict(ckpt.get("to_save") or {})
        for key, obj in self.to_save.items():
            if key in saved:
                obj.load_state_dict(saved[key])
            else:
                engine.logger.warning("checkpoint has no state for to_save[%r]; it starts fresh.", key)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if self.evaluator is not None and ckpt.get("evaluator"):
            self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = ckpt["evaluator"]
        if ckpt.get("trainer_best") and ckpt["trainer_best"][0] is not None:
            engine.state.best_metric, engine.state.best_metric_epoch = ckpt["trainer_best"]
        if _is_rank0():  # only rank 0 writes checkpoints; other ranks keep their own (seed + rank) streams
            set_rng_state(ckpt["rng"], getattr(self.dataset, "transform", None))
        max_epochs, length = engine.state.max_epochs, engine.state.epoch_length
        saved = dict(ckpt["trainer"])
        if length is not None and saved.get("epoch_length") != length:
            engine.logger.warning(
                "epoch length changed from %s to %s iterations (different data?); resuming at epoch %d.",
                saved.get("epoch_length"), length, ckpt["epoch"],
            )  # fmt: skip
            engine.load_state_dict({"epoch": ckpt["epoch"], "epoch_length": length, "max_epochs": max_epochs})
        else:
            engine.load_state_dict({**saved, "max_epochs": max_epochs})
        self._last_saved = engine.state.iteration

    # -------------------------------------------------------------------------------------------- ignite
    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: setattr(self, "_epoch_end", False))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)

    def _on_iteration(self, engine: Any) -> None:
        length = engine.state.epoch_length
        self._epoch_end = bool(length) and engine.state.iteration % length == 0

    def _on_epoch_handlers_done(self, engine: Any) -> None:
        if self._signal is None:  # a signal during them (validation) leaves the epoch end unfinished
            self._epoch_end = False

    def _on_started(self, engine: Any) -> None:
        from ignite.engine import Events

        if not self._started:  # registered now, after every other handler: the epoch checkpoint follows validation
            self._started = True
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_n_epochs), self._save, "epoch")
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_handlers_done)
            engine.add_event_handler(Events.TERMINATE, self._on_terminate)
            engine.add_event_handler(Events.COMPLETED, self._on_completed)
            if self.resume:
                self._resume(engine)
            if self.output_dir is not None and _is_rank0():
                resumed = None if self.resumed_from is None else str(self.resumed_from)
                write_run_info(self.output_dir, self.seed, resumed, {"start_epoch": engine.state.epoch})
        self._install_signals(engine)

    def _resume(self, engine: Any) -> None:
        if not _is_rank0():  # rank 0 alone cleans up; every rank reads the same newest valid checkpoint
            found = find_latest_checkpoint(self.ckpt_dir)
        else:
            for tmp in remove_stale_temps(self.ckpt_dir):
                engine.logger.info("removed %s (left by an interrupted checkpoint write)", tmp)
            corrupt: list[Path] = []
            found = find_latest_checkpoint(self.ckpt_dir, corrupt)
            moved = move_aside(corrupt, self.ckpt_dir) if corrupt else []
            if moved and found is None:
                raise CheckpointError(
                    f"--resume True: no checkpoint in {self.ckpt_dir} loads; moved the unloadable ones to "
                    f"{self.ckpt_dir / CORRUPT_DIR} ({', '.join(p.name for p in moved)}), nothing deleted. Fix: put a "
                    f"good copy of a checkpoint back into {self.ckpt_dir} and resume again, or start over with "
                    "--resume False."
                )
            if moved:
                names = ", ".join(p.name for p in moved)
                engine.logger.warning("moved unloadable checkpoint(s) %s to %s (kept; no later save overwrites them).",
                                      names, self.ckpt_dir / CORRUPT_DIR)  # fmt: skip
        if found is None:
            engine.logger.info("resume: no checkpoint in %s; training from scratch.", self.ckpt_dir)
            return
        path, ckpt = found
        self.restore(engine, ckpt, path)
        self.resumed_from = path
        engine.logger.info(
            "Resumed from %s: epoch %d, iteration %d; training to max_epochs=%d.",
            path, engine.state.epoch, engine.state.iteration, engine.state.max_epochs,
        )  # fmt: skip
        if ckpt.get("seed") is not None and self.seed is not None and ckpt["seed"] != self.seed:
            engine.logger.warning("checkpoint seed %s differs from the configured seed %s.", ckpt["seed"], self.seed)
        if engine.state.epoch >= (engine.state.max_epochs or 0):
            engine.logger.warning(
                "checkpoint is at epoch %d >= max_epochs=%s: nothing left to train (pass a larger --max_epochs).",
                engine.state.epoch, engine.state.max_epochs,
            )  # fmt: skip
        if ckpt.get("validation_pending"):
            self._validate_again(engine, path)

    def _validate_again(self, engine: Any, path: Path) -> None:
        """Validate the restored epoch, whose validation was cut short, then record that in its checkpoint."""
        from monai.engines import Evaluator

        epoch = engine.state.epoch
        validate = self.validate
        if validate is None and isinstance(self.evaluator, Evaluator):
            validate = self.evaluator.run
        if validate is None:
            engine.logger.warning("%s: the validation of epoch %d was cut short and cannot be run again here (no "
                                  "'validate' given); its metrics are missing.", path, epoch)  # fmt: skip
            return
        engine.logger.info("%s: the validation of epoch %d was cut short; validating it again.", path, epoch)
        validate(epoch)
        self._save(engine, "validated", force=True)

    def _save(self, engine: Any, reason: str, force: bool = False) -> Path | None:
        it, length = int(engine.state.iteration), max(1, int(engine.state.epoch_length or 1))
        if (it == self._last_saved and not force) or not _is_rank0():
            return None
        name = (
            f"checkpoint_epoch={it // length}.pt"
            if it % length == 0
            else f"checkpoint_epoch={it // length}_iteration={it}.pt"
        )
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = atomic_save(self.checkpoint(engine, reason), self.ckpt_dir / name)
        self._last_saved = it
        for old in list_checkpoints(self.ckpt_dir)[: -self.keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
        engine.logger.info("saved checkpoint %s (%s)", path, reason)
        return path

    def _on_completed(self, engine: Any) -> None:
        self._save(engine, "completed")
        self._restore_signals()

    def _on_terminate(self, engine: Any) -> None:
        signum = self._signal
        path = self._save(engine, signal.Signals(signum).name if signum else "terminate")
        self._restore_signals()
        if signum is None:  # terminated by another handler (e.g. early stopping): a normal end
            return
        latest = path or latest_checkpoint(self.ckpt_dir)
        engine.logger.warning(
            "Stopped by %s at epoch %d, iteration %d; checkpoint %s. Resume with --resume True. Exiting with code %d.",
            signal.Signals(signum).name, engine.state.epoch, engine.state.iteration, latest, 128 + signum,
        )  # fmt: skip
        raise SystemExit(128 + signum)

    def _on_exception(self, engine: Any, e: BaseException) -> None:
        self._restore_signals()
        if isinstance(e, KeyboardInterrupt) and self._signal is None:  # not the "stop at once" second Ctrl-C
            self._raising = True
            try:
                self._save(engine, "KeyboardInterrupt")
            except Exception as err:  # never hide the interrupt behind a failed save
                engine.logger.error("could not save a checkpoint on interrupt: %s", err)
        elif isinstance(e, CheckpointError):  # its message has the fix; "--resume True" would fail the same way
            pass
        elif not isinstance(e, SystemExit):
            latest = latest_checkpoint(self.ckpt_dir)
            engine.logger.error(
                "training failed at epoch %d, iteration %d; latest checkpoint: %s. After fixing the cause, continue "
                "with --resume True.", engine.state.epoch, engine.state.iteration, latest,
            )  # fmt: skip
        raise e

    # -------------------------------------------------------------------------------------------- signals
    def _install_signals(self, engine: Any) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread() or self._previous:
            return
        self._signal = None

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:  # second signal: stop now
                self._restore_signals()
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                signal.raise_signal(signum)
                return
            self._signal = signum
            engine.logger.warning(
                "%s received: stopping after the current iteration and saving a checkpoint (send it again to stop "
                "at once).", signal.Signals(signum).name,
            )  # fmt: skip
            engine.terminate(skip_completed=True)
            if self.evaluator is not None and hasattr(self.evaluator, "terminate"):
                self.evaluator.terminate(skip_completed=True)

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


class BestModelSaver:
    """Evaluator handler: write the network's state dict to ``save_dir/filename`` at each new best key metric.

    The comparison is the evaluator's own (MONAI updates ``state.best_metric``/``best_metric_epoch`` at
    ``EPOCH_COMPLETED`` before this handler runs); the file is replaced atomically, so a crash during the write leaves
    the previous best model loadable, and a full disk is a one-line :class:`CheckpointError`. Only rank 0 writes.

    Args:
        network: the trained network (DDP/DataParallel are unwrapped; the file holds the plain state dict).
        save_dir: folder of the best model (the bundles' ``ckpt_dir``).
        filename: file name, ``model.pt`` in the bundles.
    """

    def __init__(self, network: nn.Module, save_dir: str | Path, filename: str = "model.pt") -> None:
        if not filename or Path(filename).name != filename:
            raise ValueError(f"'filename' must be a plain file name like 'model.pt', got {filename!r}.")
        self.network, self.path = network, Path(save_dir) / filename

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        state = engine.state
        if getattr(state, "best_metric_epoch", None) != state.epoch or not _is_rank0():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(unwrap(self.network).state_dict(), self.path)
        engine.logger.info("saved best model %s (%s=%.4f at epoch %d)", self.path, state.key_metric_name,
                           float(state.best_metric), state.epoch)  # fmt: skip
