"""`lungddpm train`: 2-process gloo DDP = 1 process, resume after SIGKILL, atomic checkpoints, fine-tuning, bf16, configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_TRAIN as TINY
from helpers import random_layout, small_config
from lungddpm import LungDDPM, load_model
from lungddpm.model.checkpoints import read_checkpoint
from lungddpm.cli import main
from lungddpm.training.distributed import DistContext
from lungddpm.errors import ConfigError, TrainingError
from lungddpm.training.data import PreparedCases, SampleOrder, load_cases
from lungddpm.training.validation import VALIDATION_SPLIT, validation_loss
from lungddpm.training.runlog import read_log
from lungddpm.training.objective import loss_at
from lungddpm.training.prepare import prepare_dataset
from lungddpm.training.config import build_run_config
from lungddpm.training.run import TrainingRun
from lungddpm.io.atomic import is_temporary

ENGINE = Path(__file__).resolve().parents[3] / "engine"
def _env():
    return {**os.environ, "PYTHONPATH": str(ENGINE), "OMP_NUM_THREADS": "1"}


def _records(log):
    """A run log's training records and its validation records."""
    return [r for r in log if "loss" in r], [r for r in log if "val_loss" in r]


def _weights(path, which="model"):
    return read_checkpoint(path)[which]


def _assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


def test_two_gloo_processes_match_one_process(prepared16, prepared16_val, tmp_path, one_thread):
    # training on 4 cases (3 + 1), validating on the 2 validation cases of prepared16_val (one per process) at step 3
    common = ["train", "--data", str(prepared16), str(prepared16_val), "--steps", "3", "--threads", "1", *TINY,
              "--set", "grad_accum=2", "--set", "val_every=3"]
    assert main([*common, "--output", str(tmp_path / "one"), "--batch-size", "2", "--set", "workers=0"]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29581", "-m", "lungddpm",
           *common, "--output", str(tmp_path / "two"), "--batch-size", "1", "--set", "workers=1", "--device", "cpu"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (one, one_val), (two, two_val) = (_records(read_log(tmp_path / name)) for name in ("one", "two"))
    assert [r["step"] for r in two] == [1, 2, 3]  # rank 0 alone logs
    assert [r["step"] for r in one_val] == [r["step"] for r in two_val] == [3]
    assert abs(one_val[0]["val_loss"] - two_val[0]["val_loss"]) < 1e-6 and one_val[0]["val_loss"] > 0.1
    assert np.allclose([r["loss"] for r in one], [r["loss"] for r in two], rtol=0, atol=1e-6)
    assert len({round(r["loss"], 4) for r in one}) == 3  # the steps really differ
    # Adam divides by sqrt(v): for weights whose gradients nearly cancel, the different summation order of the
    # gradient all-reduce is amplified, so compare the whole update (weights after 3 steps minus the initial ones)
    torch.manual_seed(0)
    initial = LungDDPM(build_run_config(None, [TINY[i + 1] for i in range(0, len(TINY), 2)]).model_config()).denoise_fn.state_dict()
    for which in ("model", "ema"):
        a, b = _weights(tmp_path / "one" / "latest.pt", which), _weights(tmp_path / "two" / "latest.pt", which)
        difference = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a))
        update = torch.sqrt(sum(((a[k] - initial[k]) ** 2).sum() for k in a))
        assert update > 0.1 and difference < 1e-3 * update, (float(difference), float(update))
    run = read_checkpoint(tmp_path / "two" / "latest.pt")["run"]
    assert run["world_size"] == 2 and run["global_batch"] == 4
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-0000003.pt"]


KILLER = textwrap.dedent("""
    import os, signal, sys, torch
    from lungddpm.training import run as trainrun
    from lungddpm.cli import main
    original = trainrun.TrainingRun.train_step
    def train_step(self):
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash in the middle of the run
        return original(self)
    trainrun.TrainingRun.train_step = train_step
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_run_resumes_to_the_same_weights(prepared16, tmp_path, one_thread):
    common = ["train", "--data", str(prepared16), "--threads", "1", "--batch-size", "1", *TINY,
              "--set", "save_every=2", "--set", "workers=1"]
    assert main([*common, "--output", str(tmp_path / "straight"), "--steps", "7"]) == 0
    killed = subprocess.run([sys.executable, "-c", KILLER, *common, "--output", str(tmp_path / "run"), "--steps", "7"],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert read_checkpoint(tmp_path / "run" / "latest.pt")["step"] == 4  # step 5 finished but was not saved
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2, 3, 4, 5]
    assert main([*common, "--output", str(tmp_path / "run"), "--steps", "7", "--resume"]) == 0
    resumed = read_checkpoint(tmp_path / "run" / "latest.pt")
    straight = read_checkpoint(tmp_path / "straight" / "latest.pt")
    assert resumed["step"] == straight["step"] == 7
    for which in ("model", "ema"):
        _assert_same_weights(resumed[which], straight[which])
    assert resumed["optimizer"]["state"][0]["step"] == straight["optimizer"]["state"][0]["step"] == 7
    steps = [r["step"] for r in read_log(tmp_path / "run")]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # the unsaved step 5 of the killed run is dropped from the log
    losses = {r["step"]: r["loss"] for r in read_log(tmp_path / "straight")}
    assert all(abs(r["loss"] - losses[r["step"]]) < 1e-6 for r in read_log(tmp_path / "run"))


SIGNALLER = textwrap.dedent("""
    import os, signal, sys, torch
    from lungddpm.training import run as trainrun
    from lungddpm.cli import main
    sig, step = int(sys.argv[1]), int(sys.argv[2])
    original_step, original_save = trainrun.TrainingRun.train_step, torch.save
    def train_step(self):
        if sig == signal.SIGTERM and self.step == step:
            os.kill(os.getpid(), sig)  # e.g. a scheduler ending the job
        return original_step(self)
    def save(obj, f, *args, **kwargs):
        original_save(obj, f, *args, **kwargs)
        if sig == signal.SIGKILL and obj["step"] == step:
            os.kill(os.getpid(), sig)  # the checkpoint is written, not yet renamed into place
    trainrun.TrainingRun.train_step, torch.save = train_step, save
    sys.exit(main(sys.argv[3:]))
""")


def test_signals_end_a_run_at_its_last_checkpoint_and_the_resumed_run_leaves_nothing_stale(prepared16, tmp_path, one_thread):
    run = tmp_path / "run"
    common = ["train", "--data", str(prepared16), "--threads", "1", "--batch-size", "1", *TINY, "--set", "save_every=2",
              "--set", "workers=1", "--output", str(run), "--steps", "5", "--progress", "none"]

    def child(sig, step, *extra):
        return subprocess.run([sys.executable, "-c", SIGNALLER, str(int(sig)), str(step), *common, *extra], env=_env(),
                              capture_output=True, text=True, timeout=300)

    terminated = child(signal.SIGTERM, 3)
    assert terminated.returncode == 143 and terminated.stderr.splitlines() == [
        f"lungddpm: interrupted; kept the checkpoint of step 2 ({run / 'latest.pt'}); continue with --resume"]
    killed = child(signal.SIGKILL, 4, "--resume")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stale = [p for p in run.rglob("*") if is_temporary(p)]
    assert [p.parent.name for p in stale] == ["checkpoints"] and read_checkpoint(run / "latest.pt")["step"] == 2
    assert main([*common, "--resume"]) == 0
    assert read_checkpoint(run / "latest.pt")["step"] == 5 and [p for p in run.rglob("*") if is_temporary(p)] == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002.pt", "step-0000004.pt", "step-0000005.pt"]


def _run(prepared, output, **settings):
    overrides = [TINY[i + 1] for i in range(0, len(TINY), 2)] + [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    config = build_run_config(None, overrides, data=[str(prepared)], output=str(output), workers=0)
    return TrainingRun(config, DistContext())


def test_crash_while_saving_leaves_latest_checkpoint_intact(prepared16, tmp_path, monkeypatch, one_thread):
    run = _run(prepared16, tmp_path, steps=2)
    run.train_step()
    latest = run.save()
    before = latest.read_bytes()
    run.train_step()
    written = []

    def crash(obj, f, *args, **kwargs):
        written.append(Path(f))
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        run.save()
    monkeypatch.undo()
    assert latest.read_bytes() == before and load_model(latest).source.step == 1
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and is_temporary(p)]
    assert is_temporary(written[0]) and not written[0].exists()
    assert leftovers == [] and not (tmp_path / "checkpoints" / "step-0000002.pt").exists()


def test_fine_tune_from_the_released_tiny_checkpoint(phantom_cases, tiny_checkpoint, tmp_path, one_thread):
    prepared = tmp_path / "prepared"
    prepare_dataset([phantom_cases], prepared, profile="released", size=32, val_fraction=0.0)
    out = tmp_path / "tuned"
    assert main(["train", "--data", str(prepared), "--output", str(out), "--init", str(tiny_checkpoint), "--steps", "2",
                 "--threads", "1", "--set", "lr=1e-3", "--set", "grad_accum=1", "--set", "workers=0",
                 "--set", "preview_every=2", "--set", "preview_steps=2"]) == 0
    released, tuned = load_model(tiny_checkpoint, weights="model"), load_model(out / "latest.pt", weights="model")
    assert tuned.config.to_dict() == released.config.to_dict()
    assert tuned.config.timesteps == 20 and tuned.config.profile == "released" and tuned.config.num_channels == 32
    moved = [k for k, v in tuned.denoise_fn.state_dict().items() if not torch.equal(v, released.denoise_fn.state_dict()[k])]
    assert len(moved) > 0.5 * len(released.denoise_fn.state_dict())
    assert (out / "previews" / "step-0000002-synthetic.png").stat().st_size > 0
    assert tuned.source.step == 2


def test_fine_tune_refuses_data_of_another_profile(prepared16, tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="prepared with profile = 'native' but the model needs 'released'"):
        _run(prepared16, tmp_path, init=str(tiny_checkpoint))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(one_thread):
    torch.manual_seed(0)
    model = LungDDPM(small_config()).train()
    with torch.no_grad():
        for p in model.denoise_fn.parameters():
            p.normal_(0.0, 0.05)
    cond, x = random_layout(batch=2)
    t, noise = torch.tensor([1, 6]), torch.randn_like(x)
    results = []
    for flag in (False, True):
        model.denoise_fn.grad_checkpoint = flag
        model.zero_grad()
        loss = loss_at(model.denoise_fn, model.diffusion, x, cond, t, noise)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.denoise_fn.named_parameters()}))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-7)
    _assert_same_weights(results[0][1], results[1][1], atol=1e-6)


def test_bf16_step_is_close_to_float32(prepared16, tmp_path, one_thread):
    losses = []
    for flag in (False, True):
        run = _run(prepared16, tmp_path / str(flag), bf16=flag, steps=2)
        losses.append([run.train_step(), run.train_step()])  # step 1: the zero-initialised output layer predicts 0
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-6)
    assert losses[0][1] != losses[1][1] and abs(losses[0][1] - losses[1][1]) < 0.02 * losses[0][1]


def test_log_has_rate_memory_and_tensorboard(prepared16, tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    run = _run(prepared16, tmp_path, steps=2, tensorboard=True)
    run.fit()
    records = read_log(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["lr"] == 1e-3 and r["steps_per_s"] > 0 and r["peak_rss_mb"] > 50 for r in records)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_config_file_then_overrides_then_flags(tmp_path):
    (tmp_path / "run.toml").write_text('data = ["a"]\nlr = 2e-5\nsteps = 50\nchannel_mult = [1, 2, 2]\n')
    (tmp_path / "run.yaml").write_text("data: [a]\nlr: 2e-5\nsteps: 50\n")  # YAML 1.1 reads 2e-5 as text
    for name in ("run.toml", "run.yaml"):
        cfg = build_run_config(tmp_path / name, ["steps=60", "bf16=true"], steps=70)
        assert cfg.lr == 2e-5 and cfg.steps == 70 and cfg.bf16 is True and cfg.data == ["a"]
    assert build_run_config(tmp_path / "run.toml").model_config().channel_mult == (1, 2, 2)
    with pytest.raises(ConfigError, match="unknown training settings \\['learning_rate'\\]"):
        build_run_config(None, ["learning_rate=1"])
    with pytest.raises(ConfigError, match="must be a whole number"):
        build_run_config(None, ["steps=1.5"])


def test_progress_lines_and_validation_records_come_at_the_intervals_asked(prepared16, prepared16_val, tmp_path, capsys,
                                                                          one_thread):
    out = tmp_path / "run"
    assert main(["train", "--data", str(prepared16), str(prepared16_val), "--output", str(out), "--steps", "5",
                 "--threads", "1", "--batch-size", "1", *TINY, "--set", "log_every=2", "--set", "val_every=3",
                 "--set", "save_every=100", "--set", "workers=0", "--progress", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines.pop()
    assert [(r["event"], r["step"], r["total"]) for r in lines] == [
        ("training", 2, 5), ("validation", 3, 5), ("training", 4, 5), ("validation", 5, 5), ("training", 5, 5)]
    train, val = _records(read_log(out))
    assert [r["step"] for r in train] == [2, 4, 5] and [r["step"] for r in val] == [3, 5]
    assert all(r["val_s"] > 0 for r in val) and train[-1]["elapsed_s"] > sum(r["val_s"] for r in val)
    shown = [r for r in lines if r["event"] == "training"]
    assert [r["loss"] for r in shown] == pytest.approx([r["loss"] for r in train], rel=1e-5)
    assert all(r["steps_per_s"] > 0 and r["peak_rss_mb"] > 50 and np.isfinite(r["grad_norm"]) for r in shown)
    # best.pt is the step of the lowest validation loss, and its EMA weights give that loss again
    best = min(val, key=lambda r: r["val_loss"])
    assert summary["best"]["step"] == best["step"] == read_checkpoint(out / "best.pt")["step"] == val[-1]["best_step"]
    model = load_model(out / "best.pt")
    cases = PreparedCases(load_cases([str(prepared16_val)], VALIDATION_SPLIT)[0])
    again = validation_loss(model.denoise_fn, model.diffusion, cases, 4, DistContext())
    assert again == pytest.approx(best["val_loss"], abs=1e-6)
    # the steps that improved on the best are saved besides the schedule (here: only the last step)
    improved = [r["step"] for r in val if r["best_step"] == r["step"]]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{s:07d}.pt" for s in sorted({*improved, 5})]


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(prepared16, tmp_path, capsys,
                                                                                       one_thread):
    data = tmp_path / "data"
    shutil.copytree(prepared16, data)
    cases, _ = load_cases([str(data)])
    bad = cases[SampleOrder(len(cases), 0)(2)]  # sample position 2: step 3 with batch 1 and no accumulation
    x = np.load(bad.folder / "x.npy")
    x[0, 8, 8, 8] = np.nan  # a damaged prepared case
    np.save(bad.folder / "x.npy", x)
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--output", str(out), "--steps", "5", "--threads", "1", "--batch-size", "1",
                 *TINY, "--set", "grad_accum=1", "--set", "save_every=1", "--set", "workers=0", "--progress", "none"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"lungddpm: error: step 3: the loss is nan; stopped before updating the weights; the last "
                             f"good checkpoint is {out / 'latest.pt'} (step 2), unchanged; check the cases of this step "
                             f"({bad.case_id}) for NaN"), err[0]
    latest = read_checkpoint(out / "latest.pt")
    assert latest["step"] == 2 and all(torch.isfinite(v).all() for k in ("model", "ema") for v in latest[k].values())
    assert load_model(out / "latest.pt").source.step == 2  # load_model refuses non-finite weights
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001.pt", "step-0000002.pt"]
    assert [r["step"] for r in read_log(out)] == [1, 2]


def test_a_non_finite_gradient_stops_the_step_before_the_weights_change(prepared16, tmp_path, one_thread):
    run = _run(prepared16, tmp_path, steps=3)
    run.train_step()
    before = {k: v.clone() for k, v in run.model.denoise_fn.state_dict().items()}
    first = next(run.model.denoise_fn.parameters())
    first.register_hook(lambda g: g * float("inf"))  # an overflowing gradient (as fp16 without loss scaling can give)
    with pytest.raises(TrainingError, match=r"step 2: the gradient norm is (inf|nan); .*no checkpoint was written yet"):
        run.train_step()
    assert run.step == 1 and all(torch.equal(before[k], v) for k, v in run.model.denoise_fn.state_dict().items())


def test_bar_progress_to_a_file_is_a_line_per_report_after_a_note_on_missing_validation(prepared16, tmp_path, capsys,
                                                                                        one_thread):
    run = _run(prepared16, tmp_path, steps=2)
    run.fit("bar")
    lines = capsys.readouterr().err.split("\n")
    assert lines[0] == (f"lungddpm: note: {prepared16}: no validation cases, so no validation loss; prepare with "
                        "--val-fraction > 0 to have one")
    assert [line.split("]")[1].split()[0] for line in lines[1:3]] == ["1/2", "2/2"] and lines[3:] == [""]
    assert all(line.startswith("\rtraining [") and "  loss=" in line and "steps_per_s=" in line for line in lines[1:3])
