"""Peak memory of the one-step (dt = 1) analysis at a paper size: measured on a GPU, modelled on a CPU.

    python -m benchmarks.onestep_memory --size 472M --micro 32 [--seq-len 1024 --vocab 50304]

On a GPU it runs the analysis's three phases (fp32 evaluation, the bf16-autocast step with its
micro-batched full-batch gradient, the micro-batched JVP) on random tokens and reports each
phase's torch.cuda.max_memory_allocated. On a CPU it measures what sets the step's peak, the
tensors autograd saves for the backward pass, for 1 and 2 sequences under bf16 autocast (SDPA,
as the step runs, and eager attention, for comparison), and adds the fixed states of
onestep._measure_batch: the loaded model, its working copy, gradients, AdamW moments and the
saved weights (5 fp32 copies of the parameters, counted 4 bytes each) and the fp32 logits'
gradient at the micro-batch.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from scaledyn.analysis.onestep import jvp_predictions, one_step, trainable
from scaledyn.train.model import build_model
from scaledyn.train.sizes import PAPER_SIZES

GIB = 2**30


def saved_bytes(model, tokens: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one bf16-autocast forward (each tensor once)."""
    saved: dict[tuple, int] = {}

    def pack(t):
        saved[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=tokens, labels=tokens).loss
    return sum(saved.values())


def cpu_model(model, args) -> dict:
    n = sum(p.numel() for p in trainable(model).values())
    out = {"params": n, "fixed_states_gib": 5 * 4 * n / GIB,
           "logits_grad_gib": args.micro * args.seq_len * args.vocab * 4 / GIB}
    for attn in ("sdpa", "eager"):
        model.config._attn_implementation = attn
        one, two = (saved_bytes(model, torch.randint(0, args.vocab, (b, args.seq_len))) for b in (1, 2))
        per_seq = two - one
        out[attn] = {"saved_per_sequence_gib": per_seq / GIB, "saved_fixed_gib": (one - per_seq) / GIB,
                     "step_peak_gib": (one - per_seq + args.micro * per_seq) / GIB + out["fixed_states_gib"]
                     + out["logits_grad_gib"]}
    model.config._attn_implementation = "sdpa"
    return out


def gpu_measure(model, args) -> dict:
    dev = torch.device("cuda")
    model.to(dev)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=dev)
    out = {}

    def phase(name, fn):
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        out[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / GIB

    def evaluate():
        with torch.no_grad():
            for i in range(0, args.batch, args.micro):
                x = batch[i : i + args.micro]
                model(input_ids=x).logits.float().log_softmax(-1)

    work = {}

    def step():
        work["model"] = copy.deepcopy(model)
        theta0 = {n: p.detach().clone() for n, p in trainable(work["model"]).items()}
        optimizer = torch.optim.AdamW(work["model"].parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
        one_step(work["model"], optimizer, batch, 1e-4, args.micro, lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        work["delta"] = {n: p.detach() - theta0[n] for n, p in trainable(work["model"]).items()}

    phase("evaluate", evaluate)
    phase("step", step)
    del work["model"]
    phase("jvp", lambda: jvp_predictions(model, batch, work["delta"], args.micro))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="472M", choices=sorted(PAPER_SIZES))
    ap.add_argument("--micro", type=int, default=32, help="sequences per micro-batch (evaluate.batch_size)")
    ap.add_argument("--batch", type=int, default=512, help="sequences per held-out batch (GPU run)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50304)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(PAPER_SIZES[args.size], args.vocab, 0)
    result = {"size": args.size, "micro": args.micro, "seq_len": args.seq_len, "vocab": args.vocab}
    if torch.cuda.is_available():
        result |= {"device": torch.cuda.get_device_name(), **gpu_measure(model, args)}
    else:
        result |= {"device": "cpu (model)", **cpu_model(model, args)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
