"""Performance harness: every figure is measured against a baseline run in the same process.

    python -m benchmarks [--quick | --smoke] [--json OUT.json] [--only NAME ...]

--smoke runs every case on the smallest workloads (a test runs it, so that no case rots); its
figures mean nothing.

Writes {"cases": [{"name", "value", "unit", "baseline", "ratio", "note"}]} and prints a table.
These machines are noisy, so read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import replace_block

REPO = Path(__file__).resolve().parents[1]
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def row(name, value, unit, baseline=None, ratio=None, note=""):
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio, "note": note}


class Env:
    """Data and a study shared by the cases, prepared once in a temporary directory."""

    def __init__(self, mode: str = "full"):
        self.mode = mode
        self.quick = mode != "full"
        self.tmp = Path(tempfile.mkdtemp(prefix="scaledyn-bench-"))
        from scaledyn.config import load_study
        from scaledyn.data.prepare import prepare

        self.study = load_study({"results": str(self.tmp / "results"), "model": {"sizes": ["tiny-11k", "tiny-25k"]},
                                 "data": {"max_documents": 200, "tokenizer": {"vocab_size": 2048}, "seq_len": 128,
                                          "eval_sequences": self.pick(1024, 1024, 64), "heldout_batches": 1,
                                          "allow_repeat": True},
                                 "train": {"steps": self.pick(1000, 300, 20), "batch_size": 16, "threads": 1},
                                 "fit": {"transient_steps": 0}})  # nothing is fitted; the config check still asks
        self.data = self.study.layout.data.dir
        prepare(self.study.data, self.data)

    def pick(self, full, quick, smoke):
        """A workload size by mode."""
        return {"full": full, "quick": quick, "smoke": smoke}[self.mode]

    def spec(self, size="tiny-25k", **over):
        spec = self.study.run_spec(f"{size}_s0")
        return dataclasses.replace(spec, run_dir=str(self.tmp / "runs" / f"{size}-{time.time_ns()}"), **over)


@case
def train_vs_bare_loop(env):
    import torch

    from scaledyn.data.tokens import TokenData
    from scaledyn.train.loop import BatchOrder, train
    from scaledyn.train.model import build_model
    from scaledyn.train.optim import lr_at, make_optimizer, set_lr

    torch.set_num_threads(1)
    spec = env.spec()

    def bare():
        data = TokenData.open(spec.data_dir)
        model = build_model(spec.size, data.model_vocab_size, spec.seed)
        optimizer = make_optimizer(model, spec)
        order = BatchOrder(data.train_sequences, spec.batch_size, spec.data_seed)
        model.train()
        for step in range(1, spec.steps + 1):
            set_lr(optimizer, lr_at(spec, step))
            x = torch.from_numpy(data.train_batch(order.rows(step)).astype(np.int64))
            model(input_ids=x, labels=x).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    tokens = spec.steps * spec.batch_size * spec.seq_len
    t_bare = t_ours = float("inf")
    for _ in range(env.pick(3, 3, 1)):  # interleaved, best of three: single runs here vary by +-10%
        t_bare = min(t_bare, timed(bare)[0])
        t_ours = min(t_ours, timed(train, env.spec())[0])
    return [row("train_vs_bare_loop", tokens / t_ours, "tokens/s", tokens / t_bare, t_bare / t_ours,
                f"{spec.size.name}, {spec.steps} steps of 16x128; ours logs every step and saves "
                f"{len(spec.checkpoint_steps)} checkpoints")]


def _step_flops(spec, vocab: int) -> float:
    """Training FLOPs of one step: 6 per parameter per token (the unembedding included: it is the
    largest matmul of a tiny model) plus attention's 12 L T d per token (Kaplan et al. 2020)."""
    size, tokens = spec.size, spec.batch_size * spec.seq_len
    return tokens * (6 * size.total_params(vocab) + 12 * size.n_layers * spec.seq_len * size.d_model)


def _matmul_peak() -> float:
    """FLOP/s of one thread on a 2048 x 2048 fp32 matmul, best of five: the machine's measured peak."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    return 2 * 2048**3 / min(timed(torch.mm, a, b)[0] for _ in range(5))


@case
def train_cpu_options(env):
    """What PyTorch offers a tiny model's training on a CPU, each against today's loop (eager fp32,
    foreach AdamW), one thread, in one process: fused AdamW, torch.compile, bf16 autocast (the CPU
    has native bf16), and compile with bf16; the final loss beside each (bf16 must stay within
    tolerance), and today's FLOP rate against the measured matmul peak."""
    import torch

    from scaledyn.data.tokens import TokenData
    from scaledyn.train.loop import BatchOrder
    from scaledyn.train.model import build_model
    from scaledyn.train.optim import param_groups

    torch.set_num_threads(1)
    spec = env.spec()
    data = TokenData.open(spec.data_dir)
    steps = env.pick(400, 100, 5)
    order = BatchOrder(data.train_sequences, spec.batch_size, spec.data_seed)
    batches = [torch.from_numpy(data.train_batch(order.rows(t)).astype(np.int64)) for t in range(1, steps + 1)]

    def loop(compiled=False, bf16=False, fused=False, threads=1):
        torch.set_num_threads(threads)
        model = build_model(spec.size, data.model_vocab_size, spec.seed)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=spec.lr, fused=fused or None, foreach=None if fused else True)
        f = torch.compile(model) if compiled else model
        model.train()

        def step(x):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = f(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

        t0 = time.perf_counter()
        step(batches[0])  # compilation and first-call set-up are not per-step cost (reported apart)
        t = time.perf_counter()
        losses = [step(x) for x in batches]
        torch.set_num_threads(1)
        return (time.perf_counter() - t) / steps, float(np.mean(losses[-max(1, steps // 10):])), t - t0

    peak = _matmul_peak()
    base_t, base_loss, _ = loop()
    flops = _step_flops(spec, data.model_vocab_size)
    out = [row("train_step_seconds_eager_fp32", base_t, "s", None, None,
               f"today's loop, tiny-25k, 16x128 tokens: {flops / base_t / 1e9:.1f} GFLOP/s = "
               f"{flops / base_t / peak:.0%} of this thread's measured fp32 matmul peak ({peak / 1e9:.0f} GFLOP/s at 2048^2)")]
    for name, kw in (("fused_adamw", {"fused": True}), ("compile", {"compiled": True}), ("bf16_autocast", {"bf16": True}),
                     ("compile_bf16", {"compiled": True, "bf16": True}), ("two_threads", {"threads": 2})):
        t, loss, first = loop(**kw)
        out.append(row(f"train_step_seconds_{name}", t, "s", base_t, base_t / t,
                       f"speed-up over today's loop (ratio); mean loss of the last tenth {loss:.4f} vs {base_loss:.4f}; "
                       f"first step {first:.1f} s" + ("; two threads for one job, where two jobs could each have one"
                                                      if name == "two_threads" else "")))
    return out


@case
def evaluation_startup(env):
    """Evaluating a run's checkpoints inside its training process (the workflow's way) against the
    evaluation alone (the same checkpoints in an already running process), and against what it
    replaced: one `scaledyn evaluate` process per checkpoint, which starts Python and imports
    torch and transformers each time."""
    from scaledyn.analysis.evaluate import Evaluator, evaluate_checkpoint
    from scaledyn.analysis.options import EvaluateOptions
    from scaledyn.train.loop import train

    steps = env.pick(64, 64, 4)
    kept = tuple(2**k for k in range(steps.bit_length()))
    options = EvaluateOptions.defaults()
    plain = env.spec(steps=steps, checkpoint_steps=kept)
    inside = env.spec(steps=steps, checkpoint_steps=kept)
    t_plain, _ = timed(train, plain)
    t_inside, _ = timed(train, inside, Evaluator(inside.run_dir, kept, inside.data_dir, env.tmp / "eval-in", options))
    t_alone = sum(timed(evaluate_checkpoint, plain.run_dir, s, plain.data_dir, env.tmp / "eval-alone", options,
                        force=True)[0] for s in kept)

    def jobs(step_lists):
        return sum(timed(subprocess.run, [sys.executable, "-m", "scaledyn", "evaluate", "--run-dir", plain.run_dir, "--step",
                                          *map(str, s), "--data", plain.data_dir, "--out", str(env.tmp / "eval-jobs"), "--force"],
                         check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})[0] for s in step_lists)

    t_per_checkpoint = jobs([[s] for s in kept])
    t_one_job = jobs([list(kept)])
    n = len(kept)
    return [row("evaluation_in_training_overhead", (t_inside - t_plain) / t_alone, "x", 1.0, (t_inside - t_plain) / t_alone,
                f"aim <= 1.2; {n} checkpoints of tiny-25k, each on {env.study.data.eval_sequences:,} evaluation "
                f"sequences: {t_inside - t_plain:.2f} s added to training vs {t_alone:.2f} s of evaluation alone"),
            row("evaluation_job_per_checkpoint_overhead", t_per_checkpoint / t_alone, "x", 1.0, t_per_checkpoint / t_alone,
                f"the replaced shape: {n} `scaledyn evaluate` processes, {t_per_checkpoint:.1f} s"),
            row("evaluation_one_job_per_run_overhead", t_one_job / t_alone, "x", 1.0, t_one_job / t_alone,
                f"one `scaledyn evaluate --step ...` process for the {n} checkpoints, {t_one_job:.1f} s")]


@case
def checkpoint_save_load(env):
    import torch

    from scaledyn.train import checkpoint
    from scaledyn.train.model import build_model, load_model, param_counts
    from scaledyn.train.optim import make_optimizer

    out = []
    for size in ("tiny-11k", "tiny-25k"):
        spec = env.spec(size)
        model = build_model(spec.size, 2048, 0)
        opt = make_optimizer(model, spec)
        model(input_ids=torch.zeros(1, 8, dtype=torch.long), labels=torch.zeros(1, 8, dtype=torch.long)).loss.backward()
        opt.step()
        t_save, path = timed(checkpoint.Checkpointer(spec, param_counts(model)).save, 1, "scheduled", model, opt)
        t_load, _ = timed(load_model, path)
        size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
        t_raw, _ = timed(torch.save, model.state_dict(), env.tmp / "raw.pt")
        out.append(row(f"checkpoint_save_seconds_{size}", t_save, "s", t_raw, t_save / t_raw,
                       f"{size_mb:.2f} MB with optimizer state; baseline: torch.save of the bare state dict"))
        out.append(row(f"checkpoint_load_seconds_{size}", t_load, "s"))
    return out


def _eval_model(env):
    from scaledyn.train.loop import train

    spec = env.spec("tiny-25k", steps=16, checkpoint_steps=(16,))
    train(spec)
    return spec


@case
def eval_vs_bare_forward(env):
    import torch

    from scaledyn.analysis.evaluate import evaluate_checkpoint
    from scaledyn.analysis.options import EvaluateOptions
    from scaledyn.data.tokens import TokenData
    from scaledyn.layout import RunPaths
    from scaledyn.train.model import load_model

    torch.set_num_threads(1)
    spec = _eval_model(env)
    data = TokenData.open(spec.data_dir)
    ev = np.asarray(data.split("eval"))

    def bare():
        model = load_model(RunPaths(spec.run_dir).checkpoint(16)).eval()
        with torch.inference_mode():
            for i in range(0, len(ev), 64):
                x = torch.from_numpy(ev[i : i + 64].astype(np.int64))
                model(input_ids=x).logits.float().log_softmax(-1)

    out_root = env.tmp / "losses"
    t_bare, _ = timed(bare)
    no_heldout = dataclasses.replace(EvaluateOptions.defaults(), heldout=False)
    t_ours, _ = timed(evaluate_checkpoint, spec.run_dir, 16, spec.data_dir, out_root, no_heldout, force=True)
    n_tok = ev.shape[0] * (ev.shape[1] - 1)
    files = list(out_root.glob("tokens/**/*.parquet"))
    bpt = sum(f.stat().st_size for f in files) / n_tok
    t16, _ = timed(evaluate_checkpoint, spec.run_dir, 16, spec.data_dir, env.tmp / "losses16",
                   dataclasses.replace(no_heldout, token_dtype="float16"))
    bpt16 = sum(f.stat().st_size for f in (env.tmp / "losses16").glob("tokens/**/*.parquet")) / n_tok
    return [
        row("eval_vs_bare_forward", n_tok / t_ours, "tokens/s", n_tok / t_bare, t_bare / t_ours,
            "per-token losses + Parquet writes vs a bare forward pass with log-softmax, same checkpoint"),
        row("bytes_per_token_fp32", bpt, "bytes", 4.0, bpt / 4.0,
            "per-token rows on disk (zstd, with split/example_id/position); baseline: the reference's float32 .pt"),
        row("bytes_per_token_fp16", bpt16, "bytes", 4.0, bpt16 / 4.0, "evaluate.token_dtype: float16"),
    ]


@case
def suite_eval_vs_bare_forward(env):
    """A published suite's revision evaluated by the suite path against a bare forward pass of the
    same weights, in both formats: a GPT-NeoX model saved with save_pretrained (as Pythia's are) and
    an OLMo unsharded checkpoint (as the ZSL authors' are, mapped into our model on loading)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaForCausalLM

    from scaledyn.analysis import olmo, suites
    from scaledyn.analysis.options import EvaluateOptions, Suite
    from scaledyn.data.tokens import TokenData

    torch.set_num_threads(1)
    data = TokenData.open(env.data)
    ev = np.asarray(data.split("eval"))
    vocab = data.manifest["tokenizer"]["vocab_size"]
    torch.manual_seed(0)
    neox = GPTNeoXConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, max_position_embeddings=ev.shape[1], use_cache=False)
    olmo_cfg = {"model": {"d_model": 64, "n_heads": 4, "n_layers": 2, "mlp_ratio": 4, "vocab_size": vocab,
                          "max_sequence_length": ev.shape[1], "rope": True, "layer_norm_type": "rms",
                          "layer_norm_with_affine": False, "include_bias": False, "weight_tying": True,
                          "block_type": "sequential", "activation_type": "swiglu"},
                "optimizer": {"name": "adamw", "learning_rate": 1e-3}}
    out = []
    for fmt, name in (("hf", "suite_eval_vs_bare_forward"), ("olmo-unsharded", "olmo_suite_eval_vs_bare_forward")):
        path = env.tmp / f"suite-{fmt}" / "step16"
        if fmt == "hf":
            GPTNeoXForCausalLM(neox).save_pretrained(path)
        else:
            model = LlamaForCausalLM(olmo.OlmoConfig.from_dict(olmo_cfg).llama_config())
            olmo.write_unsharded(path, model, olmo_cfg, 16)
        suite = Suite.from_json(json.dumps({"name": f"bench-{fmt}", "model": str(path.parent), "steps": [8, 16],
                                            "tokens_per_step": 2048, "format": fmt}))
        record = {"suite": dataclasses.asdict(suite), "step": 16, "path": str(path), "format": fmt, "tokens_seen": 16 * 2048}
        (path.parent / "revision.json").write_text(json.dumps(record))

        def bare():
            model = suites.load(record).eval()
            with torch.inference_mode():
                for i in range(0, len(ev), 64):
                    x = torch.from_numpy(ev[i : i + 64].astype(np.int64))
                    model(input_ids=x).logits.float().log_softmax(-1)

        no_heldout = dataclasses.replace(EvaluateOptions.defaults(), heldout=False)
        t_bare, _ = timed(bare)
        t_ours, _ = timed(suites.evaluate, path.parent / "revision.json", env.data, env.tmp / f"losses-{fmt}", no_heldout)
        t_bare2, _ = timed(bare)  # after, too: the first pass of either may pay for cold caches
        n_tok = ev.shape[0] * (ev.shape[1] - 1)
        t_base = min(t_bare, t_bare2)
        what = ("GPT-NeoX, save_pretrained" if fmt == "hf" else
                "OLMo unsharded model.pt/config.yaml, mapped into our Llama model on loading")
        out.append(row(name, n_tok / t_ours, "tokens/s", n_tok / t_base, t_base / t_ours,
                       f"a suite revision ({what}) through suite-evaluate's path (per-token losses + Parquet) vs a "
                       "bare forward pass with log-softmax of the same weights; baseline the faster of two runs"))
    return out


@case
def loss_slice_load(env):
    import pyarrow.parquet as pq

    from scaledyn.analysis import losses
    from scaledyn.layout import LossesPaths

    root = env.tmp / "slice"
    n_seq, seq = env.pick(16384, 16384, 512), 128  # ~1M per-token losses per (run, step, split); two splits
    rng = np.random.default_rng(0)
    for step in (1, 2):
        columns = {"split": np.array(["eval"] * (n_seq // 2 * (seq - 1)) + ["heldout"] * (n_seq // 2 * (seq - 1))),
                   "example_id": np.repeat(np.arange(n_seq, dtype=np.int64), seq - 1),
                   "position": np.tile(np.arange(1, seq, dtype=np.int32), n_seq),
                   "loss": rng.gamma(2, 2, n_seq * (seq - 1)).astype(np.float32)}
        losses.write_partition(LossesPaths(root).dataset("tokens"), "r", step, columns, "tokens")
    t, df = timed(losses.load, root, "tokens", runs=["r"], steps=[2], splits=["eval"])
    t_raw, _ = timed(pq.read_table, LossesPaths(root).partition("tokens", "r", 2))
    return [row("loss_slice_load_seconds", t, "s", t_raw, t / t_raw,
                f"{len(df):,} per-token losses (one run, step, split) out of {2 * n_seq * (seq - 1):,}; "
                "baseline: pq.read_table of the whole partition file")]


@case
def jvp_vs_per_position_backward(env):
    import torch

    from scaledyn.analysis.onestep import jvp_predictions, load_for_step, per_position_predictions, trainable
    from scaledyn.data.tokens import TokenData
    from scaledyn.layout import RunPaths

    torch.set_num_threads(1)
    spec = _eval_model(env)
    model = load_for_step(RunPaths(spec.run_dir).checkpoint(16)).model
    batch = torch.from_numpy(np.asarray(TokenData.open(spec.data_dir).split("eval")[:env.pick(8, 4, 1)], dtype=np.int64))
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=gen) * 1e-3 for n, p in trainable(model).items()}
    jvp_predictions(model, batch[:1], delta)  # torch.func's one-time set-up (~0.4 s) is not per-batch cost
    t_jvp, fast = timed(jvp_predictions, model, batch, delta)
    t_ref, slow = timed(per_position_predictions, model, batch, delta)
    diff = float((fast - slow).abs().max())
    return [row("jvp_vs_per_position_backward", t_ref / t_jvp, "x speed-up", t_ref, t_ref / t_jvp,
                f"{batch.shape[0]}x{batch.shape[1] - 1} tokens, tiny-25k; JVP {t_jvp:.3f} s vs per-position backward "
                f"{t_ref:.2f} s; largest absolute difference {diff:.2e}")]


def _rerun_per_token(model, batch, delta):
    """Today's method before the shared forward: C_g from vmap(grad) of each token's loss, which
    re-runs its whole sequence forward and backward once per token (the baseline)."""
    import torch
    from torch.func import grad, vmap

    from scaledyn.analysis.onestep import _Bound, eager_attention, token_losses, trainable

    emb = model.get_input_embeddings().weight
    params = {n: p.detach() for n, p in trainable(model).items() if p is not emb}
    frozen = {n: t.detach() for n, t in list(model.named_parameters()) + list(model.named_buffers()) if n not in params}
    s = batch.shape[1] - 1
    positions = torch.arange(s)

    def loss_at(p, seq, pos):
        return (token_losses(_Bound(model, {**frozen, **p}), seq[None])[0] * (positions == pos)).sum()

    flat = torch.arange(batch.shape[0] * s)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    absolute = {n: torch.zeros_like(p) for n, p in params.items()}
    with eager_attention(model):
        for i in range(0, len(flat), 16):
            g = vmap(grad(loss_at), in_dims=(None, 0, 0))(params, batch[flat[i : i + 16] // s], flat[i : i + 16] % s)
            for n in params:
                total[n] += (g[n] * delta[n]).sum(0)
                absolute[n] += (g[n] * delta[n]).abs().sum(0)
    return float(sum(t.abs().sum() for t in total.values()) / sum(a.sum() for a in absolute.values()))


@case
def per_token_gradients(env):
    """Coordinate-wise interference over one held-out batch of the default study's shape (16 x 128:
    2,032 tokens), per-token gradients sharing each sequence's forward pass, against re-running
    each token's sequence (vmap of grad)."""
    import torch

    from scaledyn.analysis.onestep import coordinate_interference, load_for_step, trainable
    from scaledyn.data.tokens import TokenData
    from scaledyn.layout import RunPaths

    torch.set_num_threads(1)
    spec = _eval_model(env)
    model = load_for_step(RunPaths(spec.run_dir).checkpoint(16)).model
    n_seq = env.pick(16, 4, 1)
    batch = torch.from_numpy(np.asarray(TokenData.open(spec.data_dir).split("eval")[:n_seq], dtype=np.int64))
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=gen) * 1e-3 for n, p in trainable(model).items()}
    t_new, got = timed(coordinate_interference, model, batch, delta, None)
    t_old, c_g = timed(_rerun_per_token, model, batch, delta)
    return [row("per_token_gradients_seconds", t_new, "s", t_old, t_new / t_old,
                f"C_g over {got['coord_tokens']:,} tokens of tiny-25k ({got['coord_params']:,} coordinates); baseline: "
                f"vmap(grad) re-running each token's sequence; C_g {got['C_g']:.6f} vs {c_g:.6f}")]


def _break_curve(T: int, seed: int = 0):
    from scaledyn.stats.curve import validate_curve
    from scaledyn.stats.powerlaws import bnsl_log

    t = np.arange(1, T + 1, dtype=float)
    theta = [np.log(10), 0.3, -0.2, np.log(np.sqrt(100 * T)), 0.3]
    return validate_curve(t, np.exp(bnsl_log(np.log(t), theta) + np.random.default_rng(seed).normal(0, 0.02, T)))


@case
def fit_curve_seconds(env):
    """The full default fit (preprocessing, three fits, calibrated test, 200-draw intervals) of a
    paper-length and a default-study-length curve, against one start of the reference procedure."""
    from scaledyn.stats.curve import validate_curve
    from scaledyn.stats.fit import FitOptions, fit_curve, prepare_fit
    from scaledyn.stats.powerlaws import fit_reference

    out = []
    long = env.pick(262144, 262144, 20000)
    for T, aim in ((long, "< 10 s"), (3000, "< 3 s")):
        c = _break_curve(T)
        f = prepare_fit(c, FitOptions.defaults())
        t_ref, _ = timed(fit_reference, f.x, f.y)
        t_fit, r = timed(fit_curve, c, FitOptions.defaults())
        out.append(row(f"fit_curve_{T}_seconds", t_fit, "s", t_ref, t_fit / t_ref,
                       f"aim {aim}; verdict {r.verdict}, {r.test.draws} test draws + {len(r.roots)} interval draws; "
                       f"baseline: one reference dogbox start (d1_est = 6000), no test, no intervals"))
    # the same paper-length curve on a tokens axis (x = 2,048 tokens per step): preprocessing stays on steps
    c = _break_curve(long)
    tokens = validate_curve(c.step, c.loss, x=c.step * 2048.0, axis="tokens")
    t_steps, r_steps = timed(fit_curve, c, FitOptions.defaults())
    t_tokens, r_tokens = timed(fit_curve, tokens, FitOptions.defaults())
    out.append(row("fit_curve_tokens_axis_seconds", t_tokens, "s", t_steps, t_tokens / t_steps,
                   f"aim ratio ~1; 262,144 steps as tokens; t_d {r_tokens.derived()['t_d'] / 2048:.1f} x 2,048 tokens "
                   f"vs {r_steps.derived()['t_d']:.1f} steps; baseline: the same curve on steps"))
    return out


def _stdlib_docs(limit: int | None = None) -> list[str]:
    from scaledyn.data.sources import stdlib_files

    return [p.read_text(encoding="utf-8") for p in stdlib_files()[:limit]]


@case
def prepare_throughput(env):
    """One slice job on the stdlib corpus (read, tokenize, write shards) against a bare batch
    encode of the same text with the same tokenizer, one core each (tokenizers' own threads off)."""
    import dataclasses

    from scaledyn.data.prepare import prepare_slice, prepare_tokenizer
    from scaledyn.data.tokens import load_tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    limit = env.pick(None, None, 200)
    data = dataclasses.replace(env.study.data, source="stdlib", max_documents=limit, slices=1)
    out = env.tmp / "prep-speed"
    prepare_tokenizer(data, out)
    backend = load_tokenizer(out).backend_tokenizer
    docs = _stdlib_docs(limit)
    t_bare, encs = timed(lambda: [e.ids for i in range(0, len(docs), 256)
                                  for e in backend.encode_batch_fast(docs[i : i + 256], add_special_tokens=False)])
    n = sum(len(e) + 1 for e in encs)
    t_ours, rec = timed(prepare_slice, data, out, 0)
    return [row("prepare_tokens_per_s_per_core", rec["tokens"] / t_ours, "tokens/s", n / t_bare, t_bare / t_ours,
                f"{rec['tokens']:,} tokens from {rec['documents']:,} stdlib files, aim >= 0.8; baseline: "
                "backend encode_batch_fast of the same documents, already in memory")]


def _peak_rss_mb(config: Path) -> float:
    code = ("import resource, sys; from scaledyn.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, "prepare-data", "--config", str(config)], capture_output=True,
                          text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return int(proc.stderr.rsplit("PEAK", 1)[1].split()[0]) / 1024


@case
def prepare_peak_memory(env):
    """Peak RSS of preparing the stdlib corpus and the same sources repeated 20 and 40 times as
    one JSONL file. Past the tokenizer's sample and one full shard, memory must not grow with the
    corpus: the 40x corpus against the 20x one shows that bound; the 20x against the stdlib shows
    the cost of filling a shard (the stdlib's slices fill a tenth of one) and a full BPE sample."""
    limit = env.pick(None, None, 50)
    base = ("\n  tokenizer: {kind: bpe, vocab_size: 2048}\n  seq_len: 128\n  eval_sequences: 256\n  heldout_batches: 3\n"
            + (f"  max_documents: {limit}\n  allow_repeat: true\n" if limit else ""))
    one = env.tmp / "peak1.yaml"
    one.write_text(f"results: {env.tmp / 'peak1'}\ndata:{base}  source: stdlib\nmodel:\n  sizes: [tiny-1k]\n")
    docs = _stdlib_docs(limit)

    def repeated(times: int) -> Path:
        big = env.tmp / f"corpus{times}.jsonl"
        with open(big, "w") as f:
            for _ in range(times):
                for d in docs:
                    f.write(json.dumps({"text": d}) + "\n")
        config = env.tmp / f"peak{times}.yaml"
        config.write_text(f"results: {env.tmp / f'peak{times}'}\ndata:{base}  source: files\n"
                          f"  files: {{paths: ['{big}'], format: jsonl}}\nmodel:\n  sizes: [tiny-1k]\n")
        return config

    p1 = _peak_rss_mb(one)
    t20, p20 = timed(_peak_rss_mb, repeated(20))  # max_documents (smoke) still caps these at the first 50
    t40, p40 = timed(_peak_rss_mb, repeated(40))
    n20, n40 = (json.loads((env.tmp / f"peak{t}" / "data" / "manifest.json").read_text())["n_tokens"] for t in (20, 40))
    return [row("prepare_peak_rss_20x_corpus", p20, "MB", p1, p20 / p1,
                f"aim <= 1.2; {n20:,} tokens (20x the stdlib corpus) prepared in {t20:.0f} s; "
                "baseline: the default corpus's peak RSS"),
            row("prepare_peak_rss_40x_corpus", p40, "MB", p20, p40 / p20,
                f"{n40:,} tokens prepared in {t40:.0f} s; baseline: the 20x corpus's peak RSS")]


@case
def paper_dag_dryrun(env):
    def dry(*extra):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "all", *extra], cwd=REPO,
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])

    t_default, _ = timed(dry)
    t_paper, _ = timed(dry, "--configfile", "configs/paper.yaml")
    # The SLURM executor plugin runs `scontrol show config` (10 s timeout) whenever it is imported on
    # a machine with SLURM's client tools; with no reachable slurmctld every snakemake call waits it out.
    probe = 0.0
    if shutil.which("scontrol"):
        probe, _ = timed(subprocess.run, ["scontrol", "show", "config"], capture_output=True, timeout=30)
    return [row("paper_dag_dryrun_seconds", t_paper, "s", t_default, t_paper / t_default,
                "snakemake -n on configs/paper.yaml (6 sizes, 19 checkpoints each); baseline: the default study; "
                f"includes {probe:.1f} s of the SLURM plugin's `scontrol show config` probe")]


def markdown_table(rows: list[dict], quick: bool) -> str:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    lines = [f"Latest figures ({'--quick, ' if quick else ''}this machine, {time.strftime('%Y-%m-%d')}):", "",
             "| case | value | unit | baseline | ratio | what |", "|---|---:|---|---:|---:|---|"]
    lines += [f"| `{r['name']}` | {num(r['value'], '.4g')} | {r['unit']} | {num(r['baseline'], '.4g')} | "
              f"{num(r['ratio'], '.3g')} | {r['note']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller workloads (about 5 minutes here)")
    size.add_argument("--smoke", action="store_true", help="every case on the smallest workloads: that it runs, not how fast")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    p.add_argument("--readme", type=Path, help="replace the benchmarks block of this Markdown file with the table")
    args = p.parse_args(argv)
    env = Env("smoke" if args.smoke else "quick" if args.quick else "full")
    rows = []
    for name, fn in CASES.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        rows.extend(fn(env))
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    width = max(len(r["name"]) for r in rows)
    print(f"{'case':<{width}}  {'value':>12}  {'unit':<10} {'baseline':>12}  {'ratio':>8}")
    for r in rows:
        base = "" if r["baseline"] is None else f"{r['baseline']:.4g}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3g}"
        print(f"{r['name']:<{width}}  {r['value']:>12.4g}  {r['unit']:<10} {base:>12}  {ratio:>8}")
    if args.readme:
        if args.smoke:
            p.error("--readme: smoke figures mean nothing; run without --smoke")
        replace_block(args.readme, "benchmarks", markdown_table(rows, args.quick))
    if args.json:
        args.json.write_text(json.dumps({"cases": rows, "mode": env.mode, "python": sys.version.split()[0]}, indent=2))


if __name__ == "__main__":
    main()
