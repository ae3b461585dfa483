"""Bad configs and bad command lines, one table row each: every row must end in one readable error naming the
value (and the fix where there is one), never a traceback or a silently accepted nonsense value.

Configs go through the same functions `owl train` and `owl new` use (``load_train_config`` with dotted overrides,
``resolve_config``); command lines go through ``owl.cli.main`` and must exit 2 with exactly one line
``owl: error: ...`` on stderr.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from owl.cli import main, resolve_config
from owl.errors import ConfigError, OwlError
from owl.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "tiny" / "stage2.yaml"

# (id, overrides of configs/tiny/stage2.yaml, regex the error must match)
TRAIN_CASES = [
    ("cfg-unknown-section", ["optimizer.lr=1e-3"], r"unknown config key optimizer; did you mean optim\?"),
    ("cfg-unknown-key-lists-valid", ["optim.learning_rate=1e-3"], r"unknown config key optim.learning_rate; valid keys: lr"),
    ("cfg-typo-batch-size", ["train.batch_sise=4"], r"did you mean train.batch_size\?"),
    ("cfg-typo-trainable", ["trainable.lm=lora"], r"did you mean trainable.llm\?"),
    ("cfg-typo-checkpoint", ["checkpoint.evry=5"], r"did you mean checkpoint.every\?"),
    ("cfg-lr-word", ["optim.lr=fast"], r"optim.lr='fast' must be a number"),
    ("cfg-lr-bool", ["optim.lr=true"], r"optim.lr=True must be a number, not bool"),
    ("cfg-lr-list", ["optim.lr=[1, 2]"], r"optim.lr=\[1, 2\] must be a number, not list"),
    ("cfg-lr-zero", ["optim.lr=0"], r"optim.lr=0.0 must be > 0"),
    ("cfg-lr-negative", ["optim.lr=-1e-4"], r"optim.lr=-0.0001 must be > 0"),
    ("cfg-batch-zero", ["train.batch_size=0"], r"train.batch_size=0 .* must be >= 1"),
    ("cfg-batch-negative", ["train.batch_size=-8"], r"train.batch_size=-8 .* must be >= 1"),
    ("cfg-batch-fraction", ["train.batch_size=2.5"], r"train.batch_size=2.5 must be an integer, not float"),
    ("cfg-batch-word", ["train.batch_size=eight"], r"train.batch_size='eight' must be an integer"),
    ("cfg-batch-mapping", ["train.batch_size={a: 1}"], r"train.batch_size=\{'a': 1\} must be an integer, not dict"),
    ("cfg-grad-accum-zero", ["train.grad_accum=0"], r"train.grad_accum=0 must be >= 1"),
    ("cfg-steps-and-epochs", ["train.epochs=1"], r"give exactly one of train.max_steps or train.epochs"),
    ("cfg-neither-steps-nor-epochs", ["train.max_steps=null"], r"give exactly one of train.max_steps or train.epochs"),
    ("cfg-steps-zero", ["train.max_steps=0"], r"train.max_steps=0 must be >= 1"),
    ("cfg-precision-unknown", ["train.precision=fp8"], r"train.precision='fp8' is unknown; use auto, fp32 or bf16"),
    ("cfg-distributed-unknown", ["train.distributed=horovod"], r"train.distributed='horovod' is unknown; use auto"),
    ("cfg-checkpointing-word", ["train.gradient_checkpointing=maybe"], r"gradient_checkpointing='maybe' must be true or false"),
    ("cfg-image-gain-samples-one", ["train.image_gain_samples=1"], r"train.image_gain_samples=1 >= 2"),
    ("cfg-image-gain-every-negative", ["train.image_gain_every=-1"], r"train.image_gain_every=-1 must be >= 0"),
    ("cfg-trainable-unknown-mode", ["trainable.llm=partial"], r"trainable.llm='partial' is unknown; use one of frozen"),
    ("cfg-abstractor-lora", ["trainable.abstractor=lora"], r"trainable.abstractor=lora is not supported"),
    ("cfg-queries-lora", ["trainable.queries=lora"], r"trainable.queries=lora is not supported"),
    ("cfg-norm-stats-unknown", ["trainable.norm_stats=update"], r"trainable.norm_stats='update'; use frozen or train"),
    ("cfg-lora-r-zero", ["lora.r=0"], r"lora.r=0 must be >= 1"),
    ("cfg-lora-targets-empty", ["lora.target_modules=[]"], r"lora.target_modules is empty"),
    ("cfg-lora-targets-string", ["lora.target_modules=q_proj"], r"lora.target_modules='q_proj' must be a list, not str"),
    ("cfg-lora-dropout-word", ["lora.dropout=some"], r"lora.dropout='some' must be a number"),
    ("cfg-betas-one-value", ["optim.betas=[0.9]"], r"optim.betas=\[0.9\] must be a list of 2 values"),
    ("cfg-betas-out-of-range", ["optim.betas=[0.9, 1.5]"], r"optim.betas=\[0.9, 1.5\] must be two numbers in \[0, 1\)"),
    ("cfg-betas-scalar", ["optim.betas=0.9"], r"optim.betas=0.9 must be a list, not float"),
    ("cfg-grad-clip-zero", ["optim.grad_clip=0"], r"optim.grad_clip=0.0 must be > 0 \(or null to disable\)"),
    ("cfg-lr-groups-unknown-module", ["optim.lr_groups.decoder=1e-4"], r"optim.lr_groups.decoder is not a module"),
    ("cfg-lr-groups-negative", ["optim.lr_groups.llm=-1"], r"optim.lr_groups.llm=-1.0 must be a number >= 0"),
    ("cfg-lr-groups-not-mapping", ["optim.lr_groups=[1]"], r"optim.lr_groups=\[1\] must be a mapping, not list"),
    ("cfg-schedule-unknown", ["schedule.name=step"], r"schedule.name='step' is unknown; use cosine, linear, constant or wsd"),
    ("cfg-wsd-without-decay", ["schedule.name=wsd"], r"schedule.decay_steps=0 must be > 0 for schedule.name=wsd"),
    ("cfg-warmup-negative", ["schedule.warmup_steps=-2"], r"schedule.warmup_steps must be >= 0"),
    ("cfg-min-lr-ratio-over-one", ["schedule.min_lr_ratio=2"], r"schedule.min_lr_ratio in \[0, 1\]"),
    ("cfg-checkpoint-keep-zero", ["checkpoint.keep=0"], r"checkpoint.keep >= 1"),
    ("cfg-checkpoint-every-negative", ["checkpoint.every=-1"], r"checkpoint.every must be >= 0"),
    ("cfg-mix-unknown", ["data.mix=random"], r"data.mix='random' is unknown; use sample or per_batch"),
    ("cfg-bad-fraction-over-one", ["data.max_bad_fraction=1.5"], r"data.max_bad_fraction=1.5 must be in \[0, 1\]"),
    ("cfg-sources-empty", ["data.sources=[]"], r"data.sources is empty; list at least one source"),
    ("cfg-sources-not-list", ["data.sources=captions.jsonl"], r"data.sources='captions.jsonl' must be a list, not str"),
    ("cfg-source-not-mapping", ["data.sources=[captions.jsonl]"], r"data.sources\[0\] must be a mapping with name"),
    ("cfg-source-format-unknown", ["data.sources=[{name: a, format: csv, path: a.csv}]"], r"format.*'csv'"),
    ("cfg-source-path-missing", ["data.sources=[{name: a, format: mplug}]"], r"path"),
    ("cfg-source-names-repeat", ["data.sources=[{name: a, format: mplug, path: x}, {name: a, format: mplug, path: y}]"], r"data.sources names must be unique"),
    ("cfg-source-key-typo", ["data.sources=[{name: a, format: mplug, path: x, wieght: 2}]"], r"did you mean data.sources\[0\].weight\?"),
    ("cfg-source-weight-negative", ["data.sources=[{name: a, format: mplug, path: x, weight: -1}]"], r"weight"),
    ("cfg-source-weight-word", ["data.sources=[{name: a, format: mplug, path: x, weight: lots}]"], r"weight='lots' must be a number"),
    ("cfg-output-dir-empty", ["output_dir="], r"output_dir is required"),
    ("cfg-output-dir-list", ["output_dir=[a, b]"], r"output_dir=\['a', 'b'\] must be a string, not list"),
    ("cfg-seed-word", ["seed=random"], r"seed='random' must be an integer"),
    ("cfg-merge-lora-word", ["merge_lora=sometimes"], r"merge_lora='sometimes' must be true or false"),
    ("cfg-section-scalar", ["optim=fast"], r"optim must be a mapping, got str"),
    ("cfg-override-without-equals", ["optim.lr"], r"override 'optim.lr' must look like section.key=value"),
    ("cfg-override-conflict", ["optim=1", "optim.lr=2"], r"conflicts with another override of optim"),
    ("cfg-override-not-yaml", ["optim.lr=[1,"], r"override 'optim.lr=\[1,': the value is not valid YAML"),
    ("cfg-override-control-char", ["optim.lr=\x1f"], r"override 'optim.lr=\\x1f': the value is not valid YAML"),
    ("cfg-augment-unknown-key", ["data.augment={flip: true}"], r"unknown config key data.augment.flip"),
]  # fmt: skip

# (id, overrides of the tiny model preset, regex)
MODEL_CASES = [
    ("cfg-model-num-queries-zero", ["abstractor.num_queries=0"], r"abstractor.num_queries=0 must be >= 1"),
    ("cfg-model-key-typo", ["abstractor.num_querys=8"], r"did you mean abstractor.num_queries\?"),
    ("cfg-model-section-typo", ["abstracter.num_queries=8"], r"did you mean abstractor\?"),
    ("cfg-model-layers-zero", ["abstractor.num_layers=0"], r"abstractor.num_layers=0 must be >= 1"),
    ("cfg-model-heads-do-not-divide", ["abstractor.num_heads=7"], r"num_heads"),
    ("cfg-model-template-unknown", ["processor.template=alpaca-v9"], r"processor.template='alpaca-v9' is unknown"),
    ("cfg-model-max-length-tiny", ["processor.max_length=4"], r"processor.max_length=4 is too small \(>= 16\)"),
    ("cfg-model-max-pixels-zero", ["processor.max_image_pixels=0"], r"processor.max_image_pixels must be positive"),
    ("cfg-model-compat-unknown", ["processor.compat=hf"], r"processor.compat='hf' is unknown"),
    ("cfg-model-image-size-zero", ["vision.image_size=0"], r"vision.image_size=0 must be positive"),
    ("cfg-model-image-std-zero", ["vision.image_std=[0, 1, 1]"], r"vision.image_std=.* must be positive"),
    ("cfg-model-image-mean-short", ["vision.image_mean=[0.5]"], r"vision.image_mean=\[0.5\] must be a list of 3 values"),
    ("cfg-model-backbone-unknown", ["vision.backbone=resnet"], r"vision.backbone='resnet'"),
    ("cfg-model-hf-config-no-type", ["llm.hf_config.model_type=null"], r"llm.hf_config needs a 'model_type'"),
    ("cfg-model-hf-config-not-mapping", ["llm.hf_config=llama"], r"llm.hf_config='llama' must be a mapping, not str"),
]  # fmt: skip


def _fails(fn, pattern: str) -> str:
    with pytest.raises(OwlError) as info:
        fn()
    message = str(info.value)
    assert re.search(pattern, message), f"{message!r} does not match {pattern!r}"
    assert "\n" not in message.strip() and "Traceback" not in message
    return message


@pytest.mark.parametrize(("overrides", "pattern"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_bad_training_config_is_one_clear_error(overrides: list[str], pattern: str) -> None:
    _fails(lambda: load_train_config(RECIPE, overrides), pattern)


@pytest.mark.parametrize(("overrides", "pattern"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_config_is_one_clear_error(overrides: list[str], pattern: str) -> None:
    _fails(lambda: resolve_config("tiny", overrides), pattern)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


FILE_CASES = [
    ("cfg-file-missing", lambda d: d / "nope.yaml", r"training config not found: .*nope.yaml"),
    ("cfg-file-yaml-syntax", lambda d: _write(d / "a.yaml", "output_dir: x\ndata: [\n"), r"a.yaml:\d+:\d+: YAML syntax error"),
    ("cfg-file-yaml-tabs", lambda d: _write(d / "a.yaml", "data:\n\tsources: []\n"), r"a.yaml:2:1: YAML syntax error"),
    ("cfg-file-not-mapping", lambda d: _write(d / "a.yaml", "- a\n- b\n"), r"must hold a mapping of config sections, got list"),
    ("cfg-file-missing-data", lambda d: _write(d / "a.yaml", "output_dir: x\n"), r"missing required key 'data'"),
    ("cfg-file-missing-output", lambda d: _write(d / "a.yaml", "data: {}\n"), r"missing required key 'output_dir'"),
    ("cfg-file-binary", lambda d: (d / "a.yaml").write_bytes(b"\xff\xfe\x00garbage\x00") and d / "a.yaml", r"a.yaml: not UTF-8 text \(byte 0\)"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "pattern"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_config_file_is_one_clear_error(tmp_path: Path, make, pattern: str) -> None:
    path = make(tmp_path)
    _fails(lambda: load_train_config(path), pattern)


@settings(derandomize=True, max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(["optim.lr", "train.batch_size", "train.max_steps", "lora.r", "optim.betas", "data.mix",
                         "trainable.llm", "checkpoint.keep", "schedule.name", "train.precision", "seed", "output_dir"]),
    value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(), st.none(),
                    st.text(max_size=12), st.lists(st.integers(), max_size=3)),
)  # fmt: skip
def test_any_override_value_is_accepted_or_refused_clearly(key: str, value: object) -> None:
    """Whatever value lands on a key, the config is built or refused with a ConfigError naming the key."""
    try:
        cfg = load_train_config(RECIPE, [f"{key}={_yaml(value)}"])
    except ConfigError as e:
        section = key.split(".")[0]
        assert section in str(e) or "train.max_steps or train.epochs" in str(e), str(e)
        return
    assert cfg.train.batch_size >= 1 and cfg.optim.lr > 0 and cfg.lora.r >= 1 and cfg.checkpoint.keep >= 1


def _yaml(value: object) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


# ----------------------------------------------------------------------------- the CLI: exit 2, one line


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    _write(d / "one.jsonl", '{"id": "a", "prompt": "hi"}\n')
    _write(d / "bad.yaml", "output_dir: x\ndata: [\n")
    return d


CLI_CASES = [
    ("cli-train-config-missing", ["train", "{d}/nope.yaml"], r"training config not found"),
    ("cli-train-config-syntax", ["train", "{d}/bad.yaml"], r"bad.yaml:\d+:\d+: YAML syntax error"),
    ("cli-train-override-type", ["train", str(RECIPE), "optim.lr=fast"], r"optim.lr='fast' must be a number"),
    ("cli-train-override-typo", ["train", str(RECIPE), "train.batchsize=2"], r"did you mean train.batch_size\?"),
    ("cli-train-init-from-missing", ["train", str(RECIPE), "init_from={d}/no-model", "output_dir={d}/o1"], r"no-model"),
    ("cli-train-data-missing", ["train", str(RECIPE), "data.sources=[{{name: a, format: mplug, path: {d}/none.jsonl}}]", "init_from=null", "model.preset=tiny", "model.tokenizer=byte", "output_dir={d}/o2"], r"none.jsonl"),
    ("cli-new-preset-unknown", ["new", "--preset", "gigantic", "--out", "{d}/m1"], r"gigantic"),
    ("cli-new-bad-set", ["new", "--preset", "tiny", "--out", "{d}/m2", "--set", "abstractor.num_queries=0"], r"abstractor.num_queries=0 must be >= 1"),
    ("cli-new-tokenizer-missing", ["new", "--preset", "tiny", "--out", "{d}/m3", "--tokenizer", "{d}/no-tok"], r"--tokenizer .*no-tok: no such directory"),
    ("cli-info-path-missing", ["info", "{d}/nothing.yaml"], r"nothing.yaml not found"),
    ("cli-info-preset-unknown", ["info", "gigantic"], r"gigantic"),
    ("cli-chat-model-missing", ["chat", "{d}/no-model", "--message", "hi"], r"model directory not found"),
    ("cli-generate-model-missing", ["generate", "{d}/no-model", "--input", "{d}/one.jsonl", "--output", "{d}/o.jsonl"], r"model directory not found"),
    ("cli-serve-model-missing", ["serve", "{d}/no-model", "--port", "0"], r"model directory not found"),
    ("cli-merge-lora-model-missing", ["merge-lora", "{d}/no-model", "{d}/out"], r"no-model"),
    ("cli-export-model-missing", ["export", "{d}/no-model", "{d}/out", "--part", "llm"], r"no-model"),
    ("cli-convert-src-missing", ["convert", "from-mplug-owl", "{d}/no-src", "{d}/out"], r"no-src"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "pattern"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_command_line_is_one_line_and_exit_2(
    argv: list[str], pattern: str, cli_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli([a.format(d=cli_dir) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("owl: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


ARGPARSE_CASES = [
    ("cli-unknown-command", ["fly"], r"invalid choice: 'fly'"),
    ("cli-missing-argument", ["generate"], r"the following arguments are required"),
    ("cli-int-flag-word", ["generate", "m", "--input", "i", "--output", "o", "--batch-size", "many"], r"invalid int value: 'many'"),
    ("cli-float-flag-word", ["chat", "m", "--temperature", "hot"], r"invalid float value: 'hot'"),
    ("cli-choice-flag-unknown", ["export", "m", "o", "--part", "wings"], r"invalid choice: 'wings'"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "pattern"), [c[1:] for c in ARGPARSE_CASES], ids=[c[0] for c in ARGPARSE_CASES])
def test_malformed_command_line_is_a_usage_error(
    argv: list[str], pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert re.search(pattern, err.strip().splitlines()[-1]), err
