"""Peak memory of the one-step (dt = 1) analysis at a paper size: measured on a GPU, modelled on a CPU.

    python -m benchmarks.onestep_memory --size 472M --micro 32 [--seq-len 1024 --vocab 50304] [--readme docs/benchmarks.md]

On a GPU it runs the analysis's three phases (fp32 evaluation, the bf16-autocast step with its
micro-batched full-batch gradient, the micro-batched JVP) on random tokens and reports each
phase's torch.cuda.max_memory_allocated. On a CPU it measures what sets the step's peak, the
tensors autograd saves for the backward pass, for 1 and 2 sequences under bf16 autocast (SDPA,
as the step runs, and eager attention, for comparison), and adds the fixed states of
onestep._measure_batch: the loaded model, its working copy, gradients, AdamW moments and the
saved weights (5 fp32 copies of the parameters, counted 4 bytes each) and the fp32 logits'
gradient at the micro-batch.

The paper's sizes have the shapes of the ZSL authors' published models, so the same figures hold
for the Δt = 1 replay from their checkpoints (checked here: their config keys map, through
analysis/olmo.py, to the same Llama shapes). Replaying from an OLMo checkpoint also holds, on the
host, the checkpoint's AdamW moments read once (8 bytes per parameter) beside the model (4).
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from benchmarks import replace_block
from scaledyn.analysis.olmo import OlmoConfig
from scaledyn.analysis.onestep import jvp_predictions, one_step, trainable
from scaledyn.train.model import build_model, model_config
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


def authors_shapes_match(size: str, vocab: int) -> bool:
    """The authors' config keys for this size (their mlp_ratio 1, padded embedding) give our shapes."""
    ours = model_config(PAPER_SIZES[size], vocab)
    p = PAPER_SIZES[size]
    theirs = OlmoConfig.from_dict({"model": {"d_model": p.d_model, "n_heads": p.n_heads, "n_layers": p.n_layers,
                                             "mlp_ratio": 1, "vocab_size": 50280, "embedding_size": vocab,
                                             "max_sequence_length": 1024},
                                   "optimizer": {"name": "adamw", "learning_rate": p.lr}}).llama_config()
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    return all(getattr(ours, k) == getattr(theirs, k) for k in keys)


def markdown(r: dict) -> str:
    if "sdpa" not in r:
        return "```\n" + json.dumps(r, indent=2) + "\n```\n"
    return (f"Δt = 1 at {r['size']} ({r['params']:,} trained parameters; the ZSL authors' {r['size']} has these shapes: "
            f"{'yes' if r['authors_shapes'] else 'NO'}), {r['micro']} sequences of {r['seq_len']} per micro-batch, "
            f"{r['device']}:\n\n"
            f"| part | GiB |\n|---|---:|\n"
            f"| fixed states (model, working copy, gradients, AdamW moments, saved weights) | {r['fixed_states_gib']:.1f} |\n"
            f"| fp32 logits' gradient at the micro-batch | {r['logits_grad_gib']:.1f} |\n"
            f"| activations saved per sequence (SDPA, bf16 autocast) | {r['sdpa']['saved_per_sequence_gib']:.2f} |\n"
            f"| **step peak, SDPA** | **{r['sdpa']['step_peak_gib']:.1f}** |\n"
            f"| step peak with eager attention (for comparison) | {r['eager']['step_peak_gib']:.1f} |\n"
            f"| host memory of a replay from an OLMo checkpoint (model 4 + moments 8 bytes per parameter) | "
            f"{r['host_olmo_gib']:.1f} |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="472M", choices=sorted(PAPER_SIZES))
    ap.add_argument("--micro", type=int, default=32, help="sequences per micro-batch (evaluate.batch_size)")
    ap.add_argument("--batch", type=int, default=512, help="sequences per held-out batch (GPU run)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--readme", help="write the table into this Markdown file's onestep-memory block")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(PAPER_SIZES[args.size], args.vocab, 0)
    result = {"size": args.size, "micro": args.micro, "seq_len": args.seq_len, "vocab": args.vocab,
              "authors_shapes": authors_shapes_match(args.size, args.vocab)}
    if torch.cuda.is_available():
        result |= {"device": torch.cuda.get_device_name(), **gpu_measure(model, args)}
    else:
        result |= {"device": "modelled on a CPU (no GPU here)", **cpu_model(model, args)}
        result["host_olmo_gib"] = 12 * result["params"] / GIB
    print(json.dumps(result, indent=2))
    if args.readme:
        from pathlib import Path

        replace_block(Path(args.readme), "onestep-memory", markdown(result))


if __name__ == "__main__":
    main()
