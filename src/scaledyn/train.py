"""Train one run (size, seed): the loop reads top to bottom.

Launched as one process on a CPU, or by `accelerate launch` across GPUs and nodes; accelerate's
Accelerator picks the setting up from the environment. The data order is a function of the step
alone, so every size sees the same batches and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from . import atomic, checkpoint
from .config import RunSpec
from .data import TokenData
from .errors import CheckpointError, DataError
from .launch import accelerator
from .model import build_model, param_counts
from .schedule import depends_on_total, lr_factor

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: the job saved a resume checkpoint and wants to be retried
LOG_FIELDS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s"]
# Spec fields that may change between a checkpoint and its resumption without changing the run.
RESUMABLE_CHANGES = {"steps", "checkpoint_steps", "optimizer_steps", "flush_every", "threads", "compile", "run_dir", "data_dir"}


class BatchOrder:
    """Global batch for step t (1-based): sequence rows [(t-1)B, tB) of an endless stream of
    epochs, each a permutation seeded by (data seed, epoch)."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        self.n, self.b, self.seed = n_rows, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def rows(self, step: int) -> np.ndarray:
        pos = np.arange((step - 1) * self.b, step * self.b)
        return np.array([self._permutation(p // self.n)[p % self.n] for p in pos])


class TrainLog:
    """CSV training log that survives crashes: buffered, flushed every few steps and at every
    checkpoint, truncated back to the resumed step so no step appears twice."""

    def __init__(self, path: Path, resume_step: int):
        self.path, self.buffer = path, []
        rows = []
        if path.exists() and resume_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        out = io.StringIO()
        w = csv.DictWriter(out, LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
        atomic.write_text(path, out.getvalue())

    def append(self, row: dict) -> None:
        self.buffer.append(row)

    def flush(self) -> None:
        if self.buffer:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, LOG_FIELDS).writerows(self.buffer)
                f.flush()
            self.buffer = []


class StopFlag:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) ask the loop to save and exit after this step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._set)

    def _set(self, signum, frame):
        self.requested = True


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on the (tied) embedding, and norms are frozen anyway."""
    emb = model.get_input_embeddings().weight
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p is emb or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, spec: RunSpec):
    """AdamW and its schedule; the one-step analysis rebuilds them the same way."""
    o = spec.optimizer
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=spec.lr, betas=o.betas, eps=o.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_factor(spec.schedule, t, spec.steps))
    return optimizer, scheduler


def _check_compatible(spec: RunSpec, state: dict, path: Path) -> None:
    old, new = state["spec"], json_norm(asdict(spec))
    changed = [k for k in new if k not in RESUMABLE_CHANGES and new[k] != old.get(k)]
    if old["steps"] != spec.steps and depends_on_total(spec.schedule):
        changed.append("steps (the schedule depends on the total)")
    if changed:
        raise CheckpointError(
            f"checkpoint {path} was made by a different run spec (changed: {', '.join(changed)}); "
            f"delete {spec.run_dir} to start this run afresh"
        )


def json_norm(v):
    """Tuples become lists, as they are in a checkpoint's JSON."""
    return json.loads(json.dumps(v))


def train(spec: RunSpec) -> dict:
    if spec.threads:
        torch.set_num_threads(spec.threads)
    use_bf16 = spec.precision == "bf16" or (spec.precision == "auto" and torch.cuda.is_available())
    acc = accelerator(use_bf16)
    run_dir = Path(spec.run_dir)
    state_dir = run_dir / "state"
    state_dir.mkdir(parents=True, exist_ok=True)

    # ---- data: checked before anything is built
    data = TokenData.open(spec.data_dir)
    vocab = data.model_vocab_size
    data.check_for_model(vocab, spec.size.context, spec.seq_len)
    tokens = data.split("train")
    world = acc.num_processes
    if spec.batch_size % world:
        raise DataError(f"train.batch_size {spec.batch_size} is not divisible by the {world} processes")
    per_rank = spec.batch_size // world
    micro = min(spec.micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise DataError(f"train.micro_batch_size {micro} does not divide the per-process batch {per_rank}")
    accum = per_rank // micro
    order = BatchOrder(len(tokens), spec.batch_size, spec.data_seed)

    # ---- model, optimizer, schedule; then the newest intact checkpoint, if any
    model = build_model(spec.size, vocab, spec.seed, data.manifest["tokenizer"]["eos_token_id"])
    counts = param_counts(model)
    optimizer, scheduler = make_optimizer(model, spec)
    start = 0
    for path in checkpoint.resumable(run_dir):
        try:
            state, opt_state, rng = checkpoint.load_training_state(path)
            _check_compatible(spec, state, path)
            try:
                weights = load_file(path / "model.safetensors")
            except Exception as e:
                raise CheckpointError(f"checkpoint {path}: model.safetensors is unreadable ({e})") from None
            model.load_state_dict(weights, strict=False)
            optimizer.load_state_dict(opt_state["optimizer"])
            scheduler.load_state_dict(opt_state["scheduler"])
            checkpoint.restore_rng(rng)
            start = state["step"]
            if acc.is_main_process:
                print(f"{spec.name}: resuming from checkpoint {path} at step {start}", file=sys.stderr)
            break
        except CheckpointError as e:
            if "different run spec" in str(e):
                raise
            checkpoint.warn_skip(path, e)
    model.tie_weights()
    if spec.compile:
        model = torch.compile(model)
    model, optimizer = acc.prepare(model, optimizer)

    log = TrainLog(state_dir / "train_log.csv", start) if acc.is_main_process else None
    stop = StopFlag()
    scheduled = set(spec.checkpoint_steps)
    tokens_per_step = spec.batch_size * spec.seq_len
    rank_rows = slice(acc.process_index * per_rank, (acc.process_index + 1) * per_rank)

    def save(step: int, kind: str) -> None:
        acc.wait_for_everyone()
        if acc.is_main_process:
            log.flush()
            state = {
                "step": step,
                "tokens_seen": step * tokens_per_step,
                "kind": kind,
                "run": spec.name,
                "spec": json_norm(asdict(spec)),
                **counts,
            }
            checkpoint.save(run_dir, step, acc.unwrap_model(model), optimizer, scheduler, state)
            if step in scheduled:
                checkpoint.write_marker(run_dir, step)
            checkpoint.prune(run_dir, step, scheduled, spec.keeps_optimizer)
        acc.wait_for_everyone()

    model.train()
    bar = tqdm(range(start + 1, spec.steps + 1), initial=start, total=spec.steps, desc=spec.name,
               disable=not acc.is_main_process, mininterval=1.0)
    t_last = time.perf_counter()
    for step in bar:
        batch = torch.from_numpy(np.asarray(tokens[order.rows(step)[rank_rows]], dtype=np.int64)).to(acc.device)
        loss_sum = torch.zeros((), device=acc.device)
        for i in range(accum):
            x = batch[i * micro : (i + 1) * micro]
            sync = acc.no_sync(model) if i < accum - 1 else contextlib.nullcontext()
            with sync, acc.autocast():
                loss = model(input_ids=x, labels=x).loss / accum
                acc.backward(loss)
            loss_sum += loss.detach()
        lr = scheduler.get_last_lr()[0]
        grad_norm = acc.clip_grad_norm_(model.parameters(), spec.grad_clip or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_val = acc.reduce(loss_sum, "mean").item() if world > 1 else loss_sum.item()

        now = time.perf_counter()
        tps = tokens_per_step / max(now - t_last, 1e-9)
        t_last = now
        if acc.is_main_process:
            log.append({"step": step, "tokens": step * tokens_per_step, "loss": f"{loss_val:.6f}", "lr": f"{lr:.6g}",
                        "grad_norm": f"{float(grad_norm):.6g}", "tokens_per_s": f"{tps:.1f}"})
            if step % spec.flush_every == 0:
                log.flush()
            bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tps:,.0f}", refresh=False)

        stop_now = stop.requested
        if world > 1:
            flag = torch.tensor(float(stop_now), device=acc.device)
            stop_now = acc.reduce(flag, "sum").item() > 0
        if step in scheduled:
            save(step, "final" if step == spec.steps else "scheduled")
        if stop_now and step < spec.steps:
            if step not in scheduled:
                save(step, "resume")
            bar.close()
            if acc.is_main_process:
                print(f"{spec.name}: stop requested; saved step {step}, exiting {PREEMPTED_EXIT} to be retried",
                      file=sys.stderr)
            sys.exit(PREEMPTED_EXIT)
    bar.close()

    result = {}
    if acc.is_main_process:
        log.flush()
        for s in spec.checkpoint_steps:  # markers of checkpoints made before a restart, too
            if (checkpoint.directory(run_dir, s) / checkpoint.COMPLETE).exists():
                checkpoint.write_marker(run_dir, s)
        atomic.write_text(run_dir / "train_log.csv", (state_dir / "train_log.csv").read_text())
        result = {
            "run": spec.name,
            "size": spec.size.name,
            "seed": spec.seed,
            **counts,
            "d_model": spec.size.d_model,
            "n_layers": spec.size.n_layers,
            "n_heads": spec.size.n_heads,
            "vocab_size": vocab,
            "steps": spec.steps,
            "tokens_per_step": tokens_per_step,
            "processes": world,
            "precision": "bf16" if use_bf16 else "fp32",
            "data_manifest_sha256": _manifest_hash(Path(spec.data_dir)),
            "spec": json_norm(asdict(spec)),
        }
        atomic.write_json(run_dir / "run.json", result)
    acc.wait_for_everyone()
    return result


def _manifest_hash(data_dir: Path) -> str:
    return hashlib.sha256((data_dir / "manifest.json").read_bytes()).hexdigest()
