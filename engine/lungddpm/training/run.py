"""A `lungddpm train` run: prepared data, one or many processes (DDP), bf16, checkpoints, resume, logs, previews.

Per step every process takes its slots of the global batch (see ``dataset``), draws t and ε for each
sample from (seed, sample position) (``objective.position_noise``), accumulates gradients over
``grad_accum`` micro-batches (DDP synchronises on the last one only) and steps Adam, unless the loss or
the gradient is not finite: then the run stops with a TrainingError before the weights change. Every
process keeps the EMA (the weights are the same in all of them), so all share the validation loss
(``validation``) every ``val_every`` steps; rank 0 alone writes checkpoints (``best.pt``: the lowest
validation loss so far), logs, console progress and previews. A checkpoint holds model, EMA, optimiser,
step and RNG states; since the data order and the noise follow from (seed, step), ``resume``
continues the run exactly where its latest checkpoint left it.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from lungddpm.errors import CheckpointError, ConfigError, InputError, TrainingError
from lungddpm.io.atomic import atomic_output, remove_temporaries, write_text
from lungddpm.io.outputs import check_output_folder
from lungddpm.model.checkpoints import load_model, read_checkpoint, save_checkpoint
from lungddpm.model.config import ModelConfig
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.interrupt import leaves
from lungddpm.runtime.precision import autocast
from lungddpm.runtime.progress import Progress
from lungddpm.training.config import RunConfig
from lungddpm.training.data import PreparedCases, RunSampler, check_space, load_cases
from lungddpm.training.distributed import DistContext, barrier, init_distributed, mean_over_processes, shutdown
from lungddpm.training.objective import drop_attributes, loss_at, position_noise, refresh_ema
from lungddpm.training.runlog import RunLog, peak_memory_mb
from lungddpm.training.validation import VALIDATION_SPLIT, validation_loss

LATEST = "latest.pt"
BEST = "best.pt"  # the checkpoint with the lowest validation loss so far


def checkpoint_path(output: str | Path, step: int) -> Path:
    """Where the checkpoint of a step goes."""
    return Path(output) / "checkpoints" / f"step-{step:07d}.pt"


def checkpoint_bytes(model: LungDDPM) -> int:
    """The bytes of one training checkpoint (model, EMA and Adam's two moments, float32); each save writes one more."""
    return 4 * 4 * sum(p.numel() for p in model.denoise_fn.parameters())


def point_latest(path: Path, output: str | Path, name: str = LATEST) -> Path:
    """Make output/name (latest.pt, best.pt) the checkpoint at path, atomically (hard link or copy, then rename)."""
    latest = Path(output) / name
    with atomic_output(latest) as temporary:
        try:
            os.link(path, temporary)
        except OSError:  # file systems without hard links
            shutil.copyfile(path, temporary)
    return latest


def rng_states() -> dict:
    """The RNG states a resumed run restores (torch CPU and CUDA, Python's random)."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Set the RNG states saved by rng_states."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class TrainingRun:
    """One process's share of a training run (the whole run when there is one process)."""

    def __init__(self, config: RunConfig, ctx: DistContext, resume: bool = False) -> None:
        self.config, self.ctx = config, ctx
        self.device = ctx.device
        if config.bf16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("bf16 was requested but this GPU does not support bfloat16; set bf16 = false")
        checkpoint = self._latest_checkpoint() if resume else None
        torch.manual_seed(config.seed)  # identical initial weights in every process
        self.model = self._build_model(checkpoint).to(self.device).train()
        if ctx.is_main:
            inputs = (*config.data, *([config.init] if config.init else []))
            check_output_folder(config.output, protect=inputs, needed_bytes=checkpoint_bytes(self.model))
        self.model.denoise_fn.grad_checkpoint = config.grad_checkpoint
        cases, space = load_cases(config.data, "train")
        check_space(space, self.model.config)
        self.ema = copy.deepcopy(self.model.denoise_fn).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.denoise_fn.parameters(), lr=config.lr)
        self.step = 0
        self.saved_step = 0  # the step of the latest checkpoint (0: none yet)
        self.best: dict | None = None  # {"val_loss", "step"} of best.pt
        self.grad_norm: float | None = None  # the last step's gradient norm (before Adam)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.net: torch.nn.Module = self.model.denoise_fn
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model.denoise_fn, device_ids=ids)
        self.cases = cases
        sampler = RunSampler(len(cases), config.seed, batch_size=config.batch_size, grad_accum=config.grad_accum,
                             rank=ctx.rank, world_size=ctx.world_size, start_step=self.step)
        schema = self.model.config.attributes
        loader = DataLoader(PreparedCases(cases, schema), batch_size=config.batch_size, sampler=sampler,
                            num_workers=config.workers, pin_memory=self.device.type == "cuda")
        self.batches = iter(loader)
        self.order = sampler.order
        self.validation = self._validation_cases(schema)
        self.preview_case = PreparedCases(cases, schema)[(0, 0)]
        resume_step = self.step if checkpoint is not None else None
        self.log = RunLog(config.output, config.tensorboard, resume_step) if ctx.is_main else None

    def _validation_cases(self, schema: tuple[str, ...]) -> PreparedCases | None:
        """The data's validation split, or None when validation is off or the data have none."""
        if not self.config.val_every:
            return None
        try:
            cases, _ = load_cases(self.config.data, VALIDATION_SPLIT)
        except InputError:  # the split is empty: prepared with --val-fraction 0
            return None
        return PreparedCases(cases, schema)

    @property
    def global_batch(self) -> int:
        """Samples per optimiser step over all processes."""
        return self.ctx.world_size * self.config.batch_size * self.config.grad_accum

    def _latest_checkpoint(self) -> dict:
        """The run's latest checkpoint, checked to belong to a run with the same global batch."""
        path = Path(self.config.output) / LATEST
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} does not exist; start the run without --resume")
        checkpoint = read_checkpoint(path)
        if "run" not in checkpoint:
            raise CheckpointError(f"{path} was not written by `lungddpm train` (no run state); fine-tune from it with --init")
        if checkpoint["run"]["global_batch"] != self.global_batch:
            raise ConfigError(f"{path} comes from a run with global batch {checkpoint['run']['global_batch']}, this run "
                              f"has {self.global_batch} (processes x batch_size x grad_accum); use the same global batch "
                              "to resume, or fine-tune from it with --init in a new output folder")
        return checkpoint

    def _build_model(self, checkpoint: dict | None) -> LungDDPM:
        """The network: from the checkpoint being resumed, from `init` (fine-tuning) or new from the config."""
        if checkpoint is not None:
            return LungDDPM(ModelConfig.from_dict(dict(checkpoint["config"])))
        if self.config.init:
            return load_model(self.config.init, "cpu", weights=self.config.init_weights)
        return LungDDPM(self.config.model_config())

    def _restore(self, checkpoint: dict) -> None:
        """Model, EMA, optimiser, step and RNG states from a checkpoint of this run."""
        self.model.denoise_fn.load_state_dict(checkpoint["model"])
        self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step = self.saved_step = int(checkpoint["step"])
        self.best = checkpoint["run"].get("best")
        restore_rng_states(checkpoint["run"]["rng"])

    def train_step(self) -> float:
        """One optimiser step over grad_accum micro-batches; returns the mean loss over all processes.

        Raises TrainingError, before the weights change, when the loss or the gradient is not finite.
        """
        self.net.train()
        accum = self.config.grad_accum
        total = torch.zeros((), device=self.device)
        seen: list[int] = []
        for micro in range(accum):
            x, cond, attributes, positions = next(self.batches)
            seen += positions.tolist()
            t, noise = position_noise(self.config.seed, positions, tuple(x.shape[1:]), self.model.config.timesteps)
            attributes = drop_attributes(self.config.seed, positions, attributes, self.config.cond_dropout) \
                if self.model.config.attributes else None
            x, cond, t, noise = (v.to(self.device, non_blocking=True) for v in (x, cond, t, noise))
            attributes = None if attributes is None else attributes.to(self.device)
            last = micro == accum - 1
            with nullcontext() if last or not self.ctx.distributed else self.net.no_sync():
                with autocast(self.device, "bf16" if self.config.bf16 else "fp32"):
                    loss = loss_at(self.net, self.model.diffusion, x, cond, t, noise, attributes)
                (loss / accum).backward()
            total += loss.detach()
        loss = float(mean_over_processes(total / accum, self.ctx))
        # after DDP's all-reduce every process holds the same gradients, hence the same norm and the same decision
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.denoise_fn.parameters(), float("inf")))
        if not (np.isfinite(loss) and np.isfinite(self.grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(self._diverged(loss, seen))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.step % self.config.ema_every == 0:
            refresh_ema(self.ema, self.model.denoise_fn, self.step, self.config.ema_start, self.config.ema_decay)
        self.step += 1
        return loss

    def _diverged(self, loss: float, positions: list[int]) -> str:
        """The message of a non-finite step: the step, what was not finite, this process's cases, the checkpoint kept."""
        what = f"the loss is {loss}" if not np.isfinite(loss) else f"the gradient norm is {self.grad_norm}"
        cases = sorted({self.cases[self.order(p)].case_id for p in positions})
        kept = (f"the last good checkpoint is {Path(self.config.output) / LATEST} (step {self.saved_step}), unchanged"
                if self.saved_step else "no checkpoint was written yet")
        return (f"step {self.step + 1}: {what}; stopped before updating the weights; {kept}; check the cases of this "
                f"step ({', '.join(cases)}) for NaN or extreme values, or lower lr (now {self.config.lr:g})"
                f"{' or turn bf16 off' if self.config.bf16 else ''}, then --resume or start again")

    def save(self) -> Path:
        """Write this step's checkpoint and point latest.pt at it (rank 0 only; atomic)."""
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "run": {"config": self.config.to_dict(), "global_batch": self.global_batch,
                    "world_size": self.ctx.world_size, "rng": rng_states(), "best": self.best},
        }
        path = save_checkpoint(checkpoint_path(self.config.output, self.step), self.model, ema=self.ema,
                               step=self.step, extra=extra)
        latest = point_latest(path, self.config.output)
        if self.best is not None and self.best["step"] == self.step:
            point_latest(path, self.config.output, BEST)
        leaves(_kept(self.config.output, self.step))
        return latest

    def preview(self) -> Path:
        """PNG of the middle slices (axial, coronal, sagittal) of a case and of an EMA sample (DDIM) for its layout."""
        from lungddpm.runtime.preview import write_png
        from lungddpm.sampling.noise import make_generator
        from lungddpm.sampling.sample import sample

        model = LungDDPM(self.model.config).to(self.device).eval()
        model.denoise_fn.load_state_dict(self.ema.state_dict())
        x, cond, _, _ = self.preview_case
        synthetic = sample(model, cond[None].to(self.device), x[None].to(self.device), sampler="ddim",
                           steps=self.config.preview_steps, generator=make_generator(self.config.seed, self.device))
        rows = [np.concatenate(_middle_slices(v[0, 0].float().cpu().numpy()), axis=1) for v in (x[None], synthetic)]
        gray = np.clip((np.concatenate(rows, axis=0) + 1) * 127.5, 0, 255).astype(np.uint8)
        path = Path(self.config.output) / "previews" / f"step-{self.step:07d}-synthetic.png"
        return write_png(np.repeat(gray[..., None], 3, axis=2), path)

    def validate(self) -> dict:
        """The validation loss of the EMA weights (all processes take part); updates the best so far."""
        precision = "bf16" if self.config.bf16 else "fp32"
        loss = validation_loss(self.ema, self.model.diffusion, self.validation, self.config.val_timesteps, self.ctx,
                               precision, self.config.batch_size)
        if self.best is None or loss < self.best["val_loss"]:
            self.best = {"val_loss": loss, "step": self.step}
        return {"step": self.step, "val_loss": loss, "best_val_loss": self.best["val_loss"], "best_step": self.best["step"]}

    def fit(self, progress: str = "none") -> list[float]:
        """Train up to config.steps, logging, validating, saving and previewing on schedule; returns this call's losses.

        progress (bar, json, none): rank 0's console lines, one per log record and one per validation.
        """
        cfg = self.config
        console = Progress(progress, label="training", start_step=self.step) if self.ctx.is_main else None
        if self.ctx.is_main:
            write_text(Path(cfg.output) / "config.json", json.dumps(cfg.to_dict(), indent=2))
            leaves(_kept(cfg.output, self.step))
            if progress != "none" and cfg.val_every and self.validation is None:
                print(f"lungddpm: note: {', '.join(cfg.data)}: no {VALIDATION_SPLIT} cases, so no validation loss; "
                      "prepare with --val-fraction > 0 to have one", file=sys.stderr)
        losses: list[float] = []
        start = mark = time.perf_counter()
        mark_step = self.step
        try:
            while self.step < cfg.steps:
                losses.append(self.train_step())
                last = self.step == cfg.steps
                improved = False
                if self.validation is not None and (self.step % cfg.val_every == 0 or last):
                    before, began = self.best, time.perf_counter()
                    record = {**self.validate(), "val_s": time.perf_counter() - began}
                    mark += record["val_s"]  # steps/s counts training time only
                    improved = self.best is not before
                    if self.ctx.is_main:
                        self.log.write(record, group="validation")
                        console(self.step, cfg.steps, {"event": "validation", **_rounded(record, "step")}, keep=True)
                saving = self.step % cfg.save_every == 0 or last or improved
                if saving:
                    self.saved_step = self.step
                if not self.ctx.is_main:
                    continue
                if self.step % cfg.log_every == 0 or last:
                    now = time.perf_counter()
                    window = losses[-(self.step - mark_step):]
                    record = {"step": self.step, "loss": float(np.mean(window)), "lr": self.optimizer.param_groups[0]["lr"],
                              "grad_norm": self.grad_norm, "steps_per_s": (self.step - mark_step) / (now - mark),
                              "elapsed_s": now - start, **peak_memory_mb(self.device)}
                    self.log.write(record)
                    console(self.step, cfg.steps, {"event": "training", **_rounded(record, "step", "lr", "elapsed_s")})
                    mark, mark_step = now, self.step
                if saving:
                    self.save()
                if cfg.preview_every and self.step % cfg.preview_every == 0:
                    self.preview()
            barrier(self.ctx)
        finally:
            if self.log is not None:
                self.log.close()
        if self.ctx.is_main:
            remove_temporaries(Path(cfg.output))  # left by a killed earlier attempt; rank 0 alone writes here
        return losses


def _rounded(record: dict, *left_out: str) -> dict:
    """A log record for the console: without the keys left out, floats to 6 significant digits."""
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in record.items() if k not in left_out}


def _kept(output: str | Path, step: int) -> str:
    """What an interrupted run leaves: its latest checkpoint, or before the first one its settings and log only."""
    if step == 0:
        return f"wrote no checkpoint yet (only the settings and log in {output})"
    return f"kept the checkpoint of step {step} ({Path(output) / LATEST}); continue with --resume"


def _middle_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The middle slice of a (D, H, W) array along each axis."""
    d, h, w = volume.shape
    return [volume[d // 2], volume[:, h // 2], volume[:, :, w // 2]]


def run_training(config: RunConfig, resume: bool = False, progress: str = "none") -> dict | None:
    """Run training in this process (joining torchrun's process group if any); rank 0 returns a summary.

    progress: rank 0's console lines (bar, json or none; see TrainingRun.fit).
    """
    ctx = init_distributed(config.device)
    try:
        run = TrainingRun(config, ctx, resume=resume)
        start_step = run.step
        losses = run.fit(progress)
    finally:
        shutdown(ctx)
    if not ctx.is_main:
        return None
    return {"step": run.step, "start_step": start_step, "processes": ctx.world_size, "device": str(ctx.device),
            "last_loss": losses[-1] if losses else None, "latest": str(Path(config.output) / LATEST),
            "best": None if run.best is None else {**run.best, "checkpoint": str(Path(config.output) / BEST)}}
