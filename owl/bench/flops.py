"""Model FLOPs of one training step, counted from the shapes of an ``OwlModel`` and a batch: the numerator of MFU.

Why analytic rather than measured: ``torch.utils.flop_counter.FlopCounterMode`` would have to run beside every
timed step (slowing it), it misses the fused CPU attention kernel, and a 7B shape must be countable on the meta
device without weights. So each part is counted from its shapes, and a test checks the count against
``FlopCounterMode`` over a real forward and backward of tiny models (``tests/bench/test_train.py``).

The convention is model FLOPs (PaLM's MFU): what the model needs, not what the hardware does.

* Only matmul-like work counts (linear layers, convolutions, the two attention products), as ``FlopCounterMode``
  does; norms, activations, softmax, embedding lookups and the loss are left out (a few percent at most).
* Attention is counted over the whole padded ``T x T`` square: with a padding mask the kernels compute all of it.
* Activation-checkpointing recompute is not counted (it lowers MFU, which is the point of reporting it).
* Padding tokens count: the model computes them (``owl bench train`` reports real and padded tokens apart).

Backward, per matmul ``Y = X W``: ``dX`` costs one forward when the gradient must flow on to ``X``, ``dW`` one
forward when ``W`` trains. Hence a module whose weights train costs fwd + 2 fwd; a frozen module that gradients
still cross (the frozen LLM of stage 1, below which the abstractor trains) fwd + 1 fwd; a frozen module with
nothing trainable below it fwd only (the frozen vision tower even runs without autograd); LoRA: the frozen base
weights cost the input gradient only, the adapters' small matmuls fwd + 2 fwd. The first matmul of a part whose
input needs no gradient (a CNN's stem on the pixels, the abstractor's ``in_proj`` over a frozen tower, the
LLM's first q/k/v projections on a text-only batch) skips ``dX``. Attention's two weightless products
(``S = Q K^T``, ``O = P V``) cost, in backward, half their forward for each of ``dV``, ``dP``, ``dQ`` and ``dK``
that is needed.

Against ``FlopCounterMode`` (attention on the math backend, convolution backward with ``groups`` honoured: see the
test) the totals agree within 1% on the tiny CLIP, EfficientNet and GPT-2 models, per part too. What is left:
a CNN tower's backward is taken as 2x its forward, charging the stem an input gradient the pixels do not need;
matmuls outside the model's layers (the rotary embedding's frequency outer product) are not counted; the LLM's
first q/k/v projections are taken to read an input with or without gradients as a whole (a text-only batch of a
LoRA model has none), not per projection.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from owl.constants import IGNORE_INDEX
from owl.models.owl import OwlModel

PARTS = ("vision", "abstractor", "llm")
# Names of attention input projections in common HF decoders, and which of q, k, v each produces.
_QKV_ROLES: dict[str, str] = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "query": "q",
    "key": "k",
    "value": "v",
    "c_attn": "qkv",
    "qkv_proj": "qkv",
    "query_key_value": "qkv",
    "Wqkv": "qkv",
    "W_pack": "qkv",
}


@dataclass
class Cost:
    """Forward and backward FLOPs of one part."""

    forward: float = 0.0
    backward: float = 0.0

    def matmul(self, flops: float, weight_trains: bool, input_grad: bool) -> None:
        """A matmul of ``flops`` forward: its backward is ``dW`` if the weight trains plus ``dX`` if needed."""
        self.forward += flops
        self.backward += flops * (int(weight_trains) + int(input_grad))

    def attention(self, n: int, width: int, n_q: int, n_k: int, dq: bool, dk: bool, dv: bool) -> None:
        """``softmax(Q K^T) V`` for ``n`` sequences, ``width`` = heads x head_dim; which inputs need gradients."""
        half = 2.0 * n * n_q * n_k * width  # one of the two products
        self.forward += 2 * half
        self.backward += half * (int(dq) + int(dk) + int(dq or dk) + int(dv))

    def scaled(self, k: float) -> Cost:
        return Cost(self.forward * k, self.backward * k)

    def as_dict(self) -> dict[str, float]:
        return {"forward": self.forward, "backward": self.backward, "total": self.forward + self.backward}


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _matmuls(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The linear layers under ``module`` (``nn.Linear`` and GPT-2's ``Conv1D``; peft adapters are plain Linears)."""
    from transformers.pytorch_utils import Conv1D

    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, Conv1D)):
            yield name, m


def _linear_flops(m: nn.Module, tokens: int) -> float:
    return 2.0 * m.weight.numel() * tokens


# ---------------------------------------------------------------------------------------------- vision

_CNN_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[int, int]] = weakref.WeakKeyDictionary()


def measured_forward_flops(tower: nn.Module, image_size: int) -> int:
    """Forward FLOPs of ``tower`` on one image, measured once with ``FlopCounterMode`` (cached per tower and size).

    For a CNN, whose shapes follow from kernels, strides and paddings block by block, running it once is simpler
    and surer than a formula; it is cheap (one image, no autograd) and works on the meta device too. Eval mode
    for the probe so BatchNorm statistics are not updated; every module's mode is restored after.
    """
    sizes = _CNN_CACHE.setdefault(tower, {})
    if image_size not in sizes:
        from torch.utils.flop_counter import FlopCounterMode

        modes = {m: m.training for m in tower.modules()}
        param = next(tower.parameters())
        x = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
        tower.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                tower(x)
        finally:
            for m, mode in modes.items():
                m.train(mode)
        sizes[image_size] = int(counter.get_total_flops())
    return sizes[image_size]


def vision_flops(model: OwlModel, n_images: int, image_size: int, backward: bool) -> Cost:
    """The tower over ``n_images`` images. A frozen tower runs without autograd (``OwlModel.encode_images``)."""
    tower = model.vision
    trains = backward and _trains(tower)
    hf = getattr(getattr(tower, "model", None), "config", None)
    if hf is None or not hasattr(hf, "patch_size"):  # a CNN: measured forward, backward 2x when it trains
        fwd = float(measured_forward_flops(tower, image_size))
        return Cost(fwd, 2 * fwd if trains else 0.0).scaled(n_images)
    cost = Cost()
    tokens = tower.num_tokens
    for m in tower.modules():
        if isinstance(m, nn.Conv2d):  # the patch embedding: one kernel application per output position
            k, s, p = m.kernel_size[0], m.stride[0], m.padding[0] if isinstance(m.padding, tuple) else 0
            positions = ((image_size + 2 * p - k) // s + 1) ** 2
            cost.matmul(2.0 * m.weight.numel() * positions, trains and m.weight.requires_grad, False)
    for _, m in _matmuls(tower):
        cost.matmul(_linear_flops(m, tokens), trains and m.weight.requires_grad, trains)
    width = hf.hidden_size  # heads x head_dim
    for _ in range(hf.num_hidden_layers):
        cost.attention(1, width, tokens, tokens, trains, trains, trains)
    return cost.scaled(n_images)


# ------------------------------------------------------------------------------------------ abstractor


def abstractor_flops(model: OwlModel, n_images: int, vision_trains: bool, backward: bool) -> Cost:
    """Per image: ``in_proj`` over the T vision tokens, per layer the Q queries' projections, keys and values over
    the Q + T tokens they attend to, attention of Q over Q + T, the SwiGLU MLP on Q; then ``visual_fc``."""
    ab = model.abstractor
    n_q = ab.query_tokens.shape[1]
    n_v = model.vision.num_tokens
    width = ab.query_tokens.shape[2]
    # Gradients reach the layers' inputs when anything at or below them trains.
    flowing = backward and (vision_trains or _trains(ab))
    cost = Cost()
    if isinstance(ab.in_proj, nn.Linear):
        cost.matmul(_linear_flops(ab.in_proj, n_v), backward and ab.in_proj.weight.requires_grad, vision_trains)
    for layer in ab.layers:
        for name, m in _matmuls(layer):
            tokens = n_q + n_v if name in ("key", "value") else n_q
            cost.matmul(_linear_flops(m, tokens), backward and m.weight.requires_grad, flowing)
        cost.attention(1, width, n_q, n_q + n_v, flowing, flowing, flowing)
    cost.matmul(_linear_flops(ab.visual_fc, n_q), backward and ab.visual_fc.weight.requires_grad, flowing)
    return cost.scaled(n_images)


# ------------------------------------------------------------------------------------------------- LLM


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The repeated block stack of a transformers causal LM: its ``nn.ModuleList`` holding the most parameters."""
    lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(lm).__name__} has no stack of decoder layers (nn.ModuleList)")
    return max(lists, key=lambda ml: sum(p.numel() for p in ml.parameters()))


def _attention_width(hf: Any) -> int:
    """Query heads x head dim (HF configs alias ``num_attention_heads``/``hidden_size`` for GPT-2's names)."""
    heads = hf.num_attention_heads
    return heads * (getattr(hf, "head_dim", None) or hf.hidden_size // heads)


def _role(name: str) -> str | None:
    for part in name.split("."):
        if part in _QKV_ROLES:
            return _QKV_ROLES[part]
    return None


def llm_flops(model: OwlModel, batch: int, width: int, logit_positions: int, input_grad: bool, backward: bool) -> Cost:
    """Decoder layers over ``batch x width`` tokens (2 x matmul params per token, attention over the T x T square),
    then the LM head over the ``logit_positions`` per sample that need logits. ``input_grad``: the input
    embeddings need gradients (visual tokens from a trainable abstractor)."""
    lm = model.causal_lm
    tokens = batch * width
    flowing = backward and input_grad
    cost = Cost()
    for layer in decoder_layers(lm):
        layer_trains = backward and _trains(layer)
        # Which of q, k, v carry gradients: their input does, or their own (LoRA) weights train.
        grads = {r: False for r in "qkv"}
        found = False
        for name, m in layer.named_modules():
            role = _QKV_ROLES.get(name.rsplit(".", 1)[-1]) if name else None
            if role:
                found = True
                for r in role:
                    grads[r] = grads[r] or flowing or (backward and _trains(m))
        if not found:  # an unknown attention layout: assume gradients wherever the layer has any
            grads = {r: flowing or layer_trains for r in "qkv"}
        for name, m in _matmuls(layer):
            # The q/k/v projections read the layer's input; a LoRA B reads its A's output, which A's training needs.
            x_grad = flowing if _role(name) and "lora_B" not in name else (flowing or layer_trains)
            cost.matmul(_linear_flops(m, tokens), backward and m.weight.requires_grad, x_grad)
        cost.attention(batch, _attention_width(lm.config), width, width, grads["q"], grads["k"], grads["v"])
        flowing = flowing or layer_trains
    head = lm.get_output_embeddings()
    if head is not None:
        cost.matmul(_linear_flops(head, batch * logit_positions), backward and head.weight.requires_grad, flowing)
    return cost


def logit_positions(model: OwlModel, labels: torch.Tensor | None, return_logits: bool) -> int:
    """Positions per sample the LM head runs at: with labels and ``return_logits=False``, only those some sample
    has a target for (``OwlModel.forward`` passes them as ``logits_to_keep``); else every position."""
    if labels is None or return_logits or not model._llm_keeps_logits:
        return int(labels.shape[1]) if labels is not None else -1
    return int((labels[:, 1:] != IGNORE_INDEX).any(dim=0).sum())


# ---------------------------------------------------------------------------------------------- a step


def step_flops(
    model: OwlModel,
    batch: Mapping[str, Any],
    *,
    return_logits: bool = False,
    keep_all_in_graph: bool = False,
    backward: bool = True,
) -> dict[str, dict[str, float]]:
    """FLOPs of ``model(**batch)`` (+ its backward, when the batch has labels and ``backward``), per part.

    ``batch`` is a collated batch (``input_ids``, ``labels``, ``pixel_values``; tensors or anything with a
    ``shape``); trainability is read from the model's ``requires_grad`` flags, so call it after
    ``apply_trainable``. Returns ``{vision, abstractor, llm, total}``, each ``{forward, backward, total}``.
    """
    input_ids = batch["input_ids"]
    labels = batch.get("labels")
    pixels = batch.get("pixel_values")
    backward = backward and labels is not None
    n_images = 0 if pixels is None else int(pixels.shape[0])
    image_size = int(pixels.shape[-1]) if pixels is not None else model.config.vision.image_size
    if n_images == 0 and keep_all_in_graph and backward:
        n_images = 1  # OwlModel.embed runs one blank image to keep every parameter in the graph
    b, t = int(input_ids.shape[0]), int(input_ids.shape[1])
    vision_trains = backward and _trains(model.vision)
    visual_grad = backward and n_images > 0 and (vision_trains or _trains(model.abstractor))
    embed_trains = backward and model.llm.get_input_embeddings().weight.requires_grad
    positions = logit_positions(model, labels, return_logits)
    parts = {
        "vision": vision_flops(model, n_images, image_size, backward),
        "abstractor": abstractor_flops(model, n_images, vision_trains, backward),
        "llm": llm_flops(model, b, t, t if positions < 0 else positions, visual_grad or embed_trains, backward),
    }
    out = {k: v.as_dict() for k, v in parts.items()}
    out["total"] = {k: sum(out[p][k] for p in PARTS) for k in ("forward", "backward", "total")}
    return out


def add_flops(a: dict[str, dict[str, float]] | None, b: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The sum of two :func:`step_flops` results (micro-batches of one step, steps of a run)."""
    if a is None:
        return {k: dict(v) for k, v in b.items()}
    return {k: {kk: a[k][kk] + b[k][kk] for kk in v} for k, v in b.items()}
