import pytest

from scaledyn.config import ConfigError, checkpoint_steps, load_study
from scaledyn.sizes import PAPER_SIZES, PRESETS

from conftest import REPO


def test_default_config_is_valid_and_filled_in():
    study = load_study(REPO / "config.yaml")
    assert study.cfg["data"]["source"] == "stdlib"
    assert len(study.runs) >= 4
    assert study.cfg["train"]["optimizer"]["betas"] == [0.9, 0.95]  # a default filled in by the schema
    assert study.checkpoint_steps[-1] == study.cfg["train"]["steps"]


def test_paper_preset_is_valid():
    study = load_study(REPO / "configs" / "paper.yaml")
    assert sorted(study.cfg["model"]["sizes"]) == sorted(PAPER_SIZES)
    assert study.cfg["data"]["tokenizer"]["name"] == "EleutherAI/gpt-neox-20b"
    assert study.checkpoint_steps[-1] == 262144


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"model": {"sizes": ["huge"]}}, "model.sizes[0]: unknown size 'huge'; allowed:"),
        ({"data": {"seq_len": 4096}}, "data.seq_len: 4096 is beyond the context"),
        ({"data": {"max_tokens": 1000}}, "data.eval_sequences: the evaluation set and held-out batches need"),
        ({"checkpoints": {"extra_steps": [5000]}, "train": {"steps": 100}}, "checkpoints.extra_steps[0]: checkpoint step 5000 is beyond the last step"),
        ({"zsl": {"dt1_steps": [500]}, "train": {"steps": 100}}, "zsl.dt1_steps[0]: checkpoint step 500 is beyond"),
        ({"zsl": {"dt1_steps": [3]}, "train": {"steps": 100}}, "zsl.dt1_steps[0]: step 3 is not a checkpoint step"),
        ({"train": {"lr": -1e-3}}, "train.lr: learning rate must be positive"),
        ({"train": {"lr": 0}}, "train.lr: learning rate must be positive"),
        ({"model": {"sizes": ["mine"], "custom": {"mine": {"d_model": 32, "n_layers": 1, "n_heads": 2, "lr": 0}}}}, "model.custom.mine.lr: learning rate must be positive"),
        ({"data": {"source": "web"}}, "data.source: 'web' is not one of ['stdlib', 'packages', 'files', 'hf']"),
        ({"data": {"source": "files"}}, "data.files.paths: source 'files' needs at least one path"),
        ({"data": {"tokenizer": {"kind": "pretrained"}}}, "data.tokenizer.name"),
        ({"train": {"steps": 0}}, "train.steps: 0 is less than the minimum of 1"),
        ({"trian": {}}, "Additional properties are not allowed ('trian' was unexpected)"),
        ({"model": {"sizes": ["odd"], "custom": {"odd": {"d_model": 30, "n_layers": 1, "n_heads": 4}}}}, "not divisible by n_heads"),
    ],
)
def test_bad_config_names_key_and_allowed(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_study(override)
    assert fragment in str(e.value)


def test_custom_size_with_explicit_dimensions():
    study = load_study({"model": {"sizes": ["mine"], "custom": {"mine": {"d_model": 40, "n_layers": 3, "n_heads": 4}}}})
    assert study.sizes["mine"].non_embedding_params() == 3 * (4 * 40 * 40 + 3 * 40 * 20)


def test_checkpoint_schedule():
    assert checkpoint_steps(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert checkpoint_steps(64) == [1, 2, 4, 8, 16, 32, 64]
    assert checkpoint_steps(100, interval=30) == [1, 2, 4, 8, 16, 30, 32, 60, 64, 90, 100]
    assert checkpoint_steps(10, log2=False, extra=[3]) == [3, 10]
    assert checkpoint_steps(262144)[-1] == 262144 and len(checkpoint_steps(262144)) == 19


def test_paper_parameter_counts_match_their_names():
    """The names count the tied embedding (vocabulary 50,304); blocks hold 5.5 d^2 weights."""
    for name, size in PAPER_SIZES.items():
        total = size.total_params(50304)
        assert abs(total - float(name[:-1]) * 1e6) / total < 0.03, (name, total)
        assert size.non_embedding_params() == size.n_layers * 5.5 * size.d_model**2


def test_tiny_sizes_span_cpu_range():
    tiny = [s for n, s in PRESETS.items() if n.startswith("tiny-")]
    assert min(s.total_params(2048) for s in tiny) < 0.1e6 and max(s.total_params(2048) for s in tiny) > 5e6 * 0.9
