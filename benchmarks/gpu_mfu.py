"""GPU check: model FLOPs utilisation and peak memory of `scaledyn train` for a paper size.

    python -m benchmarks.gpu_mfu --size 144M --seq-len 1024 --micro 16 --steps 30 [--compile]

Runs the real training loop (bf16 autocast, AdamW, clipping, logging, checkpoints off) on random
tokens and reports MFU = 6 N_total + 12 L d T FLOPs per token (the logits count: the output layer
is the tied embedding) against the GPU's dense bf16 peak, and a bare loop in the same process.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scaledyn import atomic
from scaledyn.config import load_study
from scaledyn.data.prepare import model_vocab_size
from scaledyn.train.loop import train
from scaledyn.train.model import build_model
from scaledyn.train.optim import make_optimizer

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def fake_data(root: Path, seq_len: int, n: int, vocab: int) -> None:
    """Random token ids in the prepared-data format (one shard), for a throughput measurement."""
    from scaledyn.data.tokens import FORMAT
    from scaledyn.layout import DataPaths

    paths, rng = DataPaths(root), np.random.default_rng(0)
    tokens = rng.integers(0, vocab, n * seq_len, dtype=np.uint16)
    paths.shard(0, 0).parent.mkdir(parents=True, exist_ok=True)
    tokens.tofile(paths.shard(0, 0))
    for name in ("eval", "heldout"):
        np.save(paths.split(name), rng.integers(0, vocab, (8, seq_len), dtype=np.uint16))
    np.save(paths.excluded, np.arange(0))
    atomic.write_json(paths.manifest, {
        "format": FORMAT, "seq_len": seq_len, "dtype": "uint16", "model_vocab_size": model_vocab_size(vocab),
        "max_token_id": vocab - 1, "tokenizer": {"eos_token_id": 0, "vocab_size": vocab}, "heldout_batch_size": 8,
        "heldout_batches": 1, "shards": [{"file": paths.shard(0, 0).relative_to(root).as_posix(), "tokens": n * seq_len}],
        "splits": {"train": {"sequences": n, "example_id_start": 16, "example_id_stop": 16 + n},
                   **{k: {"file": f"{k}.npy", "sequences": 8, "example_id_start": i * 8, "example_id_stop": i * 8 + 8}
                      for i, k in enumerate(("eval", "heldout"))}}})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="144M")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64, help="global batch in sequences")
    p.add_argument("--micro", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    tmp = Path(tempfile.mkdtemp())
    vocab = 50277
    fake_data(tmp, a.seq_len, a.batch * (a.steps + 2), vocab)
    study = load_study({"results": str(tmp / "r"), "model": {"sizes": [a.size]}, "data": {"seq_len": a.seq_len},
                        "train": {"steps": a.steps, "batch_size": a.batch, "micro_batch_size": a.micro, "compile": a.compile,
                                  "flush_every": 1}, "fit": {"transient_steps": 0}})  # nothing is fitted here
    spec = dataclasses.replace(study.run_spec(f"{a.size}_s0"), data_dir=str(tmp), checkpoint_steps=())
    torch.cuda.reset_peak_memory_stats()
    train(spec)
    peak = torch.cuda.max_memory_allocated() / 2**30
    with open(Path(spec.run_dir) / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    steady = [float(r["tokens_per_s"]) for r in rows[len(rows) // 3 :]]
    tps = float(np.median(steady))

    model = build_model(spec.size, model_vocab_size(vocab), 0).cuda()
    opt = make_optimizer(model, spec)
    x = torch.randint(0, vocab, (a.micro, a.seq_len), device="cuda")
    fwd = torch.compile(model) if a.compile else model
    for i in range(a.steps):
        if i == 5:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        for _ in range(a.batch // a.micro):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                (fwd(input_ids=x, labels=x).loss / (a.batch // a.micro)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    bare_tps = (a.steps - 5) * a.batch * a.seq_len / (time.perf_counter() - t0)

    s = spec.size
    n_total = s.total_params(model_vocab_size(vocab))
    flops_per_token = 6 * n_total + 12 * s.n_layers * s.d_model * a.seq_len
    name = torch.cuda.get_device_name()
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), 989e12)
    result = {"device": name, "size": a.size, "seq_len": a.seq_len, "global_batch": a.batch, "micro_batch": a.micro,
              "compile": a.compile, "tokens_per_s": tps, "bare_tokens_per_s": bare_tps, "ratio_vs_bare": tps / bare_tps,
              "mfu": tps * flops_per_token / peak_flops, "bare_mfu": bare_tps * flops_per_token / peak_flops,
              "peak_memory_gib": peak, "params_total": n_total, "torch": torch.__version__}
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
