"""Delta t = 1: one optimizer step from a checkpoint, and the gradient view of its interference.

From checkpoint t (model + optimizer state) take exactly one AdamW step on a held-out training
batch with the full-batch mean gradient and no clipping, and measure the per-token loss changes on
that batch and on the evaluation set. Repeated for every held-out batch.

Precision, on a GPU: the step's forward pass runs in bf16 autocast with an fp32 loss, as training
does, so the step is the one training would take; weights, gradients and the AdamW update stay in
fp32 (the reference casts the weights to bf16, which would round away most of one step). Every
per-token loss that enters a difference is computed in fp32: one step changes a token's loss by
~1e-2 nats, the size of bf16's rounding of a logit. On a CPU everything is fp32. All forward and
backward passes are micro-batched (zsl batch_size = evaluate.batch_size sequences), so memory is
bounded by the micro-batch, not by the 512-sequence batch: the full-batch mean gradient is
accumulated, and the JVP prediction is computed micro-batch by micro-batch.

Gradient view: the first-order prediction dl_i = grad l_i . dtheta for every token at once is one
Jacobian-vector product (forward-mode AD), instead of one backward pass per token. Coordinate-wise
interference needs per-token gradients: one forward pass per sequence, its backward vmapped over
the sequence's positions, for models small enough.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, jvp, vjp, vmap

from ..data.tokens import TokenData
from ..errors import CheckpointError
from ..layout import RunPaths
from ..train import checkpoint
from ..train.model import compute_device, load_model, token_losses, use_bf16
from ..train.optim import lr_at, make_optimizer, set_lr
from ..train.spec import RunSpec
from . import losses, olmo, suites, zsl
from .evaluate import per_token_losses
from .options import ZslOptions
from .revisions import OLMO, OLMO_STATE_FILE


@dataclass(frozen=True)
class Setting:
    """Where and how the analysis computes: device, micro-batch (sequences), bf16 for the step."""

    device: torch.device
    micro: int
    bf16: bool

    @classmethod
    def for_start(cls, start: "Start", micro: int) -> "Setting":
        device = compute_device()  # bf16 only on a GPU: on a CPU everything is fp32
        return cls(device, micro, start.bf16 and device.type == "cuda")

    def step_autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def fp32():
    return torch.autocast("cpu", enabled=False)


@dataclass
class Start:
    """Where a replay starts, whoever wrote the checkpoint: its model in fp32, a fresh optimizer
    with its state for a copy of that model, the rate of the next update, the table's keys."""

    model: torch.nn.Module
    optimizer_for: Callable[[torch.nn.Module], object]
    lr: float
    lr_note: str
    keys: dict  # run, size, seed
    bf16: bool  # the step's forward pass in bf16 autocast, as training took it (GPUs only)


def next_rate(lr_next: float, peak: float) -> tuple[float, str]:
    """The rate of the update after a checkpoint; a zero rate (the end of a decay) is replaced by
    the peak rate, as the reference does, and said so."""
    if lr_next == 0:
        return peak, "zero learning rate at this step replaced by the peak rate"
    return lr_next, ""


def load_for_step(ckpt: Path) -> Start:
    """A checkpoint of ours: model with training's attention kernel, the run's own optimizer."""
    state, opt_state, _ = checkpoint.load_training_state(ckpt)
    spec = RunSpec.from_dict(state["spec"])
    model = load_model(ckpt, dtype=torch.float32)

    def optimizer_for(m):
        optimizer = make_optimizer(m, spec)
        try:
            optimizer.load_state_dict(opt_state)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"checkpoint {ckpt}: optimizer.pt does not fit the model ({type(e).__name__}: {e})") from None
        return optimizer

    optimizer_for(model)  # a state that does not fit fails here, before any compute
    step = RunPaths.step_of(ckpt)
    lr, note = next_rate(lr_at(spec, step + 1), spec.lr)
    keys = {"run": spec.name, "size": spec.size.name, "seed": spec.seed}
    return Start(model, optimizer_for, lr, note, keys, use_bf16(spec.precision))


def load_olmo_for_step(revision) -> Start:
    """A suite revision in OLMo's unsharded format, with its optimizer state (analysis/olmo.py)."""
    suite, record = suites.read_revision(revision)
    path, step = Path(record["path"]), record["step"]
    if record.get("format") != OLMO or not (path / OLMO_STATE_FILE).is_file():
        raise CheckpointError(f"suites.{suite.name}: revision {record['revision']} has no optimizer state "
                              f"({OLMO} with {OLMO_STATE_FILE}); list its step in the suite's dt1_steps")
    cfg = olmo.OlmoConfig.read(path)
    olmo.check_global_step(path, step, f"suites.{suite.name}: revision {record['revision']}")
    if cfg.dropout > 0:
        raise CheckpointError(f"{path / 'config.yaml'}: trained with dropout {cfg.dropout}; the replayed step takes none")
    model = olmo.load_model(path)
    names_of, state = olmo.optimizer_state(path, model)
    lr, note = next_rate(cfg.schedule.lr_at(step + 1), cfg.schedule.lr)
    keys = {"run": suite.name, "size": suite.size, "seed": suite.seed}
    return Start(model, lambda m: olmo.make_optimizer(m, names_of, state), lr, note, keys, "bf16" in cfg.precision)


def one_step(model, optimizer, batch: torch.Tensor, lr: float, micro: int | None = None,
             autocast=contextlib.nullcontext) -> None:
    """Exactly one update with the full-batch mean gradient (accumulated over micro-batches of
    `micro` sequences, each weighted by its share of the batch), no clipping, at rate `lr`."""
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    accumulate_gradient(model, batch, micro, autocast)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def accumulate_gradient(model, batch: torch.Tensor, micro: int | None = None, autocast=contextlib.nullcontext) -> None:
    """Add the batch's mean-loss gradient to the parameters' .grad, micro-batch by micro-batch,
    each weighted by its share of the batch; the model is left in eval mode."""
    model.train()
    m = micro or len(batch)
    for i in range(0, len(batch), m):
        x = batch[i : i + m]
        with autocast():
            loss = model(input_ids=x, labels=x).loss
        (loss.float() * (len(x) / len(batch))).backward()
    model.eval()


@contextlib.contextmanager
def eager_attention(model):
    """Forward-mode AD and vmap(grad) need eager attention: fused SDPA kernels have no forward-mode
    derivative. Only these passes use it; in the step's backward pass eager attention would keep
    every layer's (heads, seq, seq) probabilities, twice the activation memory of SDPA at seq 1024
    (benchmarks/onestep_memory.py)."""
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        yield
    finally:
        model.config._attn_implementation = impl


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def jvp_predictions(model, batch: torch.Tensor, delta: dict[str, torch.Tensor], micro: int | None = None) -> torch.Tensor:
    """Predicted per-token loss changes grad l_i . dtheta, shape (batch, seq_len - 1), one
    forward-mode pass per micro-batch."""
    m = micro or len(batch)
    with eager_attention(model):
        return torch.cat([_jvp(model, batch[i : i + m], delta) for i in range(0, len(batch), m)])


def _jvp(model, batch: torch.Tensor, delta: dict[str, torch.Tensor]) -> torch.Tensor:
    params = {n: p.detach() for n, p in trainable(model).items()}
    frozen = {n: t for n, t in list(model.named_parameters()) + list(model.named_buffers()) if n not in params}

    def f(p):
        return token_losses(_Bound(model, {**frozen, **p}), batch)

    _, tangent = jvp(f, (params,), ({n: delta[n] for n in params},))
    return tangent


class _Bound:
    """Call `model` with substituted tensors (torch.func.functional_call), as token_losses expects."""

    def __init__(self, model, tensors):
        self.model, self.tensors = model, tensors

    def __call__(self, **kwargs):
        return functional_call(self.model, self.tensors, args=(), kwargs=kwargs, tie_weights=True)


def per_position_predictions(model, batch: torch.Tensor, delta: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference method: one backward pass per sequence position, then dot with dtheta."""
    params = trainable(model)
    losses_ = token_losses(model, batch)
    out = torch.zeros_like(losses_)
    names = list(params)
    for b in range(losses_.shape[0]):
        for s in range(losses_.shape[1]):
            g = torch.autograd.grad(losses_[b, s], [params[n] for n in names], retain_graph=True, allow_unused=True)
            out[b, s] = sum((gi * delta[n]).sum() for gi, n in zip(g, names) if gi is not None)
    return out.detach()


def coordinate_interference(model, batch: torch.Tensor, delta: dict[str, torch.Tensor], n_tokens: int | None,
                            chunk: int = 16, max_floats: int = 1 << 25) -> dict[str, float]:
    """C_g and D(grad) over non-embedding coordinates from per-token gradients, over all tokens of
    the batch (or n_tokens of them), each beside its sign-shuffled baseline: the same per-token
    terms with random signs, which is what the measure reads when the tokens' pushes on a
    coordinate are unrelated. Only a measure below its baseline shows interference beyond chance.

    Per-token gradients share their sequence's forward pass and skip the unembedding: one
    `torch.func.vjp` of the decoder body per sequence; the loss gradient at each position's final
    hidden state, for all positions in one backward pass through the (frozen, tied) unembedding;
    then the body's pull-back vmapped over one-hot rows of those gradients, `chunk` positions at a
    time (16 was fastest here) and at most `max_floats` gradient values (128 MB). Re-running each token's sequence forward and backward
    (vmap of grad) gives the same numbers several times slower (benchmarks: per_token_gradients)."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    prefix = next(n for n, m in model.named_modules() if m is decoder) + "."
    emb = model.get_input_embeddings().weight
    named = {n: p.detach() for n, p in trainable(model).items() if p is not emb}
    if any(not n.startswith(prefix) for n in named) or head.weight is not emb:
        raise CheckpointError("coordinate interference: needs tied embeddings and every other parameter in the decoder body")
    params = {n[len(prefix):]: p for n, p in named.items()}
    frozen = {n: t.detach() for n, t in list(decoder.named_parameters()) + list(decoder.named_buffers()) if n not in params}
    b, s = batch.shape[0], batch.shape[1] - 1
    rng = np.random.default_rng(0)
    flat = rng.choice(b * s, size=b * s if n_tokens is None else min(n_tokens, b * s), replace=False)
    signs = torch.as_tensor(rng.choice([-1.0, 1.0], size=len(flat)), dtype=torch.float32, device=batch.device)
    chunk = max(1, min(chunk, max_floats // max(1, sum(p.numel() for p in params.values()))))

    def hidden(p, x):
        return functional_call(decoder, {**frozen, **p}, args=(), kwargs={"input_ids": x[None]}).last_hidden_state[0]

    sums = {k: {n: torch.zeros_like(p) for n, p in params.items()} for k in ("p", "p_shuf", "abs_p", "g", "g_shuf", "abs_g")}
    with eager_attention(model):
        for seq in np.unique(flat // s):
            x = batch[seq]
            h, pull = vjp(lambda p: hidden(p, x), params)
            h = h.detach()[:-1].requires_grad_()
            loss = -head(h).float().log_softmax(-1).gather(-1, x[1:, None]).sum()
            dh = torch.autograd.grad(loss, h)[0]  # row i: the gradient of token i's loss at its own hidden state
            mine = np.flatnonzero(flat // s == seq)
            for i in range(0, len(mine), chunk):
                at = mine[i : i + chunk]
                pos = torch.as_tensor(flat[at] % s, device=batch.device)
                rows = torch.zeros(len(at), s + 1, dh.shape[1], dtype=dh.dtype, device=dh.device)
                rows[torch.arange(len(at)), pos] = dh[pos]
                g = vmap(pull)(rows)[0]
                sign = signs[at]
                for n in params:
                    p, shape = g[n] * delta[prefix + n], (-1,) + (1,) * (g[n].dim() - 1)
                    sums["p"][n] += p.sum(0)
                    sums["p_shuf"][n] += (p * sign.view(shape)).sum(0)
                    sums["abs_p"][n] += p.abs().sum(0)
                    sums["g"][n] += g[n].sum(0)
                    sums["g_shuf"][n] += (g[n] * sign.view(shape)).sum(0)
                    sums["abs_g"][n] += g[n].abs().sum(0)
    flat_sum = {k: torch.cat([v.ravel() for v in d.values()]) for k, d in sums.items()}
    den, live = flat_sum["abs_p"].sum(), flat_sum["abs_g"] > 0

    def c_g(key):
        return float(flat_sum[key].abs().sum() / den) if den > 0 else float("nan")

    def d_grad(key):
        return float((1 - flat_sum[key][live].abs() / flat_sum["abs_g"][live]).mean())

    return {"C_g": c_g("p"), "C_g_shuffled": c_g("p_shuf"), "D_grad": d_grad("g"), "D_grad_shuffled": d_grad("g_shuf"),
            "coord_tokens": int(len(flat)), "coord_params": int(sum(p.numel() for p in params.values()))}


def _measure_batch(k: int, start: Start, data: TokenData, eval_before, options: ZslOptions, at: Setting):
    """One optimizer step on held-out batch k: measured changes per split, their rows, gradient-view info."""
    tokens, ids = data.heldout_batch(k)
    batch = torch.from_numpy(tokens.astype(np.int64)).to(at.device)
    model = copy.deepcopy(start.model)
    optimizer = start.optimizer_for(model)
    before = per_token_losses(model, tokens, at.micro, at.device, fp32)
    theta0 = {n: p.detach().clone() for n, p in trainable(model).items()}
    one_step(model, optimizer, batch, start.lr, at.micro, at.step_autocast)
    after = per_token_losses(model, tokens, at.micro, at.device, fp32)
    eval_after = per_token_losses(model, np.asarray(data.split("eval")), at.micro, at.device, fp32)
    delta = {n: p.detach() - theta0[n] for n, p in trainable(model).items()}
    del model, optimizer
    measured = {"heldout": (ids, after - before), "eval": (data.example_ids("eval"), eval_after - eval_before)}
    info, pred = {"batch": k}, None
    if options.gradient_view:
        pred, more = _gradient_view(copy.deepcopy(start.model), batch, delta, measured["heldout"][1], options, at.micro)
        info.update(more)
    return measured, pred, info


def _gradient_view(model, batch, delta, measured: np.ndarray, options: ZslOptions, micro: int) -> tuple[np.ndarray, dict]:
    pred = jvp_predictions(model, batch, delta, micro).detach().cpu().numpy()
    x = measured.ravel()
    info = {"pred_corr": float(np.corrcoef(pred.ravel(), x)[0, 1]), "D_pred": zsl.metrics(pred)["D"],
            "D_measured": zsl.metrics(x)["D"]}
    n_ne = sum(p.numel() for p in trainable(model).values()) - model.get_input_embeddings().weight.numel()
    if n_ne <= options.coordinate_max_params:
        info.update(coordinate_interference(model, batch, delta, options.coordinate_tokens))
    else:
        info["coord_skipped"] = (f"{n_ne:,} non-embedding parameters exceed zsl.coordinate_max_params "
                                 f"({options.coordinate_max_params:,}): per-token gradients would not fit in memory")
    return pred, info


def _change_rows(k: int, measured: dict, pred) -> pd.DataFrame:
    frames = []
    for split, (sids, dl) in measured.items():
        example_id, position = losses.token_index(sids, dl.shape[1])
        predicted = pred.ravel() if split == "heldout" and pred is not None else np.full(dl.size, np.nan)
        frames.append(pd.DataFrame({"batch": np.full(dl.size, k, np.int32), "split": split, "example_id": example_id,
                                    "position": position, "delta": dl.ravel().astype(np.float32),
                                    "predicted": predicted.astype(np.float32)}))
    return pd.concat(frames, ignore_index=True)


def _summarise(rows: list[dict], extra: list[dict], start: Start, step: int) -> pd.DataFrame:
    keys = {**start.keys, "step": step, "step_next": step + 1, "dt": 1, "variant": "dt=1"}
    agg = zsl.batch_means(rows, keys, len(extra))
    ex = pd.DataFrame(extra)
    for col in [c for c in ex.columns if c != "batch" and ex[c].dtype != object]:
        agg[f"{col}_mean"] = float(ex[col].mean())
    if "coord_skipped" in ex:
        agg["coord_skipped"] = ex["coord_skipped"].iloc[0]
    agg["lr"] = start.lr
    agg["lr_note"] = start.lr_note
    return agg


def dt1_analysis(run_dir, step: int, data_dir, out, changes, options: ZslOptions | None = None) -> pd.DataFrame:
    """Delta t = 1 at checkpoint `step` of a run: the metrics table at `out`, the per-token changes
    as the (run, step) partition of the dataset `changes`."""
    ckpt = RunPaths(run_dir).checkpoint(step)
    if not (ckpt / "optimizer.pt").exists():
        raise CheckpointError(f"checkpoint {ckpt}: no optimizer state; list step {step} in zsl.dt1_steps before training")
    data = _heldout_data(data_dir)
    return replay(load_for_step(ckpt), step, data, out, changes, options)


def suite_dt1_analysis(revision, data_dir, out, changes, options: ZslOptions | None = None) -> pd.DataFrame:
    """Delta t = 1 at a suite revision that carries its optimizer state (OLMo's unsharded format)."""
    data = _heldout_data(data_dir)
    start = load_olmo_for_step(revision)
    return replay(start, suites.read_revision(revision)[1]["step"], data, out, changes, options)


def _heldout_data(data_dir) -> TokenData:
    data = TokenData.open(data_dir)
    if data.manifest["heldout_batches"] == 0:
        raise CheckpointError("data: no held-out batches (data.heldout_batches is 0); the one-step analysis needs them")
    return data


def replay(start: Start, step: int, data: TokenData, out, changes, options: ZslOptions | None = None) -> pd.DataFrame:
    """One real optimizer step from `start` on every held-out batch: per-token changes on that
    batch and on the evaluation set, their ZSL metrics, and the gradient view where asked."""
    options = options or ZslOptions.defaults()
    at = Setting.for_start(start, options.batch_size)
    start.model.to(at.device)
    eval_before = per_token_losses(start.model, np.asarray(data.split("eval")), at.micro, at.device, fp32)
    rows, changes_rows, extra = [], [], []
    for k in range(data.manifest["heldout_batches"]):
        measured, pred, info = _measure_batch(k, start, data, eval_before, options, at)
        extra.append(info)
        changes_rows.append(_change_rows(k, measured, pred))
        for split, (_, dl) in measured.items():
            for gran, vals in (("token", dl.ravel()), ("sequence", dl.mean(axis=1))):
                rows.append({"batch": k, "split": split, "granularity": gran, **zsl.metrics(vals)})
    agg = _summarise(rows, extra, start, step)
    zsl.write_table(agg, out)
    rows_ = pd.concat(changes_rows, ignore_index=True)
    losses.write_partition(changes, start.keys["run"], step, {c: rows_[c].to_numpy() for c in rows_.columns}, "changes")
    return agg


# ----------------------------------------------------------------------------- suites: the gradient-direction view


def unit(direction: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    norm = torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values()))
    return {n: d / norm.to(d.dtype) for n, d in direction.items()}


def direction_analysis(revision, data_dir, out, options: ZslOptions | None = None) -> pd.DataFrame:
    """What a step would do without the optimizer state that suites do not publish: on each
    held-out batch, the first-order (JVP) per-token loss change along the batch's negative mean
    gradient and along its sign (Adam's first steps move every coordinate by the same amount), on
    that batch and on the evaluation set. D is scale-free; M and |dL| are per unit L2 distance in
    parameter space. This is a gradient-direction measurement, not the Δt = 1 replay of a real step."""
    options = options or ZslOptions.defaults()
    suite, record = suites.read_revision(revision)
    step = record["step"]
    data = TokenData.open(data_dir)
    if data.manifest["heldout_batches"] == 0:
        raise CheckpointError("data: no held-out batches (data.heldout_batches is 0); the gradient view needs them")
    device = compute_device()
    model = suites.load(record).to(device).eval()
    eval_tokens = torch.from_numpy(np.asarray(data.split("eval"), dtype=np.int64)).to(device)
    rows = []
    for k in range(data.manifest["heldout_batches"]):
        tokens, _ = data.heldout_batch(k)
        batch = torch.from_numpy(tokens.astype(np.int64)).to(device)
        model.zero_grad(set_to_none=True)
        accumulate_gradient(model, batch, options.batch_size)
        g = {n: p.grad.detach().clone() for n, p in trainable(model).items() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        for variant, direction in (("grad-direction", unit({n: -v for n, v in g.items()})),
                                   ("sign-direction", unit({n: -torch.sign(v) for n, v in g.items()}))):
            full = {n: direction.get(n, torch.zeros_like(p)) for n, p in trainable(model).items()}
            for split, x in (("heldout", batch), ("eval", eval_tokens)):
                pred = jvp_predictions(model, x, full, options.batch_size).detach().cpu().numpy().astype(np.float64)
                for gran, vals in (("token", pred.ravel()), ("sequence", pred.mean(axis=1))):
                    rows.append({"variant": variant, "split": split, "granularity": gran, **zsl.metrics(vals)})
    keys = {"run": suite.name, "size": suite.size, "seed": suite.seed, "step": step, "step_next": step, "dt": 0}
    agg = zsl.batch_means(rows, keys, data.manifest["heldout_batches"])
    zsl.write_table(agg, out)
    return agg
