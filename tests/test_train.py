import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import log_rows
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from scaledyn.config import load_study
from scaledyn.errors import DataError, Preempted
from scaledyn.layout import RunPaths
from scaledyn.schedule import Schedule, lr_factor
from scaledyn.stats.curve import read_curve_csv
from scaledyn.stats.lrtime import to_lr_time
from scaledyn.train import checkpoint
from scaledyn.train.loop import BatchOrder, train


def make_spec(tiny_config, tiny_data, run_dir, **over):
    study = load_study(tiny_config)
    spec = study.run_spec("tiny-1k_s0")
    return dataclasses.replace(spec, data_dir=str(tiny_data), run_dir=str(run_dir), **over)



def start(spec):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "scaledyn", "train", "--spec", spec.to_json()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(spec, step, proc, timeout=120):
    log = os.path.join(spec.run_dir, "state", "train_log.csv")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read()[-2000:]}")
        try:
            with open(log) as f:
                if sum(1 for _ in f) - 1 >= step:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_config, tiny_data):
    spec = make_spec(tiny_config, tiny_data, tmp_path_factory.mktemp("ref") / "run", steps=400,
                     checkpoint_steps=tuple(range(25, 401, 25)), flush_every=1, optimizer_steps=None)
    p = start(spec)
    assert p.wait() == 0, p.stderr.read()
    return spec, log_rows(os.path.join(spec.run_dir, "train_log.csv"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGKILL])
def test_interrupted_run_resumes_exactly(reference, tmp_path, sig):
    ref_spec, ref_rows = reference
    spec = dataclasses.replace(ref_spec, run_dir=str(tmp_path / "run"))
    p = start(spec)
    wait_for_step(spec, 130, p)
    p.send_signal(sig)
    code = p.wait()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == Preempted.exit_code, p.stderr.read()[-2000:]
        # a resume checkpoint was written at the step where the signal landed
        assert max(checkpoint.complete_steps(RunPaths(spec.run_dir))) > 125
    p = start(spec)
    assert p.wait() == 0, p.stderr.read()[-2000:]
    rows = log_rows(os.path.join(spec.run_dir, "train_log.csv"))
    assert [r[0] for r in rows] == [str(s) for s in range(1, 401)]  # no step missing or repeated
    assert rows == ref_rows  # loss, lr and grad norm identical to the uninterrupted run
    # unscheduled resume checkpoints are cleaned up; scheduled ones all exist
    assert checkpoint.complete_steps(RunPaths(spec.run_dir)) == list(spec.checkpoint_steps)


@pytest.mark.parametrize("name", ["sgd", "lion", "muon"])
def test_each_optimizer_resumes_exactly_after_a_kill(tiny_config, tiny_data, tmp_path, name):
    """SGD, Lion and Muon (with AdamW for the embedding) checkpoint their state like AdamW: a run
    killed mid-way and resumed logs exactly the losses of an uninterrupted one."""
    spec = make_spec(tiny_config, tiny_data, tmp_path / "ref", steps=60, checkpoint_steps=(20, 40, 60), flush_every=1,
                     optimizer_steps=None, optimizer=dataclasses.replace(load_study(tiny_config).run_spec(
                         "tiny-1k_s0").optimizer, name=name, momentum=0.9))
    p = start(spec)
    assert p.wait() == 0, p.stderr.read()[-2000:]
    ref = log_rows(os.path.join(spec.run_dir, "train_log.csv"))
    assert float(ref[-1][2]) < float(ref[0][2])  # it learns
    killed = dataclasses.replace(spec, run_dir=str(tmp_path / "killed"))
    p = start(killed)
    wait_for_step(killed, 45, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p = start(killed)
    assert p.wait() == 0, p.stderr.read()[-2000:]
    assert log_rows(os.path.join(killed.run_dir, "train_log.csv")) == ref
    state = torch.load(RunPaths(killed.run_dir).checkpoint(40) / "optimizer.pt", weights_only=True)["optimizer"]
    assert ("chained" in state) == (name == "muon")


def test_corrupt_checkpoint_is_skipped_with_warning(reference, tmp_path):
    ref_spec, ref_rows = reference
    spec = dataclasses.replace(ref_spec, run_dir=str(tmp_path / "run"), steps=60,
                               checkpoint_steps=(20, 40, 60))
    p = start(dataclasses.replace(spec, steps=40, checkpoint_steps=(20, 40)))
    assert p.wait() == 0
    bad = RunPaths(spec.run_dir).checkpoint(40) / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"skipping damaged checkpoint .*step40"):
        train(spec)
    rows = log_rows(os.path.join(spec.run_dir, "train_log.csv"))
    assert rows == ref_rows[:60]


def test_checkpoints_load_with_automodel_and_keep_optimizer_only_where_needed(tmp_path, tiny_config, tiny_data):
    spec = make_spec(tiny_config, tiny_data, tmp_path / "run", steps=16, checkpoint_steps=(1, 2, 4, 8, 16),
                     optimizer_steps=(4,))
    meta = train(spec)
    assert meta.total_params == spec.size.total_params(meta.vocab_size)
    paths = RunPaths(spec.run_dir)
    for s in spec.checkpoint_steps:
        model = AutoModelForCausalLM.from_pretrained(paths.checkpoint(s))
        assert model.config.tie_word_embeddings
        tok = AutoTokenizer.from_pretrained(paths.checkpoint(s))  # complete for push_to_hub
        assert tok.decode(tok("import os")["input_ids"]) == "import os"
        assert json.loads(paths.marker(s).read_text())["step"] == s
        card = ModelCard.load(paths.checkpoint(s) / "README.md")  # a Hub model card: what push_to_hub shows
        assert card.data.library_name == "transformers" and f"step-{s}" in card.data.tags
        assert f"# tiny-1k_s0 at step {s}" in card.text and "frozen at 1" in card.text and "manifest sha256" in card.text
    with_opt = [s for s in spec.checkpoint_steps if (paths.checkpoint(s) / "optimizer.pt").exists()]
    assert with_opt == [4, 16]  # the one-step analysis' checkpoint and the newest (for resuming)


def test_gradient_accumulation_matches_full_batch(tmp_path, tiny_config, tiny_data):
    a = make_spec(tiny_config, tiny_data, tmp_path / "a", steps=6, checkpoint_steps=(6,))
    b = dataclasses.replace(a, run_dir=str(tmp_path / "b"), micro_batch_size=2)
    train(a)
    train(b)
    la, lb = log_rows(tmp_path / "a" / "train_log.csv"), log_rows(tmp_path / "b" / "train_log.csv")
    for ra, rb in zip(la, lb):
        assert float(ra[1]) == pytest.approx(float(rb[1]), abs=2e-5)


def test_two_process_ddp_matches_one_process(tmp_path, tiny_config, tiny_data):
    one = make_spec(tiny_config, tiny_data, tmp_path / "one", steps=12, checkpoint_steps=(12,))
    two = dataclasses.replace(one, run_dir=str(tmp_path / "two"))
    train(one)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                           "-m", "scaledyn", "train", "--spec", two.to_json()], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "two" / "run.json").read_text())
    assert meta["processes"] == 2
    l1, l2 = log_rows(tmp_path / "one" / "train_log.csv"), log_rows(tmp_path / "two" / "train_log.csv")
    assert len(l1) == len(l2) == 12
    for r1, r2 in zip(l1, l2):
        assert float(r1[1]) == pytest.approx(float(r2[1]), abs=1e-4)


def test_data_mismatch_fails_before_training(tmp_path, tiny_config, tiny_data):
    spec = make_spec(tiny_config, tiny_data, tmp_path / "run", seq_len=64)
    with pytest.raises(DataError, match=r"manifest.json: seq_len 32 differs"):
        train(spec)
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(DataError, match="manifest.json is missing"):
        train(make_spec(tiny_config, tmp_path / "nowhere", tmp_path / "run2"))


def test_batch_order_is_shared_and_covers_each_epoch():
    a, b = BatchOrder(10, 4, seed=3), BatchOrder(10, 4, seed=3)
    assert all((a.rows(s) == b.rows(s)).all() for s in range(1, 8))
    first_epoch = [r for s in range(1, 3) for r in a.rows(s)] + list(a.rows(3)[:2])
    assert sorted(first_epoch) == list(range(10))


def test_the_logged_rate_gives_the_schedules_learning_rate_time(reference):
    """The fit's learning-rate time from a real run's lr column equals the one it rebuilds from the schedule."""
    spec, _ = reference
    curve = read_curve_csv(os.path.join(spec.run_dir, "train_log.csv"))
    from_log = to_lr_time(curve)
    from_schedule = to_lr_time(curve, {**dataclasses.asdict(spec.schedule), "steps": spec.steps, "lr": spec.lr})
    assert spec.schedule.warmup_steps > 0 and len(from_log.x) == spec.steps
    assert from_log.x == pytest.approx(from_schedule.x, rel=1e-5)
    assert from_log.x[-1] == pytest.approx(spec.steps - (1 - 0.1) / 2 * (spec.schedule.warmup_steps + 1), rel=1e-6)


def test_schedules():
    trap = Schedule("trapezoidal", warmup_steps=10, warmup_start_factor=0.1, cooldown_steps=20, final_lr_factor=0.0)
    cos = Schedule("cosine", warmup_steps=0, warmup_start_factor=0.1, cooldown_steps=0, final_lr_factor=0.1)
    const = Schedule("constant", warmup_steps=0, warmup_start_factor=0.1, cooldown_steps=0, final_lr_factor=0.1)
    assert lr_factor(trap, 0, 100) == pytest.approx(0.1)
    assert lr_factor(trap, 5, 100) == pytest.approx(0.55)
    assert lr_factor(trap, 10, 100) == 1.0 and lr_factor(trap, 79, 100) == 1.0
    assert lr_factor(trap, 89, 100) == pytest.approx(0.5)
    assert lr_factor(trap, 99, 100) == pytest.approx(0.0)
    assert lr_factor(cos, 0, 100) == 1.0
    assert lr_factor(cos, 50, 100) == pytest.approx(0.55)
    assert lr_factor(cos, 100, 100) == pytest.approx(0.1)
    assert lr_factor(const, 37, 100) == 1.0


def test_param_groups_skip_decay_on_embedding(tiny_config):
    from scaledyn.train.model import build_model
    from scaledyn.train.optim import param_groups

    spec = load_study(tiny_config).run_spec("tiny-1k_s0")
    model = build_model(spec.size, 300, 0)
    decay, no_decay = param_groups(model, 0.1)
    assert model.get_input_embeddings().weight in no_decay["params"]
    assert all(p.ndim == 2 for p in decay["params"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if "norm" in n)
    assert torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)


def test_training_refuses_a_second_pass_unless_allowed(tmp_path, tiny_config, tiny_data):
    from scaledyn.data.tokens import TokenData

    n = TokenData.open(tiny_data).train_sequences
    steps = n // 8 + 3  # batch 8: the last 3 steps need a second pass
    spec = make_spec(tiny_config, tiny_data, tmp_path / "run", steps=steps, checkpoint_steps=(steps,))
    with pytest.raises(DataError, match=r"data: training needs .* passes over the .* prepared .*data.allow_repeat: true"):
        train(spec)
    assert not (tmp_path / "run" / "checkpoints").exists()
    train(dataclasses.replace(spec, allow_repeat=True))
    with open(RunPaths(spec.run_dir).train_log) as f:
        passes = [int(r["data_pass"]) for r in csv.DictReader(f)]
    assert passes[: n // 8] == [1] * (n // 8) and passes[-1] == 2
