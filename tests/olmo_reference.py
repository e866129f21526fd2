"""The authors' side of the cross-implementation test (tests/test_olmo.py): run by the Python of a
separate environment with OLMo's own code (`make olmo-env`: ai2-olmo pins numpy<2, this project
uses numpy 2), never imported by the test suite itself.

It builds a tiny OLMo with the paper's architecture keys, trains it a few real steps with OLMo's
AdamW, parameter groups and scheduler, saves an unsharded checkpoint with OLMo's FullCheckpointer
(model.pt, optim.pt, train.pt, config.yaml), then writes what the test compares against: OLMo's
per-token losses on fixed tokens at the checkpoint, the learning rate and the weights after OLMo's
next optimizer step on a fixed batch (no clipping: the one-step replay takes none). Given a
checkpoint that scaledyn wrote (analysis/olmo.write_unsharded) and tokens beside it, it also writes
OLMo's per-token losses of that checkpoint: the inverse mapping, checked the same way.

    python tests/olmo_reference.py OUT_DIR [OURS_DIR]
"""

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from olmo.checkpoint import FullCheckpointer
from olmo.config import ModelConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from olmo.model import OLMo
from olmo.optim import build_optimizer, build_scheduler
from torch.nn.parallel import DistributedDataParallel as DDP

STEPS, MAX_STEPS, VOCAB, ROWS, SEQ = 3, 20, 50, 64, 16


def config() -> TrainConfig:
    model = ModelConfig(d_model=32, n_heads=4, n_layers=2, mlp_ratio=1, vocab_size=VOCAB, embedding_size=ROWS,
                        max_sequence_length=SEQ, rope=True, attention_layer_norm=False, layer_norm_type="rms",
                        layer_norm_with_affine=False, include_bias=False, weight_tying=True, block_type="sequential",
                        activation_type="swiglu", attention_dropout=0.0, residual_dropout=0.0,
                        embedding_dropout=0.0, init_device="cpu", init_fn="mitchell", eos_token_id=VOCAB - 1,
                        pad_token_id=1)
    return TrainConfig(model=model, seed=6198, max_duration=MAX_STEPS, global_train_batch_size=8,
                       optimizer=OptimizerConfig(name="adamw", learning_rate=1e-2, weight_decay=0.1, betas=(0.9, 0.95)),
                       scheduler=SchedulerConfig(name="cosine_with_warmup", t_warmup=2, alpha_f=0.1),
                       max_grad_norm=None, save_overwrite=True, precision="fp32")


def mean_loss(model, tokens):
    logits = model(tokens).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def step(model, optim, scheduler, cfg, tokens, global_step: int) -> float:
    """One update as OLMo's trainer takes it (its lr for update `global_step`), minus clipping."""
    optim.zero_grad(set_to_none=True)
    mean_loss(model, tokens).backward()
    lr = scheduler.get_lr(cfg.optimizer.learning_rate, global_step, MAX_STEPS)
    for group in optim.param_groups:
        group["lr"] = lr
    optim.step()
    return lr


def schedules() -> list[dict]:
    """OLMo's own rates for every scheduler this release has that a checkpoint may name, at steps
    through and past the warm-up and the end: (scheduler config, max_duration, [(step, lr)])."""
    out = []
    for name in ("constant", "constant_with_warmup", "linear_with_warmup", "cosine_with_warmup",
                 "inverse_sqrt_with_warmup"):
        for floor in (None, 0.0):
            sched = {"name": name, "t_warmup": 5, "alpha_f": 0.2, "warmup_min_lr": floor}
            cfg = TrainConfig(scheduler=SchedulerConfig(**sched), max_duration=40)
            s = build_scheduler(cfg)
            out.append({"scheduler": sched, "max_duration": 40,
                        "lr": [(t, s.get_lr(0.01, t, 40)) for t in range(0, 45)]})
    return out


def read_ours(ckpt: Path, out: Path) -> None:
    """OLMo's own model, loaded strictly from a model.pt that scaledyn wrote, on tokens.pt beside it."""
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    model = OLMo(ModelConfig(**{**cfg["model"], "init_device": "cpu"})).eval()
    model.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    tokens = torch.load(ckpt.parent / "tokens.pt", weights_only=True)
    with torch.no_grad():
        logits = model(tokens).logits
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    torch.save(losses, out / "ours_read_by_olmo.pt")


def main(out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29517"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)  # FullCheckpointer saves DDP or FSDP models
    torch.manual_seed(0)
    cfg = config()
    model = OLMo(cfg.model)
    optim, scheduler = build_optimizer(cfg, model), build_scheduler(cfg)
    g = torch.Generator().manual_seed(1)
    for t in range(1, STEPS + 1):
        step(model, optim, scheduler, cfg, torch.randint(0, VOCAB, (8, SEQ), generator=g), t)
    trainer_state = {"epoch": 0, "global_step": STEPS, "global_train_examples_seen_this_epoch": 8 * STEPS,
                     "global_train_tokens_seen": 8 * STEPS * SEQ, "world_size": 1, "checkpoints": [],
                     "unsharded_checkpoints": [], "ephemeral_checkpoints": [],
                     "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.random.get_rng_state()}}
    FullCheckpointer(cfg).save_checkpoint(out / f"step{STEPS}", DDP(model), optim, trainer_state)

    model.eval()
    eval_tokens = torch.randint(0, VOCAB, (4, SEQ), generator=g)
    with torch.no_grad():
        logits = model(eval_tokens).logits
        token_losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), eval_tokens[:, 1:], reduction="none")
    batch = torch.randint(0, VOCAB, (8, SEQ), generator=g)
    model.train()
    lr = step(model, optim, scheduler, cfg, batch, STEPS + 1)
    torch.save({"eval_tokens": eval_tokens, "token_losses": token_losses, "batch": batch, "lr": lr,
                "after": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "schedules": schedules()}, out / "reference.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    if len(sys.argv) > 2:
        read_ours(Path(sys.argv[2]), Path(sys.argv[1]))
