"""The one place where model sizes are defined.

Paper sizes follow Mircea et al. (2025), table in docs/method.md section 2: OLMo-style blocks whose
MLP hidden size equals d_model before the SwiGLU split, so a block holds 5.5 d^2 weights.
Tiny sizes are the same architecture shrunk until a CPU trains it past its loss deceleration in
minutes; their names give the non-embedding parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    lr: float
    context: int

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU intermediate width: half of OLMo's mlp_hidden_size (= d_model, mlp_ratio 1)."""
        return max(1, self.d_model // 2)

    def non_embedding_params(self) -> int:
        d, h = self.d_model, self.mlp_hidden
        return self.n_layers * (4 * d * d + 3 * d * h)

    def total_params(self, vocab_size: int) -> int:
        """Trainable parameters with the tied embedding counted once (norms are non-affine)."""
        return vocab_size * self.d_model + self.non_embedding_params()


PAPER_SIZES = {
    s.name: s
    for s in [
        Size("14M", 256, 4, 4, 1.26e-3, 2048),
        Size("37M", 512, 8, 8, 9.71e-4, 2048),
        Size("78M", 768, 12, 12, 8.01e-4, 2048),
        Size("144M", 1024, 16, 16, 6.81e-4, 2048),
        Size("285M", 1536, 16, 16, 5.67e-4, 2048),
        Size("472M", 2048, 16, 16, 4.87e-4, 2048),
    ]
}

TINY_SIZES = {
    s.name: s
    for s in [
        Size("tiny-1k", 16, 1, 2, 3e-3, 512),
        Size("tiny-3k", 16, 2, 2, 3e-3, 512),
        Size("tiny-6k", 24, 2, 2, 3e-3, 512),
        Size("tiny-11k", 32, 2, 2, 3e-3, 512),
        Size("tiny-25k", 48, 2, 4, 3e-3, 512),
        Size("tiny-45k", 64, 2, 4, 3e-3, 512),
        Size("tiny-57k", 72, 2, 4, 3e-3, 512),
        Size("tiny-100k", 96, 2, 4, 3e-3, 512),
        Size("tiny-180k", 128, 2, 4, 3e-3, 512),
        Size("tiny-360k", 128, 4, 4, 3e-3, 512),
        Size("tiny-1.2M", 192, 6, 6, 2e-3, 512),
        Size("tiny-4.7M", 384, 6, 6, 1.5e-3, 512),
    ]
}

PRESETS: dict[str, Size] = {**PAPER_SIZES, **TINY_SIZES}


def resolve(name: str, custom: dict[str, dict] | None = None, default_lr: float = 3e-3) -> Size:
    """Look a size up in the user's custom sizes first, then the presets."""
    custom = custom or {}
    if name in custom:
        c = custom[name]
        return Size(name, c["d_model"], c["n_layers"], c["n_heads"], c.get("lr", default_lr), c.get("context", 2048))
    if name in PRESETS:
        return PRESETS[name]
    raise KeyError(name)
