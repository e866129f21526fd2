"""Per-token losses of one checkpoint on the evaluation set and the held-out training batches.

Runs in inference mode; bf16 autocast on GPUs with the loss accumulated in fp32. Under several
processes (accelerate launch) each takes a contiguous, unpadded share of the sequences and the main
process gathers them, so every example appears exactly once.

The workflow evaluates a trained run's checkpoints inside its training process, right after each
is written (`Evaluator`): a tiny model's evaluation takes a fraction of a second, while a separate
job per checkpoint spent ten seconds starting Python and importing torch and transformers.
`scaledyn evaluate` evaluates a checkpoint on its own (by hand, or to re-evaluate).
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from ..data.tokens import TokenData
from ..errors import CheckpointError
from ..layout import GRANULARITIES, LossesPaths, RunPaths, checked_name
from ..train import checkpoint
from ..train.launch import accelerator
from ..train.model import load_model, token_losses
from . import losses
from .options import EvaluateOptions


def per_token_losses(model, tokens: np.ndarray, batch_size: int, device, autocast, desc: str = "") -> np.ndarray:
    """(n, seq_len - 1) float32 losses for `tokens` (n, seq_len)."""
    out = np.empty((len(tokens), tokens.shape[1] - 1), dtype=np.float32)
    with torch.inference_mode():
        for i in tqdm(range(0, len(tokens), batch_size), desc=desc, leave=False, disable=not desc):
            x = torch.from_numpy(np.asarray(tokens[i : i + batch_size], dtype=np.int64)).to(device)
            with autocast():
                out[i : i + len(x)] = token_losses(model, x).cpu().numpy()
    return out


def _columns(split_losses: dict, meta: dict, token_dtype: str) -> tuple[dict, dict]:
    """Column arrays of the sequences and tokens files (run and step are added by the writer)."""
    seq = {k: [] for k in ("size", "seed", "tokens_seen", "split", "example_id", "loss", "n_tokens")}
    tok = {k: [] for k in ("split", "example_id", "position", "loss")}
    for split, (ids, loss) in split_losses.items():
        n, s = loss.shape
        seq["size"] += [meta["size"]] * n
        seq["seed"].append(np.full(n, meta["seed"], np.int32))
        seq["tokens_seen"].append(np.full(n, meta["tokens_seen"], np.int64))
        seq["split"] += [split] * n
        seq["example_id"].append(ids)
        seq["loss"].append(loss.mean(axis=1, dtype=np.float64).astype(np.float32))
        seq["n_tokens"].append(np.full(n, s, np.int32))
        example_id, position = losses.token_index(ids, s)
        tok["split"] += [split] * (n * s)
        tok["example_id"].append(example_id)
        tok["position"].append(position)
        tok["loss"].append(loss.reshape(-1).astype(token_dtype))
    cat = lambda v: v if isinstance(v, list) and (not v or isinstance(v[0], str)) else np.concatenate(v)  # noqa: E731
    return {k: cat(v) for k, v in seq.items()}, {k: cat(v) for k, v in tok.items()}


def evaluate_checkpoint(run_dir, step: int, data_dir, out, options: EvaluateOptions | None = None, study: str = "",
                        force: bool = False, acc=None) -> bool:
    """Write the (run, step) partitions of the loss dataset rooted at `out`; False when they exist.
    `acc`: as for evaluate_model."""
    ckpt = RunPaths(run_dir).checkpoint(step)
    state = _complete_state(ckpt)
    if not force and all(LossesPaths(out).partition(g, state["run"], step).exists() for g in GRANULARITIES):
        return False
    evaluate_model(lambda: load_model(ckpt), state["run"], step, _meta(state), data_dir, out, options, str(ckpt), acc)
    return True


def _complete_state(ckpt) -> dict:
    """A complete checkpoint's state; its run name goes into output paths, so it is checked first."""
    if not checkpoint.is_complete(ckpt):
        raise CheckpointError(f"checkpoint {ckpt}: missing or incomplete (no {checkpoint.COMPLETE} marker)")
    state = checkpoint.read_state(ckpt)
    checked_name(state.get("run"), f"checkpoint {ckpt}")
    return state


def _meta(state: dict) -> dict:
    return {"size": state["spec"]["size"]["name"], "seed": state["spec"]["seed"], "tokens_seen": state["tokens_seen"]}


class Evaluator:
    """Evaluation of a run's checkpoints from inside its training process (train(after_checkpoint=)),
    on every process of the launch, with training's Accelerator. It first evaluates the complete
    checkpoints of `steps` that have no loss files yet: after a resume, Snakemake has removed the
    files of the failed attempt. The model passed in is the one in memory, so its losses equal
    those of the saved checkpoint without reading it back."""

    def __init__(self, run_dir, steps, data_dir, out, options: EvaluateOptions):
        self.paths, self.steps, self.data_dir, self.out, self.options = RunPaths(run_dir), set(steps), data_dir, out, options

    def catch_up(self, acc) -> None:
        for step in sorted(self.steps):
            if checkpoint.is_complete(self.paths.checkpoint(step)):
                evaluate_checkpoint(self.paths.dir, step, self.data_dir, self.out, self.options, acc=acc)

    def __call__(self, step: int, model, acc) -> None:
        if step in self.steps:
            ckpt = self.paths.checkpoint(step)
            state = _complete_state(ckpt)
            evaluate_model(lambda: model, state["run"], step, _meta(state), self.data_dir, self.out, self.options,
                           str(ckpt), acc)


def evaluate_model(load, run: str, step: int, meta: dict, data_dir, out, options: EvaluateOptions | None,
                   source: str, acc=None) -> None:
    """Losses of the model that `load()` returns on the evaluation set and the held-out batches, as
    the (run, step) partitions of the loss dataset at `out`; `meta` holds size, seed and
    tokens_seen, `source` names the weights in errors. The same for our checkpoints and suites.
    `acc`: the launch's Accelerator (training's, when evaluating from the training process)."""
    options = options or EvaluateOptions.defaults()
    out = LossesPaths(out)
    acc = acc or accelerator(bf16=torch.cuda.is_available())
    if acc.is_main_process:
        for g in GRANULARITIES:
            losses.check_writable(out.dataset(g))
    model = load().to(acc.device)
    was_training = model.training
    model.eval()
    data = TokenData.open(data_dir)
    splits = {"eval": (data.split("eval"), data.example_ids("eval"))}
    if options.heldout and data.manifest["splits"]["heldout"]["sequences"]:
        splits["heldout"] = (data.split("heldout"), data.example_ids("heldout"))
    results = {}
    for name, (tokens, ids) in splits.items():
        with acc.split_between_processes(list(range(len(tokens)))) as mine:
            rows = np.asarray(mine, dtype=np.int64)
            loss = per_token_losses(model, tokens[rows] if len(rows) else tokens[:0], options.batch_size, acc.device,
                                    acc.autocast, desc=f"{run} step {step} {name}" if acc.is_main_process else "")
        parts = gather_object([(rows, loss)]) if acc.num_processes > 1 else [(rows, loss)]
        order = np.concatenate([p[0] for p in parts])
        stacked = np.concatenate([p[1] for p in parts])
        if acc.is_main_process:
            assert len(order) == len(tokens) and len(np.unique(order)) == len(order), "evaluation rows lost or duplicated"
            results[name] = (ids[order], stacked)
    if acc.is_main_process:
        for name, (_, loss) in results.items():
            bad = int(np.sum(~np.isfinite(loss)))
            if bad:
                raise CheckpointError(f"checkpoint {source}: {bad:,} of {loss.size:,} per-token losses on the {name} set are "
                                      "not finite (damaged weights, or a diverged run); nothing written")
        seq, tok = _columns(results, meta, options.token_dtype)
        losses.write_partition(out.dataset("tokens"), run, step, tok, "tokens", options.token_dtype)
        losses.write_partition(out.dataset("sequences"), run, step, seq, "sequences")
        losses.guard(out.dir)
    model.train(was_training)
    acc.wait_for_everyone()
