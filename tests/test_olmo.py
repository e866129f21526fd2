"""The authors' checkpoints: OLMo's unsharded format read into our model and optimizer, checked
against OLMo's own code (PyPI `ai2-olmo`, the library the authors' fork comes from).

OLMo pins numpy<2 and this project uses numpy 2, so OLMo runs in its own environment, built by
`make olmo-env` (`make test` builds it; the test only runs it, offline): tests/olmo_reference.py
trains a tiny OLMo a few real AdamW steps, saves it with OLMo's FullCheckpointer, and writes OLMo's
per-token losses, its next step's weights and its schedulers' rates for this side to match."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from scaledyn.analysis import olmo
from scaledyn.analysis.onestep import load_olmo_for_step, one_step
from scaledyn.analysis.options import Suite
from scaledyn.analysis.revisions import OLMO, OLMO_STATE_FILE, PATTERNS, patterns
from scaledyn.errors import SuiteError
from scaledyn.train.model import token_losses

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def olmo_python() -> str:
    """OLMo's environment: SCALEDYN_OLMO_PYTHON (what `make test` sets: then it must exist), else
    .venv-olmo if built, else the test is skipped with how to build it."""
    named = os.environ.get("SCALEDYN_OLMO_PYTHON")
    if named:
        assert Path(named).is_file(), f"SCALEDYN_OLMO_PYTHON={named} does not exist; run `make olmo-env`"
        return named
    here = ROOT / ".venv-olmo" / "bin" / "python"
    if not here.is_file():
        pytest.skip("OLMo's own environment is not built: `make olmo-env` (make test builds it)")
    return str(here)


@pytest.fixture(scope="module")
def reference(olmo_python, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("olmo-reference")
    ours = _tiny_checkpoint(out / "ours" / "step3")  # written by scaledyn, read by OLMo
    torch.save(torch.randint(0, 40, (3, 32), generator=torch.Generator().manual_seed(2)), ours.parent / "tokens.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([olmo_python, str(ROOT / "tests" / "olmo_reference.py"), str(out), str(ours)], capture_output=True,
                         text=True, env={**env, "MASTER_PORT": str(port)}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def record(ckpt: Path, step: int, tmp_path: Path) -> Path:
    """A revision record as suite-fetch writes it, for a local OLMo checkpoint."""
    suite = Suite.from_json(json.dumps({"name": "olmo-ref", "model": str(ckpt.parent), "steps": [0, step],
                                        "tokens_per_step": 128, "dt1_steps": [step], "format": OLMO}))
    path = tmp_path / "revision.json"
    path.write_text(json.dumps({"suite": json.loads(suite.to_json()), "step": step, "revision": ckpt.name,
                                "path": str(ckpt), "format": OLMO, "commit": "local", "tokens_seen": 0}))
    return path


def mapped(state: dict, ckpt: Path) -> dict:
    where = olmo.pieces(olmo.OlmoConfig.read(ckpt))
    return {k: v for name, t in state.items() for k, v in olmo.split(name, t, where).items()}


def test_losses_and_one_step_equal_olmo_own(reference, tmp_path):
    """(a) per-token losses of our loaded model equal OLMo's forward (fp32, <= 1e-5 nats); (b) one
    AdamW step from the loaded state, through the replay's own code, equals OLMo's next step
    (weights <= 1e-6), at the rate OLMo's scheduler gives; also with the state keyed by name."""
    ref = torch.load(reference / "reference.pt", weights_only=True)
    ckpt = reference / "step3"
    model = olmo.load_model(ckpt)
    with torch.no_grad():
        loss_diff = (token_losses(model, ref["eval_tokens"]) - ref["token_losses"]).abs().max().item()
    assert loss_diff <= 1e-5

    start = load_olmo_for_step(record(ckpt, 3, tmp_path))
    assert start.lr == pytest.approx(ref["lr"], rel=1e-12) and start.lr_note == ""
    after = mapped(ref["after"], ckpt)
    one_step(start.model, start.optimizer_for(start.model), ref["batch"], start.lr)
    got = start.model.state_dict()
    step_diff = max((got[k] - v).abs().max().item() for k, v in after.items())
    moved = max((got[k] - v).abs().max().item() for k, v in mapped(torch.load(ckpt / "model.pt"), ckpt).items())
    assert step_diff <= 1e-6 < 1e-4 < moved  # equal to OLMo's step, and the step moved the weights

    # FSDP saves the optimizer state keyed by parameter name: the same step
    by_name = torch.load(ckpt / OLMO_STATE_FILE, weights_only=True)
    names = {i: n for g in by_name["param_groups"] for i, n in zip(g["params"], g["param_names"])}
    by_name["state"] = {names[i]: s for i, s in by_name["state"].items()}
    for g in by_name["param_groups"]:
        g["params"] = [names[i] for i in g["params"]]
    torch.save(by_name, ckpt / OLMO_STATE_FILE)
    again = load_olmo_for_step(record(ckpt, 3, tmp_path))
    one_step(again.model, again.optimizer_for(again.model), ref["batch"], again.lr)
    assert max((again.model.state_dict()[k] - v).abs().max().item() for k, v in after.items()) <= 1e-6
    print(f"OLMo cross-check: per-token loss max |diff| {loss_diff:.2e}, one step max |diff| {step_diff:.2e}")


def test_a_checkpoint_we_write_reads_the_same_in_olmo(reference):
    """The inverse mapping (write_unsharded, which the tests' OLMo-format suites are built with):
    OLMo's own model loads our model.pt strictly and its per-token losses equal ours."""
    ckpt = reference / "ours" / "step3"
    tokens = torch.load(ckpt.parent / "tokens.pt", weights_only=True)
    with torch.no_grad():
        ours = token_losses(olmo.load_model(ckpt), tokens)
    theirs = torch.load(reference / "ours_read_by_olmo.pt", weights_only=True)
    assert ours.shape == theirs.shape == (3, 31) and (ours - theirs).abs().max().item() <= 1e-5


def test_schedules_equal_olmo_own(reference):
    """Every scheduler of OLMo's release at steps through the warm-up, the decay and past the end."""
    ref = torch.load(reference / "reference.pt", weights_only=True)
    assert len(ref["schedules"]) == 10
    for case in ref["schedules"]:
        cfg = olmo.OlmoSchedule(0.01, case["scheduler"], case["max_duration"])
        for t, lr in case["lr"]:
            assert cfg.lr_at(t) == pytest.approx(lr, rel=1e-12, abs=1e-15), (case["scheduler"], t)


def test_trapezoidal_schedule_of_the_authors_fork():
    """The authors' fork adds `trapezoidal` (not in OLMo's release): their main runs set t_warmup
    2000, t_cooldown 262,144 = max_duration, alpha_f 0: a warm-up from a tenth of the rate, then flat;
    the update after the last revision has rate 0 (and the replay then takes the peak rate, saying so)."""
    sched = {"name": "trapezoidal", "t_warmup": 2000, "t_cooldown": 262_144, "alpha_f": 0.0}
    cfg = olmo.OlmoSchedule(1.26e-3, sched, 262_144)
    assert cfg.lr_at(0) == pytest.approx(1.26e-4) and cfg.lr_at(1000) == pytest.approx(1.26e-4 + 0.9 * 1.26e-3 / 2)
    assert cfg.lr_at(2000) == cfg.lr_at(262_143) == 1.26e-3 and cfg.lr_at(262_144) == 0.0
    decay = olmo.OlmoSchedule(1.0, {**sched, "t_cooldown": 100, "t_warmup": 10, "alpha_f": 0.1}, 200)
    assert decay.lr_at(150) == pytest.approx(1 - 50 * 0.9 / 100)


def _tiny_checkpoint(path: Path) -> Path:
    from test_suites import olmo_config
    from transformers import LlamaForCausalLM

    raw = olmo_config(40, 39)
    return olmo.write_unsharded(path, LlamaForCausalLM(olmo.OlmoConfig.from_dict(raw).llama_config()), raw, 3)


def test_a_file_that_needs_pickled_code_is_refused(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "step3")
    olmo.check_global_step(ckpt, 3, "step3")  # the trainer state (NumPy's RNG inside) reads under weights_only
    with pytest.raises(SuiteError, match=r"step4 holds global step 3, not 4: the replay would take the wrong"):
        olmo.check_global_step(ckpt, 4, "step4")
    assert olmo.load_model(ckpt) is not None
    state = torch.load(ckpt / "model.pt", weights_only=True)
    torch.save({**state, "extra": argparse.Namespace(x=1)}, ckpt / "model.pt")
    with pytest.raises(SuiteError, match=r"step3/model.pt: needs more than tensors to load \(.*Namespace"):
        olmo.load_model(ckpt)


@pytest.mark.parametrize("key,value", [("include_bias", True), ("layer_norm_with_affine", True),
                                       ("block_type", "llama"), ("clip_qkv", 8.0), ("alibi", True)])
def test_an_architecture_the_mapping_does_not_reproduce_is_refused(tmp_path, key, value):
    ckpt = _tiny_checkpoint(tmp_path / "step3")
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg["model"][key] = value
    (ckpt / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SuiteError, match=rf"config.yaml: model.{key} is {value!r}; .* {key}: "):
        olmo.load_model(ckpt)


def test_only_replayed_revisions_download_the_optimizer_state():
    """optim.pt is twice the weights: fetched only at dt1_steps."""
    def suite(fmt):
        return Suite.from_json(json.dumps({"name": "s", "model": "org/m", "steps": [1, 2], "tokens_per_step": 1,
                                           "dt1_steps": [2] if fmt != "hf" else [], "format": fmt}))
    assert patterns(suite(OLMO), 1) == ["model.pt", "train.pt", "config.yaml"]
    assert patterns(suite(OLMO), 2) == ["model.pt", "train.pt", "config.yaml", OLMO_STATE_FILE]
    assert patterns(suite("hf"), 2) == PATTERNS and set(PATTERNS) < set(patterns(suite("auto"), 2))
