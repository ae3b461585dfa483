"""The visual abstractor against the paper's equations, plus golden values for a fixed init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from owl.config import AbstractorConfig
from owl.models.abstractor import VisualAbstractor

CFG = AbstractorConfig(
    hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24, num_queries=3, attention_dropout=0.1
)


def reference(sd: dict, image: torch.Tensor, cfg: AbstractorConfig, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The abstractor as the spec describes it, in plain tensor algebra (no shared code with owl)."""
    n, h, heads = image.shape[0], cfg.hidden_size, cfg.num_heads
    hd = h // heads

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    def ln(x, name, eps):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]

    x = sd["query_tokens"].expand(n, -1, -1)
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        q = ln(x, p + "norm1", cfg.layer_norm_eps)
        kv = torch.cat([q, ln(image, p + "normk", cfg.layer_norm_eps)], dim=1)
        Q = lin(q, p + "query").view(n, -1, heads, hd).permute(0, 2, 1, 3)
        K = lin(kv, p + "key").view(n, -1, heads, hd).permute(0, 2, 1, 3)
        V = lin(kv, p + "value").view(n, -1, heads, hd).permute(0, 2, 1, 3)
        logits = torch.einsum("nhqd,nhkd->nhqk", Q, K) / math.sqrt(hd)
        a = torch.softmax(logits if bias is None else logits + bias, -1)
        att = torch.einsum("nhqk,nhkd->nhqd", a, V).permute(0, 2, 1, 3).reshape(n, -1, h)
        x = q + lin(att, p + "out_proj")
        y = ln(x, p + "norm2", cfg.layer_norm_eps)
        inner = F.silu(lin(y, p + "mlp.w1")) * lin(y, p + "mlp.w3")
        x = x + lin(ln(inner, p + "mlp.ffn_ln", cfg.ffn_layer_norm_eps), p + "mlp.w2")
    out = lin(x, "visual_fc")
    return torch.cat([out, sd["vit_eos"].expand(n, -1, -1)], dim=1)


def _model(seed=0, vision_width=16):
    torch.manual_seed(seed)
    m = VisualAbstractor(CFG, vision_width=vision_width, llm_width=8).eval()
    with torch.no_grad():  # perturb LayerNorms so they are not the identity
        for name, p in m.named_parameters():
            if "norm" in name or "ffn_ln" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return m


def test_matches_spec_equations():
    m = _model()
    image = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(image), reference(m.state_dict(), image, CFG), atol=1e-5, rtol=1e-4)


def test_output_shape_is_queries_plus_end_of_image():
    m = _model()
    out = m(torch.randn(3, 7, 16))
    assert out.shape == (3, CFG.num_queries + 1, 8)
    assert torch.equal(out[:, -1], m.vit_eos[0].expand(3, -1))


def test_in_proj_only_when_widths_differ():
    assert isinstance(_model().in_proj, torch.nn.Identity)
    m = _model(vision_width=40)
    assert m.in_proj.in_features == 40 and m(torch.randn(1, 6, 40)).shape == (1, 4, 8)


def test_golden_values_fixed_init():
    torch.manual_seed(0)
    m = VisualAbstractor(CFG, vision_width=16, llm_width=8).eval()
    image = torch.linspace(-1, 1, 2 * 5 * 16).view(2, 5, 16)
    with torch.no_grad():
        out = m(image)
    golden = torch.tensor(GOLDEN)
    torch.testing.assert_close(out[0, :, :4], golden, atol=1e-5, rtol=1e-4)


def test_dropout_only_in_training():
    m = _model()
    image = torch.randn(1, 5, 16)
    with torch.no_grad():
        assert torch.equal(m(image), m(image))
        m.train()
        torch.manual_seed(1)
        a = m(image)
        torch.manual_seed(2)
        assert not torch.allclose(a, m(image))


def test_queries_are_not_symmetric_at_init():
    m = VisualAbstractor(CFG, 16, 8)
    out = m(torch.randn(1, 5, 16))
    assert not torch.allclose(out[0, 0], out[0, 1])


@pytest.mark.parametrize("bad", [dict(num_queries=0), dict(hidden_size=10, num_heads=4), dict(attention_dropout=1.5)])
def test_config_validation(bad):
    with pytest.raises(ValueError, match="abstractor"):
        AbstractorConfig(**bad)


# owl's own output at commit time (seed 0, BERT-style init); guards against silent changes of init or math.
GOLDEN = [
    [-0.029732, 0.020745, 0.164657, -0.045573],
    [0.016256, -0.116178, 0.103768, -0.005768],
    [0.117637, 0.047276, 0.11294, -0.041539],
    [-0.014371, 0.033794, -0.039874, -0.004571],
]


def test_image_through_init_lets_the_image_dominate_the_visual_tokens():
    """Reference init: the tokens barely depend on the image (~1000x more spread across queries than across
    images); image-through: the image's share is ~100x larger, with the same architecture and parameter count."""
    import dataclasses

    ratios = {}
    for init in ("reference", "image-through"):
        torch.manual_seed(0)
        m = VisualAbstractor(dataclasses.replace(CFG, init=init), 48, 24).eval()
        with torch.no_grad():
            out = m(torch.randn(64, 9, 48))[:, :-1]
        ratios[init] = (out.mean(0).var(0).mean() / out.var(0).mean()).item()  # across queries / across images
    assert ratios["reference"] > 100 * ratios["image-through"] / 2 and ratios["image-through"] < 20
    with pytest.raises(ValueError, match="abstractor.init"):
        AbstractorConfig(init="zeros")


def test_output_norm_puts_visual_tokens_at_the_scale_of_the_llms_word_embeddings(tmp_path):
    """With ``output_norm`` every visual token's RMS starts at the word embeddings' RMS, whatever the image's
    scale; without it the tokens' scale follows the input. The gain is a parameter (it trains and saves)."""
    from owl.config import preset
    from owl.models import build_model

    config = preset("tiny")
    config.abstractor.output_norm = True
    model, _, _ = build_model(config)
    words = model.llm.get_input_embeddings().weight
    target = words.pow(2).mean().sqrt().item()
    with torch.no_grad():
        for scale in (0.1, 1.0, 30.0):
            feats = scale * torch.randn(3, 5, model.vision.hidden_size)
            rms = model.abstractor(feats).pow(2).mean(-1).sqrt()
            assert rms.shape == (3, config.abstractor.num_visual_tokens)
            assert torch.allclose(rms, torch.full_like(rms, target), rtol=0.03), (scale, rms, target)  # eps
    assert "abstractor.out_norm.weight" in dict(model.named_parameters())
    from owl.models import load_model, save_pretrained

    with torch.no_grad():
        model.abstractor.out_norm.weight.mul_(1.5)  # as if trained: the loaded gain is the saved one
    save_pretrained(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded.abstractor.out_norm.weight, model.abstractor.out_norm.weight)
    plain, _, _ = build_model(preset("tiny"))
    assert not any("out_norm" in n for n, _ in plain.named_parameters())


def test_locality_bias_golden_values():
    """2x2 queries over a 2x2 grid: each query sits on one cell's centre (bias 0), half the side from its
    neighbours (-strength x (0.5 / 0.5)^2) and diagonal from the last (-2 strength); the queries see each other
    unbiased, and a leading global token (T = g^2 + 1) is unbiased too."""
    from owl.models.abstractor import locality_bias

    b = locality_bias(4, 4, 3.0)
    assert b.shape == (4, 8) and torch.equal(b[:, :4], torch.zeros(4, 4))
    assert b[0, 4:].tolist() == [0.0, -3.0, -3.0, -6.0]
    assert b[3, 4:].tolist() == [-6.0, -3.0, -3.0, 0.0]
    g = locality_bias(4, 5, 3.0)
    assert torch.equal(g[:, 4], torch.zeros(4)) and torch.equal(g[:, 5:], b[:, 4:])
    with pytest.raises(ValueError, match="square grid"):
        locality_bias(4, 6, 1.0)


def test_locality_matches_the_spec_equations_with_the_bias():
    cfg = AbstractorConfig(hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24, num_queries=4, locality=2.0)
    torch.manual_seed(0)
    m = VisualAbstractor(cfg, vision_width=16, llm_width=8).eval()
    from owl.models.abstractor import locality_bias

    image = torch.randn(2, 16, 16)
    with torch.no_grad():
        ref = reference(m.state_dict(), image, cfg, locality_bias(4, 16, 2.0))
        torch.testing.assert_close(m(image), ref, atol=1e-5, rtol=1e-4)
        unbiased = reference(m.state_dict(), image, cfg)
        assert (m(image) - unbiased).abs().max() > 100 * (m(image) - ref).abs().max()


def test_locality_makes_each_query_read_its_own_place():
    """A change in the top-left cell moves the top-left query's token far more than the bottom-right one's with
    the prior; without it (reference init: near-uniform attention) both move alike."""
    torch.manual_seed(0)
    image = torch.randn(1, 64, 16)
    moved = image.clone()
    moved[0, 0] = 3.0 * torch.randn(16)  # a different feature vector (a constant shift would vanish in the LayerNorm)
    effect = {}
    for strength in (0.0, 4.0):
        cfg = AbstractorConfig(
            hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24, num_queries=16, locality=strength
        )
        torch.manual_seed(1)
        m = VisualAbstractor(cfg, vision_width=16, llm_width=8).eval()
        with torch.no_grad():
            d = (m(moved) - m(image)).norm(dim=-1)[0]
        effect[strength] = (d[0] / d[15]).item()
    assert effect[4.0] > 20 and 0.5 < effect[0.0] < 2, effect


def test_locality_needs_a_square_number_of_queries():
    with pytest.raises(ValueError, match="not a square"):
        AbstractorConfig(num_queries=12, locality=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        AbstractorConfig(locality=-1.0)
    AbstractorConfig(num_queries=12)  # off: any number of queries


def test_compete_matches_a_per_cell_loop():
    """Slot-attention read: every cell splits one unit of attention over the queries, then each query averages
    the values with what it won (renormalised over the cells)."""
    from owl.models.abstractor import compete

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)
    out = compete(q, k, v)
    for n in range(2):
        for h in range(3):
            won = torch.zeros(4, 6)
            for t in range(6):  # cell t's split over the 4 queries
                won[:, t] = torch.softmax(q[n, h] @ k[n, h, t] / 5**0.5, dim=0)
            assert torch.allclose(won.sum(0), torch.ones(6))
            expect = (won / (won.sum(1, keepdim=True) + 1e-6)) @ v[n, h]
            torch.testing.assert_close(out[n, h], expect, atol=1e-5, rtol=1e-5)


def test_competition_trains_end_to_end():
    cfg = AbstractorConfig(
        hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24, num_queries=4, competition=True
    )
    torch.manual_seed(0)
    m = VisualAbstractor(cfg, vision_width=12, llm_width=8)
    out = m(torch.randn(3, 9, 12))
    assert out.shape == (3, 5, 8)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in m.parameters() if p.requires_grad)
    assert m.layers[0].query.weight.grad.abs().sum() > 0


def test_competition_applies_the_attention_dropout_in_training_only():
    cfg = AbstractorConfig(
        hidden_size=16,
        num_layers=1,
        num_heads=4,
        intermediate_size=24,
        num_queries=4,
        competition=True,
        attention_dropout=0.5,
    )
    torch.manual_seed(0)
    m, image = VisualAbstractor(cfg, vision_width=16, llm_width=8), torch.randn(2, 9, 16)
    with torch.no_grad():
        assert torch.equal(m.eval()(image), m(image))
        assert not torch.allclose(m.train()(image), m.eval()(image))
