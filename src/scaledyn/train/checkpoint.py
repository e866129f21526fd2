"""The one checkpoint format, and the Checkpointer that writes, marks, prunes and restores it.

    runs/<run>/checkpoints/step<t>/         written to a temporary directory, then renamed
        config.json, model.safetensors      save_pretrained: opens with AutoModelForCausalLM
        optimizer.pt                        optimizer state (may be pruned, see Checkpointer.prune)
        rng.pt                              RNG states of the saving process, as tensors and numbers
        scaledyn_state.json                 step, tokens seen, kind, run spec, parameter counts
        COMPLETE                            written last: a directory without it is ignored
    runs/<run>/checkpoints/step<t>.json     the workflow's marker for checkpoint t (a copy of
                                            scaledyn_state.json, its mtime = the checkpoint's)

Nothing in a checkpoint is unpickled: every torch.load uses weights_only=True, which accepts only
tensors and plain containers. Checkpoints written before RNG states were stored as tensors hold a
numpy array; reading them allows numpy's array reconstruction and nothing else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .. import atomic
from ..errors import CheckpointError, WriteError
from ..layout import DataPaths, RunPaths
from ..schedule import depends_on_total
from .card import model_card
from .launch import node_name
from .spec import RunSpec

COMPLETE = "COMPLETE"
STATE = "scaledyn_state.json"
OLD_STATE = "trainer_state.json"  # the name before: it collided with HF Trainer's file of another layout


class SpecMismatch(CheckpointError):
    """A checkpoint made by a different run spec: resuming from it would silently change the run."""


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).exists()


def complete_steps(paths: RunPaths) -> list[int]:
    return [s for s in paths.checkpoint_steps() if is_complete(paths.checkpoint(s))]


STATE_KEYS = ("step", "tokens_seen", "run", "spec")


def state_file(path: Path) -> Path:
    return path / STATE if (path / STATE).exists() or not (path / OLD_STATE).exists() else path / OLD_STATE


def read_state(path: Path) -> dict:
    file = state_file(path)
    try:
        state = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {file.name} is unreadable ({e})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: {file.name} lacks {', '.join(missing)}")
    return state


def _numpy_arrays():
    from numpy._core.multiarray import _reconstruct

    return [_reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def _load(file: Path):
    """torch.load without pickle: tensors and plain containers only (and plain numpy arrays, which
    RNG states of older checkpoints hold)."""
    try:
        with torch.serialization.safe_globals(_numpy_arrays()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own notes on pickle protocols: the refusal says it all
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything else, RuntimeError/EOFError when damaged
        reason = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"checkpoint {file.parent}: {file.name} is unreadable or not plain tensor data "
                              f"(refused: {reason})") from None


def load_training_state(path: Path) -> tuple[dict, dict, dict]:
    """(trainer state, optimizer state, rng payload); raises CheckpointError if damaged."""
    state = read_state(path)
    opt, rng = _load(path / "optimizer.pt"), _load(path / "rng.pt")
    if not isinstance(opt, dict) or not isinstance(opt.get("optimizer"), dict) or not isinstance(rng, dict):
        raise CheckpointError(f"checkpoint {path}: optimizer.pt or rng.pt does not hold a training state")
    return state, opt["optimizer"], rng


def rng_state() -> dict:
    """The process' RNG states as tensors and numbers (no pickled objects)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
            "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                      "cached_gaussian": cached}}


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    else:  # older checkpoints: numpy's own state tuple
        np.random.set_state(n)
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def check_compatible(spec: RunSpec, state: dict, path: Path) -> None:
    old, new = state["spec"], spec.to_dict()
    changed = [k for k in new if k not in RunSpec.RESUMABLE and new[k] != old.get(k)]
    if old["steps"] != spec.steps and depends_on_total(spec.schedule):
        changed.append("steps (the schedule depends on the total)")
    if changed:
        raise SpecMismatch(f"checkpoint {path} was made by a different run spec (changed: {', '.join(changed)}); "
                           f"delete {spec.run_dir} to start this run afresh")


def warn_skip(path: Path, err: Exception) -> None:
    warnings.warn(f"skipping damaged checkpoint {path}: {err}", stacklevel=2)


class Checkpointer:
    """A run's checkpoints: `save` (on the main process), `restore` the newest intact one."""

    def __init__(self, spec: RunSpec, counts: dict):
        """`counts`: the model's parameter counts, recorded in every checkpoint's trainer state."""
        self.spec, self.paths, self.counts = spec, RunPaths(spec.run_dir), counts
        self.tokenizer = DataPaths(spec.data_dir).tokenizer
        self.scheduled = set(spec.checkpoint_steps)

    def save(self, step: int, kind: str, model, optimizer) -> Path:
        """Write checkpoint `step` atomically, mark it if scheduled, prune what is no longer needed."""
        state = {"step": step, "tokens_seen": step * self.spec.batch_size * self.spec.seq_len, "kind": kind,
                 "run": self.spec.name, "node": node_name(), "spec": self.spec.to_dict(), **self.counts}
        path = self.paths.checkpoint(step)
        try:
            with atomic.atomic_dir(path) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                for f in self.tokenizer.iterdir():
                    shutil.copy2(f, tmp / f.name)
                torch.save({"optimizer": optimizer.state_dict()}, tmp / "optimizer.pt")
                torch.save(rng_state(), tmp / "rng.pt")
                atomic.write_json(tmp / STATE, state)
                (tmp / "README.md").write_text(model_card(self.spec, step, state["tokens_seen"], self.counts))
                (tmp / COMPLETE).write_text("")
        except Exception as e:  # torch reports a full disk as RuntimeError("unexpected pos"), safetensors as its own
            full = shutil.disk_usage(self.paths.checkpoints).free < 1 << 20
            reason = "No space left on device" if full else (getattr(e, "strerror", None) or
                                                             f"{type(e).__name__}: {str(e).splitlines()[0]}")
            raise WriteError(f"cannot write checkpoint {path}: {reason}") from None
        if step in self.scheduled:
            self.mark(step)
        self.prune(step)
        return path

    def mark(self, step: int) -> None:
        """(Re)write the workflow marker; its mtime is the checkpoint's, so downstream jobs stay valid."""
        path, marker = self.paths.checkpoint(step), self.paths.marker(step)
        atomic.write_text(marker, state_file(path).read_text())
        t = (path / COMPLETE).stat().st_mtime
        os.utime(marker, (t, t))

    def mark_all(self) -> None:
        """Markers of every scheduled checkpoint present, including those made before a restart."""
        for s in self.spec.checkpoint_steps:
            if is_complete(self.paths.checkpoint(s)):
                self.mark(s)

    def prune(self, newest: int) -> None:
        """After checkpoint `newest` is complete: drop older unscheduled (pre-emption) checkpoints and
        the optimizer state that neither resuming nor the one-step analysis needs."""
        for s in complete_steps(self.paths):
            if s >= newest:
                continue
            path = self.paths.checkpoint(s)
            if s not in self.scheduled:
                shutil.rmtree(path, ignore_errors=True)
            elif not self.spec.keeps_optimizer(s) and (path / "optimizer.pt").exists():
                (path / "optimizer.pt").unlink()

    def remove_stale(self) -> None:
        """Temporary checkpoint directories a killed save left behind (full model and optimizer
        state: gigabytes at paper sizes). Only the run's lock holder may call this."""
        for p in atomic.remove_stale(self.paths.checkpoints, ".step"):
            print(f"{self.spec.name}: removed the unfinished checkpoint {p}", file=sys.stderr)

    def resumable(self) -> list[Path]:
        """Complete checkpoints that still hold optimizer state, newest first."""
        return [self.paths.checkpoint(s) for s in reversed(complete_steps(self.paths))
                if (self.paths.checkpoint(s) / "optimizer.pt").exists()]

    def restore(self, path: Path, model, optimizer) -> int:
        """Load checkpoint `path` into model and optimizer; returns its step. Raises SpecMismatch,
        or CheckpointError for a damaged checkpoint."""
        state, opt_state, rng = load_training_state(path)
        check_compatible(self.spec, state, path)
        try:
            weights = load_file(path / "model.safetensors")
        except Exception as e:
            raise CheckpointError(f"checkpoint {path}: model.safetensors is unreadable ({e})") from None
        if not all(torch.isfinite(w).all() for w in weights.values()):
            raise CheckpointError(f"checkpoint {path}: model.safetensors holds non-finite weights")
        try:
            model.load_state_dict(weights, strict=False)
            optimizer.load_state_dict(opt_state)
            set_rng_state(rng)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"checkpoint {path}: its state does not fit this run ({type(e).__name__}: {e})") from None
        return state["step"]

    def resume(self, model, optimizer, logged: int) -> int:
        """Restore the newest intact checkpoint that the training log covers (rows 1..`logged`); the
        step it was taken at (0 for a fresh run). Damaged checkpoints are skipped with a warning; one
        from another run spec stops the run."""
        for path in self.resumable():
            step = self.paths.step_of(path)
            if step > logged:
                print(f"{self.spec.name}: checkpoint {path} is ahead of the training log (intact through step {logged}); "
                      "resuming from an earlier one so that the log has no gap", file=sys.stderr)
                continue
            try:
                return self.restore(path, model, optimizer)
            except SpecMismatch:
                raise
            except CheckpointError as e:
                warn_skip(path, e)
        return 0
