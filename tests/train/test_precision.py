"""``train.precision: auto`` picks bf16 autocast only where this CPU measures it faster; explicit choices stay."""

from __future__ import annotations

import pytest

from owl.train import precision as P


def test_explicit_choices_are_kept():
    assert P.resolve_precision("fp32")[0] == "no"
    assert P.resolve_precision("bf16")[0] == "bf16"


@pytest.mark.parametrize(("speedup", "expected"), [(0.02, "no"), (1.5, "no"), (2.0, "bf16"), (6.0, "bf16")])
def test_auto_follows_the_measured_speedup(monkeypatch, speedup, expected):
    monkeypatch.delenv("OWL_CPU_BF16", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: speedup)
    choice, why = P.resolve_precision("auto")
    assert choice == expected and f"{speedup:.2g}x" in why


def test_several_processes_decide_from_cpu_flags_not_timings(monkeypatch):
    monkeypatch.delenv("OWL_CPU_BF16", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: pytest.fail("timed in a multi-process run"))
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert P.resolve_precision("auto")[0] == "bf16"
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2"})
    assert P.resolve_precision("auto")[0] == "no"


def test_env_override_skips_the_measurement(monkeypatch):
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: pytest.fail("measured despite OWL_CPU_BF16"))
    for value, expected in (("0", "no"), ("1", "bf16")):
        monkeypatch.setenv("OWL_CPU_BF16", value)
        assert P.resolve_precision("auto")[0] == expected


def test_measured_speedup_is_a_positive_ratio():
    P.cpu_bf16_speedup.cache_clear()
    assert P.cpu_bf16_speedup(64) > 0


def test_llm_attention_auto_is_eager_only_for_bf16_on_a_cpu():
    assert P.resolve_llm_attention("auto", "bf16", "cpu")[0] == "eager"
    assert P.resolve_llm_attention("auto", "no", "cpu")[0] is None  # fp32: SDPA and eager ran alike
    assert P.resolve_llm_attention("auto", "bf16", "cuda")[0] is None  # GPUs keep what the model was loaded with
    assert P.resolve_llm_attention("sdpa", "bf16", "cpu")[0] == "sdpa"
    assert P.resolve_llm_attention("eager", "no", "cuda")[0] == "eager"


def test_llm_attention_config_error_names_the_value():
    from owl.errors import ConfigError
    from owl.train.config import LoopConfig

    with pytest.raises(ConfigError, match="train.llm_attention='flash'"):
        LoopConfig(max_steps=1, llm_attention="flash")
