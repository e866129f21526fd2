"""OLMo "unsharded" checkpoints (model.pt, optim.pt, train.pt, config.yaml), the format in which
the ZSL paper's authors published their six models with optimizer state, read into our model and
optimizer so that evaluation, the Δt = 1 replay, the JVP prediction and coordinate interference
run on them exactly as on our own checkpoints.

The authors' architecture is ours (RoPE, SwiGLU, non-affine RMSNorm, no biases, tied embeddings),
so the mapping is a renaming plus two splits: OLMo fuses the query, key and value projections into
`att_proj` (rows in that order) and the SwiGLU's two input projections into `ff_proj` (first half
the value, second half the gate: `x, gate = x.chunk(2); silu(gate) * x`). AdamW is elementwise, so
its moments split exactly like the weights they belong to. The rate of the next update comes from
the scheduler named in config.yaml, evaluated as OLMo's trainer does (`get_lr(lr, global step of
the update, max steps)`); the parameter groups, weight decay, betas and eps come from optim.pt.
Only what this mapping reproduces is accepted: any other architecture option is refused by name.

Every file is read with `torch.load(weights_only=True)`: no pickled code runs. train.pt holds
NumPy's RNG state, so NumPy's array reconstruction (data, not code) is allowed for that file alone.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..errors import SuiteError
from .revisions import OLMO_STATE_FILE

# (key, the value this mapping reproduces): anything else changes the network's function
REQUIRED = {"block_type": "sequential", "activation_type": "swiglu", "layer_norm_type": "rms",
            "layer_norm_with_affine": False, "rope": True, "alibi": False, "include_bias": False,
            "attention_layer_norm": False, "clip_qkv": None, "scale_logits": False, "embedding_layer_norm": False,
            "norm_after": False, "block_group_size": 1}
DROPOUTS = ("attention_dropout", "residual_dropout", "embedding_dropout")
SCHEDULERS = ("constant", "constant_with_warmup", "linear_with_warmup", "cosine_with_warmup",
              "inverse_sqrt_with_warmup", "trapezoidal")


@dataclass(frozen=True)
class OlmoConfig:
    """What config.yaml says about the network and the schedule of its learning rate."""

    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    intermediate: int  # the SwiGLU's hidden width: half of ff_proj's rows
    rows: int  # embedding rows (OLMo pads the vocabulary: embedding_size)
    vocab_size: int
    context: int
    rope_theta: float
    norm_eps: float
    tied: bool
    eos_token_id: int | None
    dropout: float
    precision: str
    schedule: "OlmoSchedule"

    @classmethod
    def read(cls, path: Path) -> "OlmoConfig":
        file = Path(path) / "config.yaml"
        try:
            cfg = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise SuiteError(f"{file}: not an OLMo config ({type(e).__name__}: {e})") from None
        return cls.from_dict(cfg, str(file))

    @classmethod
    def from_dict(cls, cfg: dict, file: str = "config.yaml") -> "OlmoConfig":
        try:
            m, opt = cfg["model"], cfg["optimizer"]
        except (KeyError, TypeError) as e:
            raise SuiteError(f"{file}: not an OLMo config (no {e})") from None
        for key, want in REQUIRED.items():
            if m.get(key, want) != want:
                raise SuiteError(f"{file}: model.{key} is {m[key]!r}; an OLMo checkpoint is read only with "
                                 f"{key}: {want!r} (the paper's architecture)")
        if opt.get("name", "adamw") != "adamw":
            raise SuiteError(f"{file}: optimizer.name is {opt['name']!r}; only AdamW states are read")
        try:
            d, heads = int(m["d_model"]), int(m["n_heads"])
            kv = 1 if m.get("multi_query_attention") else int(m.get("n_kv_heads") or heads)
            hidden = m.get("mlp_hidden_size") or int(m.get("mlp_ratio", 4) * d)
            duration = cfg.get("max_duration")
            max_steps = int(duration) if isinstance(duration, (int, float)) or str(duration).isdigit() else None
            return cls(d, heads, kv, int(m["n_layers"]), hidden // 2, int(m.get("embedding_size") or m["vocab_size"]),
                       int(m["vocab_size"]), int(m["max_sequence_length"]), float(m.get("rope_theta", 10_000)),
                       float(m.get("layer_norm_eps", 1e-5)), bool(m.get("weight_tying", True)), m.get("eos_token_id"),
                       max(float(m.get(k) or 0.0) for k in DROPOUTS), str(cfg.get("precision") or "fp32"),
                       OlmoSchedule(float(opt["learning_rate"]), dict(cfg.get("scheduler") or {"name": "constant"}),
                                    max_steps, str(file)))
        except (KeyError, TypeError, ValueError) as e:
            raise SuiteError(f"{file}: model or optimizer section incomplete ({type(e).__name__}: {e})") from None

    def llama_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=self.rows, hidden_size=self.d_model, intermediate_size=self.intermediate,
                           num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
                           num_key_value_heads=self.n_kv_heads, max_position_embeddings=self.context,
                           rms_norm_eps=self.norm_eps, tie_word_embeddings=self.tied, attention_bias=False, mlp_bias=False,
                           bos_token_id=self.eos_token_id, eos_token_id=self.eos_token_id, pad_token_id=None,
                           use_cache=False, rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})



@dataclass(frozen=True)
class OlmoSchedule:
    """The learning rate as config.yaml schedules it: a pure function of the update, like ours."""

    lr: float
    scheduler: dict
    max_steps: int | None  # max_duration, where it is a number of steps
    file: str = "config.yaml"

    def lr_at(self, step: int) -> float:
        """The rate OLMo's trainer sets for update `step` (its global step after the increment)."""
        s, lr0, file = self.scheduler, self.lr, self.file
        name, warm = s.get("name", "cosine_with_warmup"), int(s.get("t_warmup") or 0)
        if s.get("units", "steps") != "steps":
            raise SuiteError(f"{file}: scheduler.units is {s['units']!r}; only a schedule in steps is replayed")
        if name not in SCHEDULERS:
            raise SuiteError(f"{file}: scheduler.name {name!r} is not one of {', '.join(SCHEDULERS)}")
        if name == "constant":
            return lr0
        if step < warm:
            floor = s.get("warmup_min_lr")
            floor = lr0 * 0.1 if floor is None else float(floor)
            return floor + (lr0 - floor) * min(step, warm) / warm
        if name == "constant_with_warmup":
            return lr0
        if name == "inverse_sqrt_with_warmup":
            return lr0 * math.sqrt(warm / max(warm, step))
        max_steps = int(s["t_max"]) if s.get("t_max") is not None else self.max_steps
        if max_steps is None:
            raise SuiteError(f"{file}: max_duration is not a number of steps and scheduler.t_max is not set")
        eta_min = lr0 * float(s.get("alpha_f", 0.1))
        if step >= max_steps:
            return eta_min
        if name == "trapezoidal":  # the authors' fork: flat from the warm-up to t_cooldown, then linear
            start = int(s["t_cooldown"])
            return lr0 if step < start else lr0 - (step - start) * (lr0 - eta_min) / (max_steps - start)
        t, span = step - warm, max_steps - warm
        if name == "linear_with_warmup":
            return lr0 - (lr0 - eta_min) * t / span
        return eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * t / span)) / 2


def pieces(cfg: OlmoConfig) -> dict[str, list[tuple[str, int, int]]]:
    """OLMo parameter name -> [(our parameter name, first row, end row)]: where each block of rows goes."""
    d, kv = cfg.d_model, cfg.n_kv_heads * (cfg.d_model // cfg.n_heads)
    h = cfg.intermediate
    out = {"transformer.wte.weight": [("model.embed_tokens.weight", 0, cfg.rows)]}
    if not cfg.tied:
        out["transformer.ff_out.weight"] = [("lm_head.weight", 0, cfg.rows)]
    for i in range(cfg.n_layers):
        src, dst = f"transformer.blocks.{i}.", f"model.layers.{i}."
        out[src + "att_proj.weight"] = [(dst + "self_attn.q_proj.weight", 0, d), (dst + "self_attn.k_proj.weight", d, d + kv),
                                        (dst + "self_attn.v_proj.weight", d + kv, d + 2 * kv)]
        out[src + "attn_out.weight"] = [(dst + "self_attn.o_proj.weight", 0, d)]
        out[src + "ff_proj.weight"] = [(dst + "mlp.up_proj.weight", 0, h), (dst + "mlp.gate_proj.weight", h, 2 * h)]
        out[src + "ff_out.weight"] = [(dst + "mlp.down_proj.weight", 0, d)]
    return out


def split(name: str, tensor: torch.Tensor, where: dict) -> dict[str, torch.Tensor]:
    return {ours: tensor[a:b] for ours, a, b in where[name]}


def clean(name: str) -> str:
    """A parameter name as the unwrapped model has it: without the prefixes that FSDP and
    torch.compile add to the names they save."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", "")


def load_file(path: Path, allow_numpy: bool = False):
    """torch.load with weights_only; a file that needs more (pickled objects) is refused by name."""
    import numpy as np

    rebuild = np._core.multiarray._reconstruct  # pickled as numpy.core.* by NumPy 1, numpy._core.* by 2
    safe = [rebuild, (rebuild, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            np.dtypes.UInt32DType] if allow_numpy else []
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=not allow_numpy)
    except pickle.UnpicklingError as e:
        first = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise SuiteError(f"{path}: needs more than tensors to load ({first}); refused: loading it would run "
                         "pickled code") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise SuiteError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def check_global_step(path: Path, step: int, label: str) -> None:
    """The revision named for `step` holds that step (train.pt's global_step): else the replay
    would take the rate of another update."""
    file = Path(path) / "train.pt"
    state = load_file(file, allow_numpy=True)
    if not isinstance(state, dict) or "global_step" not in state:
        raise SuiteError(f"{file}: no global_step: not an OLMo trainer state")
    if int(state["global_step"]) != step:
        raise SuiteError(f"{label} holds global step {int(state['global_step'])}, not {step}: the replay would take "
                         "the wrong learning rate")


def load_model(path: Path, dtype=torch.float32):
    """Our Llama model with the checkpoint's weights; the non-affine norms keep their initial
    weight 1, frozen, and a tied unembedding is the embedding itself."""
    from transformers import LlamaForCausalLM

    from ..train.model import freeze_norms

    cfg = OlmoConfig.read(path)
    where = pieces(cfg)
    state = {clean(k): v for k, v in load_file(Path(path) / "model.pt").items()}
    missing, extra = set(where) - set(state), set(state) - set(where)
    if missing or extra:
        raise SuiteError(f"{Path(path) / 'model.pt'}: does not match config.yaml (missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(extra)[:4]})")
    ours = {k: v for name, t in state.items() for k, v in split(name, t, where).items()}
    model = LlamaForCausalLM._from_config(cfg.llama_config(), attn_implementation="sdpa", dtype=dtype)
    missing_here = model.load_state_dict(ours, strict=False).missing_keys
    if any("norm" not in k and k != "lm_head.weight" for k in missing_here):
        raise SuiteError(f"{Path(path) / 'model.pt'}: leaves {missing_here[:4]} unset")
    return freeze_norms(model).to(dtype).eval()


def optimizer_state(path: Path, model) -> tuple[list[list[str]], dict]:
    """(our parameter names of each of OLMo's groups, a torch AdamW state dict over them in that
    order): built once per checkpoint, loaded into a fresh optimizer per replayed batch."""
    cfg = OlmoConfig.read(path)
    where = pieces(cfg)
    file = Path(path) / OLMO_STATE_FILE
    saved = load_file(file)
    try:
        groups, state = saved["param_groups"], saved["state"]
    except (KeyError, TypeError):
        raise SuiteError(f"{file}: not an optimizer state dict") from None
    names_of, torch_state, torch_groups, index = [], {}, [], 0
    for g in groups:
        # a plain optimizer's state is keyed by position (OLMo keeps the names in param_names); FSDP's by name
        keys, names = g.get("params", []), g.get("param_names") or g.get("params", [])
        if g.get("amsgrad"):
            raise SuiteError(f"{file}: AMSGrad state (amsgrad: true) is not replayed; only AdamW's moments are read")
        mine, ids = [], []
        for key, name in zip(keys, map(clean, names)):
            if name not in where:
                raise SuiteError(f"{file}: parameter {name!r} is not in the model of config.yaml")
            s = state.get(key, {})
            for ours, a, b in where[name]:
                mine.append(ours)
                if s:
                    torch_state[index] = {"step": s["step"].float().reshape(()).clone(),
                                          "exp_avg": s["exp_avg"][a:b].float().clone(),
                                          "exp_avg_sq": s["exp_avg_sq"][a:b].float().clone()}
                ids.append(index)
                index += 1
        names_of.append(mine)
        torch_groups.append({"params": ids, "lr": cfg.schedule.lr, "betas": tuple(g.get("betas", (0.9, 0.999))),
                             "eps": float(g.get("eps", 1e-8)), "weight_decay": float(g.get("weight_decay", 0.0)),
                             "amsgrad": False, "maximize": False, "foreach": None,
                             "capturable": False, "differentiable": False, "fused": None, "decoupled_weight_decay": True})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    covered = {n for names in names_of for n in names}
    if covered != trainable:
        raise SuiteError(f"{file}: its groups cover {len(covered)} of the model's {len(trainable)} trained tensors "
                         f"(not covered: {sorted(trainable - covered)[:4]})")
    return names_of, {"state": torch_state, "param_groups": torch_groups}


def make_optimizer(model, names_of: list[list[str]], state: dict) -> torch.optim.AdamW:
    """torch's AdamW (OLMo's AdamW is torch's) over `model` in OLMo's groups, with the checkpoint's moments."""
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([{"params": [params[n] for n in names]} for names in names_of])
    optimizer.load_state_dict(state)
    return optimizer


def write_unsharded(out: Path, model, config: dict, step: int, optimizer: torch.optim.Optimizer | None = None,
                    by_name: bool = False) -> Path:
    """The inverse mapping: `model` (and its AdamW state) as an OLMo unsharded checkpoint at `out`,
    with `config` as config.yaml: what the tests and benchmarks build OLMo-format suites from.
    by_name: the optimizer state keyed by parameter name, as FSDP saves it, else by position with
    OLMo's param_names, as a plain or DDP optimizer does."""
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    where = pieces(OlmoConfig.read(out))
    ours = dict(model.named_parameters())

    def fused(name, of=lambda p: p.detach()):
        return torch.cat([of(ours[o]) for o, *_ in where[name]])

    torch.save({n: fused(n) for n in where}, out / "model.pt")
    torch.save({"global_step": step, "rng": {"numpy": np.random.get_state()}}, out / "train.pt")
    if optimizer is not None:
        first = {id(ours[w[0][0]]): n for n, w in where.items()}
        state, groups = {}, []
        for g in optimizer.param_groups:
            names = [first[id(p)] for p in g["params"] if id(p) in first]
            keys = names if by_name else list(range(len(state), len(state) + len(names)))
            for key, n in zip(keys, names):
                s = optimizer.state.get(ours[where[n][0][0]])
                state[key] = s and {"step": s["step"].clone(), "exp_avg": fused(n, lambda p: optimizer.state[p]["exp_avg"]),
                                    "exp_avg_sq": fused(n, lambda p: optimizer.state[p]["exp_avg_sq"])}
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": keys, "param_names": names})
        torch.save({"state": {k: v for k, v in state.items() if v}, "param_groups": groups}, out / OLMO_STATE_FILE)
    return out
