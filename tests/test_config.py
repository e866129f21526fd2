import pytest
from conftest import REPO

from scaledyn.config import ConfigError, checkpoint_steps, load_study
from scaledyn.train.sizes import PAPER_SIZES, PRESETS


def test_default_config_is_valid_and_filled_in():
    study = load_study(REPO / "config.yaml")
    assert study.cfg["data"]["source"] == "wheels"  # text pinned by its hash: the same tokens everywhere
    assert all(len(w["sha256"]) == 64 for w in study.cfg["data"]["wheels"])
    assert len(study.runs) >= 3
    assert study.cfg["train"]["optimizer"]["betas"] == [0.9, 0.95]  # a default filled in by the schema
    assert study.checkpoint_steps[-1] == study.cfg["train"]["steps"]


@pytest.mark.parametrize("name", ["smoke", "cpu-long", "controls/warmup-200", "controls/seeds"])
def test_shipped_configs_are_valid(name):
    study = load_study(REPO / "configs" / f"{name}.yaml")
    assert study.runs and study.checkpoint_steps[-1] == study.cfg["train"]["steps"]


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
        ({"data": {"source": "web"}}, "data.source: 'web' is not one of ['stdlib', 'packages', 'wheels', 'files', 'hf']"),
        ({"data": {"source": "files"}}, "data.files.paths: source 'files' needs at least one path"),
        ({"data": {"tokenizer": {"kind": "pretrained"}}}, "data.tokenizer.name"),
        ({"train": {"steps": 0}}, "train.steps: 0 is less than the minimum of 1"),
        ({"trian": {}}, "Additional properties are not allowed ('trian' was unexpected)"),
        ({"model": {"sizes": ["odd"], "custom": {"odd": {"d_model": 30, "n_layers": 1, "n_heads": 4}}}}, "not divisible by n_heads"),
        ({"train": {"steps": 150}}, "fit.transient_steps: 100 leaves 5 fitted points of a 150-step run (train.steps)"),
        ({"slurm": {"gpus": {"tiny-25": 1}}}, "slurm.gpus.tiny-25: not a size of this study (sizes: tiny-11k)"),
        ({"slurm": {"nodes": {"14M": 2}}}, "slurm.nodes.14M: not a size of this study"),
        ({"fit": {"schedule": {"kind": "cosine"}}}, "fit.schedule: 'steps' is a required property"),
    ],
)
def test_bad_config_names_key_and_allowed(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_study(override)
    assert fragment in str(e.value)


def test_empty_config_file_is_refused_as_snakemake_refuses_it(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="empty.yaml is empty; write at least one key"):
        load_study(tmp_path / "empty.yaml")


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


def test_stage_flags_are_the_schema():
    """Each option is declared once: a stage command's flags are its options' fields, with the
    schema's choices, and a flag's value is validated by the schema like its config key."""
    import argparse
    import dataclasses

    from scaledyn.analysis.options import EvaluateOptions, ZslOptions
    from scaledyn.cli import build_parser
    from scaledyn.options import ReportOptions
    from scaledyn.schema import load_schema
    from scaledyn.stats.options import FitOptions

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    schema = load_schema()["properties"]
    for command, cls in (("evaluate", EvaluateOptions), ("zsl-dt1", ZslOptions), ("fit-curve", FitOptions),
                         ("fit-windows", FitOptions), ("report", ReportOptions)):
        flags = {a.dest: a for a in sub[command]._actions}
        for f in dataclasses.fields(cls):
            section, key = cls.schema_key(f.name)
            assert f.name in flags, (command, f.name)
            assert flags[f.name].default is None  # --options or the schema supplies it
            assert flags[f.name].choices == schema[section]["properties"][key].get("enum"), (command, f.name)
            assert f"config: {section}.{key}" in flags[f.name].help
    args = build_parser().parse_args(["zsl-dt1", "--run-dir", "r", "--step", "1", "--data", "d", "--out", "o",
                                      "--changes", "c", "--batch-size", "0"])
    from scaledyn.cli import _stage_options

    with pytest.raises(ConfigError, match="^--batch-size: 0 is less than the minimum of 1"):
        _stage_options(ZslOptions, args)


def test_run_record_round_trip(tmp_path):
    """run.json: fields that do not apply are left out, unknown keys of older files ignored, a broken
    file is a named error."""
    import json

    from scaledyn.errors import DataError
    from scaledyn.records import RunRecord

    r = RunRecord(run="a_s0", size="a", seed=0, total_params=10, non_embedding_params=4, vocab_size=8, d_model=2,
                  n_layers=1, n_heads=1, steps=16, tokens_per_step=64, processes=1, ranks=[{"rank": 0}],
                  precision="fp32", data_manifest_sha256="x", spec={"name": "a_s0"})
    r.write(tmp_path / "run.json")
    d = json.loads((tmp_path / "run.json").read_text())
    assert "kind" not in d and "model" not in d and d["processes"] == 1
    assert RunRecord.read(tmp_path / "run.json") == r and not r.is_suite
    (tmp_path / "old.json").write_text(json.dumps({**d, "kind": "suite", "retired_field": 1}))
    assert RunRecord.read(tmp_path / "old.json").is_suite
    (tmp_path / "bad.json").write_text(json.dumps({"run": "x"}))
    with pytest.raises(DataError, match="bad.json: run record unreadable"):
        RunRecord.read(tmp_path / "bad.json")
