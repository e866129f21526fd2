"""Train one run (size, seed): set up, resume, then one loop that reads top to bottom.

Launched as one process on a CPU, or by `accelerate launch` across GPUs and nodes; accelerate's
Accelerator picks the setting up from the environment. The data order is a function of the step
alone, so every size sees the same batches and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import math
import os
import signal
import socket
import sys
import time

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .. import atomic
from ..data.tokens import TokenData
from ..errors import DataError, Diverged, Preempted, RunLocked
from ..hashing import sha256
from ..layout import DataPaths, RunPaths
from ..records import RunRecord
from . import checkpoint
from .launch import accelerator, whereabouts
from .model import build_model, param_counts, use_bf16
from .optim import lr_at, make_optimizer, set_lr
from .spec import RunSpec

LOG_FIELDS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "data_pass"]


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

    def data_pass(self, step: int) -> int:
        """1 while the batch of `step` is within the first pass over the data, 2 in the second, ..."""
        return (step * self.b - 1) // self.n + 1


class Batches:
    """This process' share of the global batch for a step, as micro-batches."""

    def __init__(self, spec: RunSpec, data: TokenData, rank: int, world: int, device):
        if spec.batch_size % world:
            raise DataError(f"train.batch_size {spec.batch_size} is not divisible by the {world} processes")
        per_rank = spec.batch_size // world
        self.micro = min(spec.micro_batch_size or per_rank, per_rank)
        if per_rank % self.micro:
            raise DataError(f"train.micro_batch_size {self.micro} does not divide the per-process batch {per_rank}")
        self.data, self.device = data, device
        self.order = BatchOrder(data.train_sequences, spec.batch_size, spec.data_seed)
        needed = spec.steps * spec.batch_size
        if needed > data.train_sequences and not spec.allow_repeat:
            raise DataError(f"data: training needs {needed:,} sequences, {needed / data.train_sequences:.2f} passes over the "
                            f"{data.train_sequences:,} prepared ({data.root}); prepare more (data.max_tokens, a larger corpus) "
                            "or set data.allow_repeat: true")
        self.mine = slice(rank * per_rank, (rank + 1) * per_rank)
        self.accum = per_rank // self.micro

    def __call__(self, step: int) -> list[torch.Tensor]:
        rows = self.order.rows(step)[self.mine]
        batch = torch.from_numpy(self.data.train_batch(rows).astype(np.int64)).to(self.device)
        return [batch[i * self.micro : (i + 1) * self.micro] for i in range(self.accum)]


def read_log(path) -> list[dict]:
    """The rows of a training log up to the first damaged one: a torn or unterminated last line, a
    NUL-filled tail (a crash before the file system wrote the data), a row whose fields do not
    parse, or a step out of sequence. What follows a damaged row cannot be trusted."""
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        return []
    if lines[0].strip() != ",".join(LOG_FIELDS):
        return []
    rows = []
    for line in lines[1:-1]:  # the part after the last newline is torn (or empty)
        parts = line.rstrip("\r").split(",")
        try:
            ok = len(parts) == len(LOG_FIELDS) and int(parts[0]) == len(rows) + 1 and "\x00" not in line
            ok = ok and all(math.isfinite(float(v)) for v in parts[1:])
        except ValueError:
            ok = False
        if not ok:
            break
        rows.append(dict(zip(LOG_FIELDS, parts)))
    return rows


class TrainLog:
    """CSV training log that survives crashes: buffered, flushed and fsynced every few steps and
    before every checkpoint is marked complete, and rewritten to exactly the steps up to the one
    training resumes from, so no step is missing or appears twice."""

    def __init__(self, path, rows: list[dict]):
        self.path, self.buffer = path, []
        out = io.StringIO()
        w = csv.DictWriter(out, LOG_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic.write_text(path, out.getvalue())

    def append(self, row: dict) -> None:
        self.buffer.append(row)

    def flush(self) -> None:
        if self.buffer:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, LOG_FIELDS, lineterminator="\n").writerows(self.buffer)
                f.flush()
                os.fsync(f.fileno())
            self.buffer = []


class RunLock:
    """An exclusive lock on a run (fcntl on state/lock, held while training): a second trainer of
    the same run, started by hand beside the workflow or by a requeue race, fails at once and
    names the holder, instead of interleaving its log with the first one's."""

    def __init__(self, path):
        self.path, self.file = path, None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:  # closing the file releases the lock
            self.file.close()
            self.file = None

    def acquire(self, run: str) -> None:
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunLocked(f"run {run} is already being trained by {holder} (lock {self.path}); "
                            "wait for it or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self.file = f


class StopFlag:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) ask the loop to save and exit after this step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._set)

    def _set(self, signum, frame):
        self.requested = True


def take_run(spec: RunSpec, acc, paths: RunPaths, ckpt: checkpoint.Checkpointer, lock: RunLock) -> tuple[list[dict], int]:
    """The main process locks the run (the caller holds the lock while it trains), removes what
    killed saves left, refuses a run that diverged before, and reads the log (its intact rows);
    every process learns how many there are."""
    rows, error = [], None
    if acc.is_main_process:
        try:
            lock.acquire(spec.name)
            if paths.diverged.exists():
                raise Diverged(f"run {spec.name} diverged before ({paths.diverged}: {paths.diverged.read_text().strip()}); "
                               f"it would diverge again from the same checkpoint: change the run, or delete {spec.run_dir}")
            ckpt.remove_stale()
            rows = read_log(paths.live_log)
        except (RunLocked, Diverged) as e:
            error = e
    logged = _from_main(acc, -1 if error else len(rows))
    if logged < 0:
        if error:
            raise error
        sys.exit(1)  # the main process reports why
    return rows, logged


def finish_run(spec: RunSpec, paths: RunPaths, counts: dict, vocab: int, ranks: list[dict], bf16: bool) -> RunRecord:
    """The complete log beside run.json, the workflow's markers, and run.json itself."""
    checkpoint.Checkpointer(spec, counts).mark_all()
    atomic.write_text(paths.train_log, paths.live_log.read_text())
    record = RunRecord(run=spec.name, size=spec.size.name, seed=spec.seed, **counts, vocab_size=vocab,
                       d_model=spec.size.d_model, n_layers=spec.size.n_layers, n_heads=spec.size.n_heads, steps=spec.steps,
                       tokens_per_step=spec.batch_size * spec.seq_len, processes=len(ranks), ranks=ranks,
                       precision="bf16" if bf16 else "fp32", data_manifest_sha256=sha256(DataPaths(spec.data_dir).manifest),
                       spec=spec.to_dict())
    record.write(paths.run_json)
    return record


def train(spec: RunSpec, after_checkpoint=None) -> RunRecord | None:
    """Train (or resume) one run; its RunRecord on the main process, None on the others.

    `after_checkpoint`, on every process: `.catch_up(acc)` once before training, then
    `(step, model, acc)` right after each scheduled checkpoint is written (the workflow evaluates
    it there, analysis.evaluate.Evaluator); it must not touch the random number generators."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    bf16 = use_bf16(spec.precision)
    acc, paths = accelerator(bf16), RunPaths(spec.run_dir)
    paths.state.mkdir(parents=True, exist_ok=True)
    data = TokenData.open(spec.data_dir)  # checked before anything is built
    data.check_for_model(data.model_vocab_size, spec.size.context, spec.seq_len)
    batches = Batches(spec, data, acc.process_index, acc.num_processes, acc.device)
    model = build_model(spec.size, data.model_vocab_size, spec.seed, data.manifest["tokenizer"]["eos_token_id"])
    counts = param_counts(model)
    optimizer = make_optimizer(model, spec)
    ckpt = checkpoint.Checkpointer(spec, counts)
    with RunLock(paths.lock) as lock:  # held until training ends
        rows, logged = take_run(spec, acc, paths, ckpt, lock)
        start = ckpt.resume(model, optimizer, logged)
        if start and acc.is_main_process:
            print(f"{spec.name}: resuming from checkpoint {paths.checkpoint(start)} at step {start}", file=sys.stderr)
        model.tie_weights()
        model, optimizer = acc.prepare(torch.compile(model) if spec.compile else model, optimizer)
        if after_checkpoint is not None:
            after_checkpoint.catch_up(acc)
        log = TrainLog(paths.live_log, rows[:start]) if acc.is_main_process else None
        stop, tokens_per_step = StopFlag(), spec.batch_size * spec.seq_len
        save = lambda step, kind: save_everywhere(acc, ckpt, log, model, optimizer, step, kind)  # noqa: E731
        model.train()
        bar = tqdm(range(start + 1, spec.steps + 1), initial=start, total=spec.steps, desc=spec.name,
                   disable=not acc.is_main_process, mininterval=1.0)
        t_last = time.perf_counter()
        for step in bar:
            # determine and set the learning rate for this update
            lr = set_lr(optimizer, lr_at(spec, step))
            # forward, backward, update (never with a non-finite loss or gradient: stop, keep the last good checkpoint)
            loss, grad_norm = update(acc, model, optimizer, batches(step), spec.grad_clip)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                diverged(spec, paths, log, step, loss, grad_norm)
            # logging
            now = time.perf_counter()
            tps, t_last = tokens_per_step / max(now - t_last, 1e-9), now
            if acc.is_main_process:
                log.append({"step": step, "tokens": step * tokens_per_step, "loss": f"{loss:.6f}", "lr": f"{lr:.6g}",
                            "grad_norm": f"{grad_norm:.6g}", "tokens_per_s": f"{tps:.1f}", "data_pass": batches.order.data_pass(step)})
                if step % spec.flush_every == 0:
                    log.flush()
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            # checkpointing and termination (pre-emption: save, exit 75, be retried)
            if step in ckpt.scheduled:
                save(step, "final" if step == spec.steps else "scheduled")
                if after_checkpoint is not None:
                    after_checkpoint(step, acc.unwrap_model(model), acc)
                    t_last = time.perf_counter()  # the next step's throughput leaves the evaluation out
            if _any_rank(acc, stop.requested) and step < spec.steps:
                if step not in ckpt.scheduled:
                    save(step, "resume")
                bar.close()
                raise Preempted(f"{spec.name}: stop requested; saved step {step}, exiting {Preempted.exit_code} to be retried")
        bar.close()
        result, ranks = None, gather_object([whereabouts(acc.process_index)])
        if acc.is_main_process:
            log.flush()
            result = finish_run(spec, paths, counts, data.model_vocab_size, ranks, bf16)
        acc.wait_for_everyone()
        return result


def save_everywhere(acc, ckpt, log, model, optimizer, step: int, kind: str) -> None:
    """All processes reach the step; the main one flushes the log and writes the checkpoint."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        log.flush()
        ckpt.save(step, kind, acc.unwrap_model(model), optimizer)
    acc.wait_for_everyone()


def update(acc, model, optimizer, micro: list[torch.Tensor], grad_clip: float | None) -> tuple[float, float]:
    """One optimizer update over micro-batches (gradients accumulated, synced on the last one);
    returns the batch's mean loss over all processes and the gradient norm before clipping. With a
    non-finite loss or gradient norm (the same on every process) no update is made."""
    loss_sum = torch.zeros((), device=acc.device)
    for i, x in enumerate(micro):
        with acc.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext(), acc.autocast():
            loss = model(input_ids=x, labels=x).loss / len(micro)
            acc.backward(loss)
        loss_sum += loss.detach()
    grad_norm = float(acc.clip_grad_norm_(model.parameters(), grad_clip or float("inf")))
    loss_val = acc.reduce(loss_sum, "mean").item() if acc.num_processes > 1 else loss_sum.item()
    if math.isfinite(loss_val) and math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_val, grad_norm


def diverged(spec: RunSpec, paths: RunPaths, log, step: int, loss: float, grad_norm: float):
    """Stop a run whose loss or gradient is no longer finite, so that it does not burn its
    allocation; the log keeps the good steps and state/diverged.json says what happened."""
    last = max(checkpoint.complete_steps(paths), default=0)
    if log is not None:
        log.flush()
        atomic.write_json(paths.diverged, {"step": step, "loss": str(loss), "grad_norm": str(grad_norm),
                                           "last_checkpoint": last})
    raise Diverged(f"run {spec.name}: non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step} "
                   f"(loss {loss}, gradient norm {grad_norm}); stopped without updating, last good checkpoint: step {last}")


def _from_main(acc, value: int) -> int:
    """The main process' value, on every process."""
    if acc.num_processes == 1:
        return value
    return int(acc.reduce(torch.tensor(value if acc.is_main_process else 0, device=acc.device), "sum").item())


def _any_rank(acc, flag: bool) -> bool:
    """Whether any process was asked to stop, so that all of them stop at the same step."""
    if acc.num_processes == 1:
        return flag
    return acc.reduce(torch.tensor(float(flag), device=acc.device), "sum").item() > 0
