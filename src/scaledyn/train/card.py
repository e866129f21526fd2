"""The model card of a checkpoint (README.md beside its weights), in the Hugging Face convention.

A checkpoint folder is what `push_to_hub` publishes, so it says what a reader of the Hub page
needs: the run, the step and the tokens seen, the architecture (and that its norms were frozen,
which config.json cannot say), the data with its hashes, the optimizer and schedule, the license,
and the tool that made it.
"""

from __future__ import annotations

import json

from huggingface_hub import ModelCard, ModelCardData

from .. import __version__
from ..hashing import sha256
from ..layout import DataPaths
from .spec import RunSpec

TEXT = """# {run} at step {step:,}

A checkpoint of run `{run}` of a scaledyn study of training dynamics: {tokens:,} training tokens
seen ({step:,} of {steps:,} steps). Revision name on the Hub: `step{step}`, as its folder is named
(Pythia's and OLMo's convention; `scaledyn` suites read revisions with the template `step{{step}}`).

## Model

Llama blocks (RoPE, SwiGLU, RMSNorm, no biases, tied embeddings): d_model {d_model}, {n_layers}
layer(s), {n_heads} heads, context {context}; {non_embedding:,} non-embedding parameters of
{total:,}. The RMSNorm weights were **frozen at 1** during training (the paper's non-affine norms):
`config.json` cannot say so, so to continue training as it was trained, freeze them:

    for name, p in model.named_parameters():
        if "norm" in name:
            p.requires_grad_(False)

## Training

AdamW (betas {betas}, eps {eps:g}, weight decay {weight_decay:g} on matrices), peak learning rate
{lr:g}, schedule {schedule}, {batch} sequences of {seq_len} tokens per step, gradient clipping
{clip}, seed {seed}, data order seed {data_seed}.

## Data

Corpus: {corpus}. Data manifest sha256 `{manifest}`; the tokenizer is in this folder.

## License

Weights made by scaledyn {version} (MIT). They are trained on the corpus above: its license may
bind what you do with them.
"""


def model_card(spec: RunSpec, step: int, tokens_seen: int, counts: dict) -> str:
    manifest_path = DataPaths(spec.data_dir).manifest
    manifest = json.loads(manifest_path.read_text())
    corpus = manifest.get("corpus", {})
    named = corpus.get("wheels") or corpus.get("packages") or corpus.get("dataset") or corpus.get("files")
    s, o = spec.schedule, spec.optimizer
    data = ModelCardData(license="other", library_name="transformers",
                         tags=["scaledyn", "training-dynamics", "loss-deceleration", f"step-{step}"])
    body = TEXT.format(
        run=spec.name, step=step, steps=spec.steps, tokens=tokens_seen, d_model=spec.size.d_model,
        n_layers=spec.size.n_layers, n_heads=spec.size.n_heads, context=spec.size.context,
        non_embedding=counts["non_embedding_params"], total=counts["total_params"], betas=list(o.betas), eps=o.eps,
        weight_decay=o.weight_decay, lr=spec.lr, batch=spec.batch_size, seq_len=spec.seq_len, clip=spec.grad_clip,
        seed=spec.seed, data_seed=spec.data_seed, version=__version__, manifest=sha256(manifest_path),
        schedule=f"{s.kind} (warm-up {s.warmup_steps} steps from {s.warmup_start_factor:g} of the peak, cool-down "
                 f"{s.cooldown_steps} steps to {s.final_lr_factor:g})",
        corpus=f"{corpus.get('source', 'unknown')}" + (f" {json.dumps(named)}" if named else ""))
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
