"""Do the visual tokens carry what the captions fail to bind? Linear read-outs of a model's image tokens.

The caption probe (``caption_probe.py``) says what the frozen LLM *says* about a scene: after 750 stage-1
steps it names colours and shapes ~90% of the time but binds them to the right object and place far less
often. This asks whether the binding is in the visual tokens at all. For fresh scenes from the world's
sampler it fits a ridge read-out (closed form, dual, L2 chosen on a validation split) from the features to
"what colour / shape / size is the object in grid cell c" (one read-out per cell and attribute, "no object"
a class), and scores held-out scenes on the occupied cells:

- ``cnn``: the vision tower's token grid (what the abstractor reads);
- ``tokens``: the abstractor's output (what the LLM reads, ``num_queries + 1`` vectors);
- ``llm@L``: the LLM's state after layer L at the last prompt position (``--layers``).

Low ``tokens`` with high ``cnn`` means the abstractor loses the binding; low both, the vision features. High
``tokens`` is information, not readability: compare ``--reset-abstractor`` (an untrained abstractor, whose tokens
a supervised read-out also decodes well; benchmarks/NOTES.md §18). Then the caption probe's low binding means
stage 1 has not yet made the information readable to the frozen LLM.

    python benchmarks/token_probe.py runs/demo-long/stage1/model --train 3000 --test 1000
"""

from __future__ import annotations

import argparse
import random

import torch

from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.models import load_model
from owl.processing import OwlProcessor
from owl.world.config import GRID, WorldConfig
from owl.world.render import render
from owl.world.scene import Scene, sample_scene

ATTRS = ("colour", "kind", "size")


@torch.no_grad()
def features(
    model: torch.nn.Module, proc: OwlProcessor, scenes: list[Scene], cfg: WorldConfig, layers: list[int]
) -> dict[str, torch.Tensor]:
    """{"cnn": (N, D1), "tokens": (N, D2), "llm@L": (N, d_llm) ...} float64.

    ``llm@L`` is the LLM's hidden state after layer L at the last prompt position (the caption probe's prompt:
    the image alone in a user turn, then the assistant's turn opens): what the frozen LLM has gathered from the
    image at the moment it starts to describe it, which is where a reading it cannot bind would show."""
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(scenes), 32):
        chunk = scenes[i : i + 32]
        samples = [
            Sample(messages=[Message("user", IMAGE_TOKEN)], images=[render(s, cfg)], source="probe") for s in chunk
        ]
        batch = proc(samples, for_generation=True)
        f = model.vision(batch["pixel_values"])
        out.setdefault("cnn", []).append(f.flatten(1).double())
        out.setdefault("tokens", []).append(model.abstractor(f).flatten(1).double())
        if layers:
            embeds = model.embed(batch["input_ids"], batch["pixel_values"], batch.get("image_counts"))
            hidden = model.llm(
                inputs_embeds=embeds, attention_mask=batch["attention_mask"], output_hidden_states=True, use_cache=False
            ).hidden_states
            for layer in layers:
                out.setdefault(f"llm@{layer}", []).append(hidden[layer][:, -1].double())
    return {k: torch.cat(v) for k, v in out.items()}


def labels(scenes: list[Scene], attr: str, values: list[str]) -> torch.Tensor:
    """(N, cells) class index per cell: 0 = empty, 1 + values.index(v) otherwise."""
    out = torch.zeros(len(scenes), GRID * GRID, dtype=torch.long)
    for i, s in enumerate(scenes):
        for o in s.objects:
            out[i, o.cell] = 1 + values.index(getattr(o, attr))
    return out


def ridge_fit(k: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Dual ridge coefficients from the training kernel K = X X^T: (K + lam I)^-1 Y. Scores on other rows are
    K_other @ alpha, so one kernel per feature set serves every attribute and every L2 strength."""
    return torch.linalg.solve(k + lam * torch.eye(len(k), dtype=k.dtype), y)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--layers", default="8,16,24,30", help="LLM layers to read at the last prompt position ('' = none)")
    p.add_argument(
        "--reset-abstractor", action="store_true", help="re-initialise the abstractor: the untrained baseline"
    )
    args = p.parse_args()
    model, proc = load_model(args.model).eval(), OwlProcessor.from_pretrained(args.model)
    if args.reset_abstractor:
        torch.manual_seed(args.seed)
        model.abstractor.reset_parameters()
    cfg = WorldConfig()
    rng = random.Random(args.seed)
    scenes = [sample_scene(rng, cfg) for _ in range(args.train + args.test)]
    feats = features(model, proc, scenes, cfg, [int(v) for v in args.layers.split(",") if v])
    n_fit = int(args.train * 0.8)
    tr, va, te = slice(0, n_fit), slice(n_fit, args.train), slice(args.train, None)
    vocab = {"colour": list(cfg.colours), "kind": list(cfg.shapes), "size": list(cfg.sizes)}
    ys = {a: labels(scenes, a, vocab[a]) for a in ATTRS}
    for name, x in feats.items():
        x = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-6)
        k_all = x @ x[: args.train].T  # (N, train): every kernel the fits and scores below need
        k_fit, k_va, k_te = k_all[tr, :n_fit], k_all[va, :n_fit], k_all[te]
        right: dict[str, torch.Tensor] = {}
        for a in ATTRS:
            y = ys[a]
            n_cls = len(vocab[a]) + 1
            onehot = torch.nn.functional.one_hot(y, n_cls).double().flatten(1)  # (N, cells * classes)
            accs = {}
            for lam in (1e1, 1e2, 1e3, 1e4, 1e5):
                pred = (k_va @ ridge_fit(k_fit, onehot[tr], lam)).view(-1, GRID * GRID, n_cls).argmax(-1)
                accs[lam] = float(((pred == y[va]) & (y[va] > 0)).sum() / (y[va] > 0).sum())
            lam = max(accs, key=accs.get)
            scores = k_te @ ridge_fit(k_all[: args.train], onehot[: args.train], lam)
            right[a] = (scores.view(-1, GRID * GRID, n_cls).argmax(-1) == y[te])[y[te] > 0]
        whole = right["colour"] & right["kind"] & right["size"]
        pair = right["colour"] & right["kind"]
        rates = {"colour": right["colour"], "shape": right["kind"], "size": right["size"], "colour+shape": pair}
        shown = " ".join(f"{k}@place {100 * v.double().mean():.1f}" for k, v in rates.items())
        print(f"{name:8s} dims {x.shape[1]:6d}: {shown} whole {100 * whole.double().mean():.1f} ({len(whole)} objects)")


if __name__ == "__main__":
    main()
