"""A `lungddpm train` run: prepared data, one or many processes (DDP), bf16, checkpoints, resume, logs, previews.

Per step every process takes its slots of the global batch (see ``dataset``), draws t and ε for each
sample from (seed, sample position) (``objective.position_noise``), accumulates gradients over
``grad_accum`` micro-batches (DDP synchronises on the last one only) and steps Adam. Rank 0 alone
keeps the EMA and writes checkpoints, logs and previews. A checkpoint holds model, EMA, optimiser,
step and RNG states; since the data order and the noise follow from (seed, step), ``resume``
continues the run exactly where its latest checkpoint left it.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from lungddpm.errors import CheckpointError, ConfigError
from lungddpm.io.atomic import atomic_output, remove_temporaries, write_text
from lungddpm.io.outputs import check_output_folder
from lungddpm.model.checkpoints import load_model, read_checkpoint, save_checkpoint
from lungddpm.model.config import ModelConfig
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.interrupt import leaves
from lungddpm.runtime.precision import autocast
from lungddpm.training.config import RunConfig
from lungddpm.training.data import PreparedCases, RunSampler, check_space, load_cases
from lungddpm.training.distributed import DistContext, barrier, init_distributed, mean_over_processes, shutdown
from lungddpm.training.objective import drop_attributes, loss_at, position_noise, refresh_ema
from lungddpm.training.runlog import RunLog, peak_memory_mb

LATEST = "latest.pt"


def checkpoint_path(output: str | Path, step: int) -> Path:
    """Where the checkpoint of a step goes."""
    return Path(output) / "checkpoints" / f"step-{step:07d}.pt"


def checkpoint_bytes(model: LungDDPM) -> int:
    """The bytes of one training checkpoint (model, EMA and Adam's two moments, float32); each save writes one more."""
    return 4 * 4 * sum(p.numel() for p in model.denoise_fn.parameters())


def point_latest(path: Path, output: str | Path) -> Path:
    """Make output/latest.pt the checkpoint at path, atomically (hard link or copy to a temporary name, then rename)."""
    latest = Path(output) / LATEST
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
        self.ema = copy.deepcopy(self.model.denoise_fn).requires_grad_(False) if ctx.is_main else None
        self.optimizer = torch.optim.Adam(self.model.denoise_fn.parameters(), lr=config.lr)
        self.step = 0
        if checkpoint is not None:
            self._restore(checkpoint)
        self.net: torch.nn.Module = self.model.denoise_fn
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model.denoise_fn, device_ids=ids)
        sampler = RunSampler(len(cases), config.seed, batch_size=config.batch_size, grad_accum=config.grad_accum,
                             rank=ctx.rank, world_size=ctx.world_size, start_step=self.step)
        schema = self.model.config.attributes
        loader = DataLoader(PreparedCases(cases, schema), batch_size=config.batch_size, sampler=sampler,
                            num_workers=config.workers, pin_memory=self.device.type == "cuda")
        self.batches = iter(loader)
        self.preview_case = PreparedCases(cases, schema)[(0, 0)]
        resume_step = self.step if checkpoint is not None else None
        self.log = RunLog(config.output, config.tensorboard, resume_step) if ctx.is_main else None

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
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step = int(checkpoint["step"])
        restore_rng_states(checkpoint["run"]["rng"])

    def train_step(self) -> float:
        """One optimiser step over grad_accum micro-batches; returns the mean loss over all processes."""
        self.net.train()
        accum = self.config.grad_accum
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, cond, attributes, positions = next(self.batches)
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
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and self.step % self.config.ema_every == 0:
            refresh_ema(self.ema, self.model.denoise_fn, self.step, self.config.ema_start, self.config.ema_decay)
        self.step += 1
        return float(mean_over_processes(total / accum, self.ctx))

    def save(self) -> Path:
        """Write this step's checkpoint and point latest.pt at it (rank 0 only; atomic)."""
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "run": {"config": self.config.to_dict(), "global_batch": self.global_batch,
                    "world_size": self.ctx.world_size, "rng": rng_states()},
        }
        path = save_checkpoint(checkpoint_path(self.config.output, self.step), self.model, ema=self.ema,
                               step=self.step, extra=extra)
        latest = point_latest(path, self.config.output)
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

    def fit(self) -> list[float]:
        """Train up to config.steps, logging, saving and previewing on schedule; returns this call's losses."""
        cfg = self.config
        if self.ctx.is_main:
            write_text(Path(cfg.output) / "config.json", json.dumps(cfg.to_dict(), indent=2))
            leaves(_kept(cfg.output, self.step))
        losses: list[float] = []
        start = mark = time.perf_counter()
        mark_step = self.step
        while self.step < cfg.steps:
            losses.append(self.train_step())
            if not self.ctx.is_main:
                continue
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                now = time.perf_counter()
                window = losses[-(self.step - mark_step):]
                self.log.write({"step": self.step, "loss": float(np.mean(window)), "lr": self.optimizer.param_groups[0]["lr"],
                                "steps_per_s": (self.step - mark_step) / (now - mark), "elapsed_s": now - start,
                                **peak_memory_mb(self.device)})
                mark, mark_step = now, self.step
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save()
            if cfg.preview_every and self.step % cfg.preview_every == 0:
                self.preview()
        barrier(self.ctx)
        if self.log is not None:
            self.log.close()
            remove_temporaries(Path(cfg.output))  # left by a killed earlier attempt; rank 0 alone writes here
        return losses


def _kept(output: str | Path, step: int) -> str:
    """What an interrupted run leaves: its latest checkpoint, or before the first one its settings and log only."""
    if step == 0:
        return f"wrote no checkpoint yet (only the settings and log in {output})"
    return f"kept the checkpoint of step {step} ({Path(output) / LATEST}); continue with --resume"


def _middle_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The middle slice of a (D, H, W) array along each axis."""
    d, h, w = volume.shape
    return [volume[d // 2], volume[:, h // 2], volume[:, :, w // 2]]


def run_training(config: RunConfig, resume: bool = False) -> dict | None:
    """Run training in this process (joining torchrun's process group if any); rank 0 returns a summary."""
    ctx = init_distributed(config.device)
    try:
        run = TrainingRun(config, ctx, resume=resume)
        start_step = run.step
        losses = run.fit()
    finally:
        shutdown(ctx)
    if not ctx.is_main:
        return None
    return {"step": run.step, "start_step": start_step, "processes": ctx.world_size, "device": str(ctx.device),
            "last_loss": losses[-1] if losses else None, "latest": str(Path(config.output) / LATEST)}
