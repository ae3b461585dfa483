"""The visual abstractor: a few learnable queries summarise an image for the LLM.

mPLUG-Owl's new module. Each layer lets the (normalised) queries attend to
themselves *and* to the image tokens, so the image is compressed into
``num_queries`` vectors; a linear layer maps them to the LLM width and a learned
end-of-image vector is appended: ``num_queries + 1`` tokens per image (65 in
the paper, against 257 ViT tokens or LLaVA-1.5's 576).

Faithful to the released code, including its quirks: the residual starts from
the *normalised* queries, the SwiGLU MLP has a LayerNorm inside, and the
image features are the same (un-updated) tensor for every layer, each layer
with its own key-side LayerNorm. One generalisation: when the vision width
differs from the abstractor width (e.g. a CNN with 1280 channels), a linear
``in_proj`` maps the image tokens first (absent when the widths match, so
reference checkpoints load unchanged).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from owl.config import AbstractorConfig


class SwiGLU(nn.Module):
    """w2(LN(SiLU(w1 x) * w3 x)), biases on all three projections."""

    def __init__(self, hidden: int, inner: int, eps: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, inner)
        self.w3 = nn.Linear(hidden, inner)
        self.ffn_ln = nn.LayerNorm(inner, eps=eps)
        self.w2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class AbstractorLayer(nn.Module):
    def __init__(self, cfg: AbstractorConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.competition = cfg.competition
        self.dropout = cfg.attention_dropout
        self.norm1 = nn.LayerNorm(h, eps=cfg.layer_norm_eps)  # on the queries
        self.normk = nn.LayerNorm(h, eps=cfg.layer_norm_eps)  # on the image tokens
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.out_proj = nn.Linear(h, h)
        self.norm2 = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.mlp = SwiGLU(h, cfg.intermediate_size, cfg.ffn_layer_norm_eps)

    def forward(self, x: torch.Tensor, image: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # x: (N, Q, H) queries, image: (N, T, H) vision tokens, bias: (Q, Q+T) added to the attention logits
        n, q_len, h = x.shape
        nh, hd = self.num_heads, h // self.num_heads
        q = self.norm1(x)
        image = self.normk(image)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (N, L, H) -> (N, nh, L, hd)
            return t.view(n, -1, nh, hd).transpose(1, 2)

        if self.competition:  # the queries read only the image, competing for its cells
            attn = compete(
                heads(self.query(q)),
                heads(self.key(image)),
                heads(self.value(image)),
                None if bias is None else bias[:, q_len:],
                dropout_p=self.dropout if self.training else 0.0,
            )
        else:
            kv = torch.cat([q, image], dim=1)  # (N, Q+T, H): queries attend to themselves and the image
            attn = F.scaled_dot_product_attention(
                heads(self.query(q)),
                heads(self.key(kv)),
                heads(self.value(kv)),
                attn_mask=bias,
                dropout_p=self.dropout if self.training else 0.0,
            )  # (N, nh, Q, hd)
        attn = attn.transpose(1, 2).reshape(n, q_len, h)
        x = q + self.out_proj(attn)  # residual from the normalised queries, as in the reference
        return x + self.mlp(self.norm2(x))


def compete(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """Slot-attention read: (N, nh, Q, hd) queries over (N, nh, T, hd) image keys/values -> (N, nh, Q, hd).

    The softmax runs over the queries (each cell splits its unit of attention among them), then each query
    averages the values with the weights it won, renormalised over the cells (eps keeps a query that won
    nothing finite: it reads ~0). ``dropout_p`` drops read weights as the reference's attention dropout does."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (N, nh, Q, T)
    if bias is not None:
        logits = logits + bias
    weights = logits.float().softmax(dim=-2).to(v.dtype)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)
    return F.dropout(weights, dropout_p) @ v


def locality_bias(num_queries: int, num_image: int, strength: float) -> torch.Tensor:
    """(Q, Q+T) additive attention bias: 0 among the queries, -strength x (distance / query spacing)^2 from a
    query's place on a square grid to each image cell's centre (a leading global token, T = g^2 + 1, gets 0).

    Distances are in units of the image's side, so any query grid works over any cell grid."""
    side = math.isqrt(num_queries)
    g = math.isqrt(num_image)
    extra = num_image - g * g
    if side * side != num_queries or extra not in (0, 1) or g == 0:
        raise ValueError(
            f"abstractor.locality needs a square grid of queries and of image tokens (optionally one global token "
            f"first); got {num_queries} queries over {num_image} image tokens"
        )
    centres_q = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    centres_i = (torch.arange(g, dtype=torch.float64) + 0.5) / g
    qy, qx = torch.meshgrid(centres_q, centres_q, indexing="ij")
    iy, ix = torch.meshgrid(centres_i, centres_i, indexing="ij")
    d2 = (qy.reshape(-1, 1) - iy.reshape(1, -1)) ** 2 + (qx.reshape(-1, 1) - ix.reshape(1, -1)) ** 2  # (Q, g*g)
    bias = torch.zeros(num_queries, num_queries + num_image, dtype=torch.float64)
    bias[:, num_queries + extra :] = -strength * d2 * side**2
    return bias.float()


class VisualAbstractor(nn.Module):
    """(N, T, C_vision) image tokens -> (N, num_queries + 1, d_llm) LLM-ready tokens."""

    def __init__(self, cfg: AbstractorConfig, vision_width: int, llm_width: int) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_queries, h))
        self.in_proj = nn.Linear(vision_width, h) if vision_width != h else nn.Identity()
        self.layers = nn.ModuleList([AbstractorLayer(cfg) for _ in range(cfg.num_layers)])
        self.visual_fc = nn.Linear(h, llm_width)
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, llm_width))
        self.out_norm = nn.RMSNorm(llm_width, eps=cfg.layer_norm_eps) if cfg.output_norm else None
        self.locality = cfg.locality
        self._bias: dict[tuple, torch.Tensor] = {}  # (T, device, dtype) -> locality bias, built once per shape
        self.reset_parameters()
        if cfg.init == "image-through":
            self.let_image_through()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """BERT-style init (normal 0.02, zero bias, unit LayerNorm).

        The released code zero-initialises the queries, which would keep all
        queries identical when training from scratch (nothing breaks the
        symmetry but dropout), so the queries get the same normal init here.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.query_tokens, std=std)
        nn.init.normal_(self.vit_eos, std=std)
        if self.out_norm is not None:
            nn.init.ones_(self.out_norm.weight)

    @torch.no_grad()
    def match_word_scale(self, word_embeddings: torch.Tensor) -> None:
        """Start the output gain at the RMS of the LLM's word embeddings, so visual tokens enter the LLM at the
        scale its layers expect of a token (a no-op without ``output_norm``)."""
        if self.out_norm is not None and not word_embeddings.is_meta:  # meta: shapes only, nothing to measure
            rms = word_embeddings.detach().float().pow(2).mean().sqrt()
            self.out_norm.weight.fill_(float(rms))

    @torch.no_grad()
    def let_image_through(self) -> None:
        """An init for training from scratch in which the image, not the queries, dominates the output.

        With the reference init every projection has std 0.02, so the attention output added to the residual
        (the *normalised* queries, unit variance) is ~100x smaller than it: at step 0 the visual tokens vary
        far more across queries than across images and the LLM first sees almost the same tokens for every
        image. Here the image path preserves variance: orthogonal ``in_proj``, value and output projections
        (gain 1), query/key projections at std 1/sqrt(width) (attention logits of unit scale, so each query
        starts attending to different image tokens), and the queries themselves at std 0.02 (before the
        layer norm, which rescales them, they only have to differ).
        """
        if isinstance(self.in_proj, nn.Linear):
            nn.init.orthogonal_(self.in_proj.weight)
        for layer in self.layers:
            assert isinstance(layer, AbstractorLayer)
            h = layer.query.in_features
            nn.init.orthogonal_(layer.value.weight)
            nn.init.orthogonal_(layer.out_proj.weight)
            nn.init.normal_(layer.query.weight, std=h**-0.5)
            nn.init.normal_(layer.key.weight, std=h**-0.5)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        image = self.in_proj(image_tokens)  # (N, T, H)
        x = self.query_tokens.expand(image.shape[0], -1, -1)  # (N, Q, H)
        bias = None
        if self.locality > 0:
            key = (image.shape[1], image.device, image.dtype)
            if key not in self._bias:
                self._bias[key] = locality_bias(x.shape[1], image.shape[1], self.locality).to(image.device, image.dtype)
            bias = self._bias[key]
        for layer in self.layers:
            x = layer(x, image, bias)
        x = self.visual_fc(x)  # (N, Q, D)
        eos = self.vit_eos.expand(x.shape[0], -1, -1)  # (N, 1, D)
        x = torch.cat([x, eos], dim=1)  # (N, Q+1, D)
        return x if self.out_norm is None else self.out_norm(x)
