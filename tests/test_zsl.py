import dataclasses

import numpy as np
import pytest
import torch

from scaledyn.analysis import zsl
from scaledyn.analysis.onestep import (
    coordinate_interference,
    jvp_predictions,
    load_for_step,
    one_step,
    per_position_predictions,
    token_losses,
    trainable,
)
from scaledyn.config import load_study
from scaledyn.data.tokens import TokenData
from scaledyn.layout import RunPaths
from scaledyn.train.loop import BatchOrder, train


def test_metric_properties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = rng.normal(rng.normal(), rng.uniform(0.1, 2), size=rng.integers(2, 200))
        m = zsl.metrics(x)
        assert 0 <= m["D"] <= 1
        assert m["dL"] == pytest.approx((1 - m["D"]) * m["M"])
    assert zsl.metrics(np.abs(rng.normal(size=100)))["D"] == pytest.approx(0)  # all improve or all worsen
    assert zsl.metrics(-np.abs(rng.normal(size=100)))["D"] == pytest.approx(0)
    x = rng.normal(size=1000)
    assert zsl.metrics(np.concatenate([x, -x]))["D"] == pytest.approx(1)  # exact cancellation
    assert zsl.metrics(rng.normal(size=100000))["D"] > 0.99


def test_log2_pairs():
    assert zsl.log2_pairs([1, 2, 4, 8, 10, 16, 20]) == [(1, 2), (2, 4), (4, 8), (8, 16)]


def test_dtt_table_from_exported_losses(tiny_study, tmp_path):
    df = zsl.dtt_table(tiny_study.losses.dir, "tiny-6k_s0", tmp_path / "dtt.parquet")
    assert (tmp_path / "dtt.csv").exists()
    eval_tok = df[(df["split"] == "eval") & (df["granularity"] == "token")]
    assert list(eval_tok["step"]) == [1, 2, 4, 8, 16, 32]
    assert (eval_tok["n"] == 24 * 31).all()
    assert np.allclose(eval_tok["dL"], (1 - eval_tok["D"]) * eval_tok["M"])


def test_workflow_tables(tiny_study):
    import pandas as pd

    z = pd.read_parquet(tiny_study.zsl_table)
    assert set(z["variant"]) == {"dt=t", "dt=1"}
    dt1 = z[z["variant"] == "dt=1"]
    assert set(dt1["step"]) == {16, 64} and (dt1["n"] == 2).all()
    assert dt1["D_std"].notna().all() and "pred_corr_mean" in z
    assert (z.groupby(["run", "step", "variant", "split", "granularity"]).size() == 1).all()
    assert tiny_study.zsl_table.with_suffix(".csv").exists()


def test_jvp_equals_per_token_autograd(tiny_study):
    model = load_for_step(tiny_study.run("tiny-6k_s0").checkpoint(16)).model
    data = TokenData.open(tiny_study.data.dir)
    batch = torch.from_numpy(np.asarray(data.heldout_batch(0)[0][:2], dtype=np.int64))
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=gen) * 1e-3 for n, p in trainable(model).items()}
    fast = jvp_predictions(model, batch, delta)
    slow = per_position_predictions(model, batch, delta)
    assert fast.shape == slow.shape == (2, 31)
    assert torch.allclose(fast, slow, atol=1e-6, rtol=1e-4)


def test_coordinate_interference_over_all_tokens_with_its_shuffled_baseline(tiny_study):
    """C_g and D(grad) from vmap equal a per-token autograd loop, over every token of the batch;
    the shuffled baseline is the same sums with the documented random signs."""
    model = load_for_step(tiny_study.run("tiny-6k_s0").checkpoint(16)).model
    data = TokenData.open(tiny_study.data.dir)
    batch = torch.from_numpy(np.asarray(data.heldout_batch(0)[0][:2], dtype=np.int64))
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=gen) * 1e-3 for n, p in trainable(model).items()}
    got = coordinate_interference(model, batch, delta, None)
    emb = model.get_input_embeddings().weight
    params = {n: p for n, p in trainable(model).items() if p is not emb}
    losses = token_losses(model, batch)
    n_tok = losses.numel()
    rng = np.random.default_rng(0)
    flat = rng.choice(n_tok, size=n_tok, replace=False)
    signs = rng.choice([-1.0, 1.0], size=n_tok)
    grads = torch.stack([torch.cat([g.ravel() for g in torch.autograd.grad(losses.ravel()[i], list(params.values()),
                                                                           retain_graph=True)]) for i in flat])
    d = torch.cat([delta[n].ravel() for n in params])
    s = torch.as_tensor(signs, dtype=grads.dtype)[:, None]
    p = grads * d
    live = grads.abs().sum(0) > 0
    assert got["coord_tokens"] == n_tok == 62 and got["coord_params"] == d.numel()
    assert got["C_g"] == pytest.approx(float(p.sum(0).abs().sum() / p.abs().sum()), rel=1e-4)
    assert got["C_g_shuffled"] == pytest.approx(float((s * p).sum(0).abs().sum() / p.abs().sum()), rel=1e-4)
    d_grad = lambda g: float((1 - g.sum(0)[live].abs() / g.abs().sum(0)[live]).mean())  # noqa: E731
    assert got["D_grad"] == pytest.approx(d_grad(grads), rel=1e-4)
    assert got["D_grad_shuffled"] == pytest.approx(d_grad(s * grads), rel=1e-4)


def test_one_step_reproduces_the_training_loop(tmp_path, tiny_config, tiny_data):
    """From checkpoint 8 with its optimizer, one step on training batch 9 gives checkpoint 9's weights
    (the run trains without clipping, as the one-step analysis does)."""
    spec = dataclasses.replace(load_study(tiny_config).run_spec("tiny-1k_s0"), data_dir=str(tiny_data),
                               run_dir=str(tmp_path / "run"), steps=9, checkpoint_steps=(8, 9), grad_clip=None,
                               optimizer_steps=None)
    train(spec)
    start = load_for_step(RunPaths(spec.run_dir).checkpoint(8))
    data = TokenData.open(tiny_data)
    rows = BatchOrder(data.train_sequences, spec.batch_size, spec.data_seed).rows(9)
    batch = torch.from_numpy(data.train_batch(rows).astype(np.int64))
    one_step(start.model, start.optimizer_for(start.model), batch, start.lr)
    target = load_for_step(RunPaths(spec.run_dir).checkpoint(9)).model
    for (n, p), q in zip(start.model.named_parameters(), target.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_micro_batched_one_step_equals_full_batch(tiny_study):
    """Memory bounded by the micro-batch, not the batch: the same update and the same predictions."""
    ckpt = tiny_study.run("tiny-6k_s0").checkpoint(16)
    data = TokenData.open(tiny_study.data.dir)
    batch = torch.from_numpy(data.heldout_batch(0)[0].astype(np.int64))
    results = []
    for micro in (None, 3):  # 8 sequences: micro-batches of 3, 3 and 2
        start = load_for_step(ckpt)
        model = start.model
        theta0 = {n: p.detach().clone() for n, p in trainable(model).items()}
        one_step(model, start.optimizer_for(model), batch, start.lr, micro)
        delta = {n: p.detach() - theta0[n] for n, p in trainable(model).items()}
        model0 = load_for_step(ckpt).model
        results.append((delta, jvp_predictions(model0, batch, delta, micro)))
    (d_full, p_full), (d_micro, p_micro) = results
    for n in d_full:
        assert torch.allclose(d_full[n], d_micro[n], atol=1e-7, rtol=1e-4), n
    assert torch.allclose(p_full, p_micro, atol=1e-6, rtol=1e-4)
