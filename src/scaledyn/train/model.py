"""The OLMo-style decoder of the paper, built from transformers' Llama implementation.

Llama already has RoPE, SwiGLU, RMSNorm, no biases and optional tied embeddings; the paper's norms
are non-affine, so their weights stay at 1 and are frozen. Checkpoints are plain
`save_pretrained` directories that `AutoModelForCausalLM.from_pretrained` opens anywhere.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # per-shard bars would drown the training bar

from ..errors import CheckpointError
from .sizes import Size


def use_bf16(precision: str) -> bool:
    """bf16 mixed precision for `train.precision`: always with "bf16", on a GPU with "auto"; the one
    place this is decided (training and the one-step replay take the same step)."""
    return precision == "bf16" or (precision == "auto" and torch.cuda.is_available())


def compute_device() -> torch.device:
    """Where the analyses compute: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_config(size: Size, vocab_size: int, eos_token_id: int = 0) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.d_model,
        intermediate_size=size.mlp_hidden,
        num_hidden_layers=size.n_layers,
        num_attention_heads=size.n_heads,
        num_key_value_heads=size.n_heads,
        max_position_embeddings=size.context,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        initializer_range=0.02,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        use_cache=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def freeze_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Make every RMSNorm non-affine: its weight is 1 and never trained."""
    for name, p in model.named_parameters():
        if "norm" in name:
            p.requires_grad_(False)
    return model


def build_model(size: Size, vocab_size: int, seed: int, eos_token_id: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(model_config(size, vocab_size, eos_token_id), attn_implementation="sdpa")
    return freeze_norms(model)


def load_model(path, ours: bool = True, **kwargs) -> torch.nn.Module:
    """Load a checkpoint's model; a damaged one raises an error that names the directory. Our own
    models get their non-affine norms frozen; a published model (ours=False) is loaded as it is."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except Exception as e:  # transformers raises OSError, ValueError or safetensors errors
        raise CheckpointError(f"checkpoint {path}: the model cannot be loaded ({type(e).__name__}: {e})") from None
    return freeze_norms(model) if ours else model


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameters (a tied embedding once) and those outside the input and output
    embeddings (an untied unembedding, as in GPT-NeoX, is an embedding too, as Pythia counts it)."""
    out = model.get_output_embeddings()
    emb_ids = {id(model.get_input_embeddings().weight)} | ({id(out.weight)} if out is not None else set())
    seen, total, emb = set(), 0, 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            emb += p.numel() if id(p) in emb_ids else 0
    return {"total_params": total, "non_embedding_params": total - emb}


def token_losses(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token next-token losses (nats), shape (batch, seq_len - 1), accumulated in fp32."""
    # log_softmax over the whole logits tensor, then a gather: slicing off the last position first
    # would copy the (batch, seq, vocab) logits, which costs evaluation about a fifth of its speed.
    logp = model(input_ids=input_ids).logits.float().log_softmax(-1)
    return -logp[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
