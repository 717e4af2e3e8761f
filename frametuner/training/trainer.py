"""The training loop: accelerate for devices, mixed precision and gradient accumulation.

One code path for CPU, one GPU and N processes (DDP or FSDP2, see
:mod:`frametuner.training.distributed`). The loop reads cached batches only
(:mod:`frametuner.training.data`); no encoder is in memory while training.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

import torch

from ..cache.entries import pad_text
from ..config.precision import base_weight_dtype
from ..lora.adapters import whole_tensor
from ..memory import MemoryPlan, apply_memory_options, load_transformer, memory_mode, offloads_weights, quantise_transformer, staging_device
from ..models.registry import load_spec
from . import checkpoint as ckpt
from .conditioning import draw_conditioning
from .checkpoint import load_checkpoint, recover_checkpoints, resolve_resume, restore_rng_state, rng_state
from .data import TrainingData
from .distributed import build_accelerator, end_run
from .events import EventLog
from .flow_matching import flow_matching_loss, sample_noise, sample_seeds, sample_sigmas
from .optim import build_lr_scheduler, build_optimizer

log = logging.getLogger(__name__)

def compiles_by_default(config, device: torch.device) -> bool:
    """Whether an unset ``compile_transformer`` compiles the DiT blocks: on CUDA, except under
    group offload, whose diffusers hooks run inside each block's call (block swap and
    activation offload sit outside it), and on an int4 base, whose tinygemm weights inductor
    fails on (bench/NOTES.md)."""
    return device.type == "cuda" and not config.enable_group_offload and config.base_model_precision != "int4-quanto"


class Trainer:
    """Owns the model, optimizer and loop state of one run."""

    def __init__(
        self,
        config,
        data: TrainingData | None = None,
        *,
        model: torch.nn.Module | None = None,
        validator: Callable[["Trainer", int], None] | None = None,
    ):
        from accelerate.utils import ProjectConfiguration

        self.config = config
        self.spec = load_spec(config.model_family)
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        log_with = None if config.report_to == "none" else config.report_to
        if log_with == "wandb":
            try:
                import wandb  # noqa: F401  (only to fail early with a clear message)
            except ImportError as error:
                raise RuntimeError("report_to 'wandb' needs the wandb package: pip install wandb (or report_to 'tensorboard')") from error
        self.accelerator = build_accelerator(
            config,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
        )
        self.events = EventLog(self.output_dir, enabled=self.accelerator.is_main_process)
        self.validator = validator
        self.data = data
        self.global_step = 0
        self.epoch = 0
        self.stop_reason: str | None = None  # agreed by all ranks; a signal only requests it
        self._stop_requested: str | None = None

        self.seed = config.seed if config.seed is not None else 0
        torch.manual_seed(self.seed)
        # One generator for everything random in a step (sigmas, noise seeds, caption
        # dropout), in the same state on every rank: each draws for the global batch and
        # keeps its own rows. Its state is checkpointed; validation never draws from it.
        self.generator = torch.Generator().manual_seed(self.seed)
        # Samples of the global batches drawn per mode this run ("vc->t2v": a clip too short for vc).
        self.conditioning_counts: Counter = Counter()

        self.model = model if model is not None else self._load_model()
        # A model handed in (benchmarks, tests, the server) gets the config's kernel choice too.
        self.spec.configure_attention(self.model, config)
        self.memory: MemoryPlan | None = None
        self._prepare_trainable()
        self.optimizer = build_optimizer(config, list(self._trainable_parameters().values()), self.accelerator.device)
        self.max_steps = self._total_steps()
        self.lr_scheduler = build_lr_scheduler(config, self.optimizer, self.max_steps)
        # Block swap / group offload placed the model themselves (part of it in host memory).
        place_model = not (self.memory is not None and self.memory.places_model)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            self.model, self.optimizer, self.lr_scheduler, device_placement=[place_model, True, True]
        )
        # FSDP2 swaps every parameter for a sharded one: clip through the live ones.
        self.trainable = self._trainable_parameters()
        self.sharded = self.accelerator.is_fsdp2
        if self.sharded and config.init_lora and self.accelerator.is_main_process:
            log.warning(
                "init_lora under FSDP: gradient hooks do not survive sharding, so the block-diagonal fused layers of "
                "an upstream-format LoRA lose that structure (and are exported upstream at a multiple of the rank); "
                "distributed.strategy 'ddp' keeps it"
            )

    # ------------------------------------------------------------------ setup
    def _load_model(self) -> torch.nn.Module:
        config = self.config
        root = self.spec.checkpoint_root(config.model_flavour, config.pretrained_model_name_or_path)
        dtype = base_weight_dtype(config)
        if config.model_type == "full" and config.base_model_precision == "no_change":
            dtype = torch.float32  # float32 master weights; compute follows mixed_precision
        log.info("loading %s transformer from %s as %s (%s)", config.model_family, root, dtype, memory_mode(config))
        return load_transformer(self.spec, root, config, device=self.accelerator.device, dtype=dtype, training=True)

    def _trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        model = self.accelerator.unwrap_model(self.model)
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def _prepare_trainable(self) -> None:
        config, model = self.config, self.model
        if config.model_type == "lora":
            from ..lora import add_lora, add_lora_from_file

            model.requires_grad_(False)
            # A model handed in unquantised (the benchmark's) is quantised here, before LoRA wraps it.
            device = self.accelerator.device
            quantise_transformer(
                model, config.base_model_precision, device=device,
                offload_to=staging_device(config.base_model_precision, device, offloads_weights(config)),
            )
            # New LoRA weights from the seed alone, whatever loading the model drew: the
            # same on every rank (FSDP shards without broadcasting) and in every run.
            torch.manual_seed(self.seed)
            if config.init_lora:  # continue from a LoRA file of any format (its rank and targets)
                from ..config import resolve_input_path

                add_lora_from_file(model, resolve_input_path(config, config.init_lora), dropout=config.lora_dropout)
            else:
                targets = config.lora_target_modules or list(self.spec.default_lora_targets)
                add_lora(
                    model, rank=config.lora_rank, alpha=config.effective_lora_alpha, dropout=config.lora_dropout,
                    target_modules=targets, family=self.spec,
                )
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.float()  # LoRA weights train in float32
        else:
            model.requires_grad_(True)
        self._configure_speed(model)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        log.info("%s training: %.2fM trainable parameters in %d tensors", config.model_type, sum(p.numel() for p in trainable) / 1e6, len(trainable))

    def _configure_speed(self, model: torch.nn.Module) -> None:
        """Checkpointing policy, memory options (offload, swap) and regional compilation
        (see bench/NOTES.md for the numbers)."""
        from ..memory.auto import auto_activation_budget, decide_activation_offload

        config, device = self.config, self.accelerator.device
        policy = config.gradient_checkpointing_policy
        if config.gradient_checkpointing:
            budget = None
            if policy == "auto":
                if device.type == "cuda":  # the card's real capacity, minus a margin (memory/auto.py)
                    gb = config.activation_memory_budget_gb
                    budget = int(gb * 2**30) if gb else auto_activation_budget(device)
                else:
                    policy = "full"
            model.enable_gradient_checkpointing(policy, budget_bytes=budget)
            if budget is not None:
                log.info("auto checkpointing policy: attention kept in as many blocks as a %.1f GB peak allows", budget / 2**30)
        offload = decide_activation_offload(
            config.gradient_checkpointing_cpu_offload, device_type=device.type,
            gradient_checkpointing=config.gradient_checkpointing, policy=policy, processes=self.accelerator.num_processes,
        )
        if config.gradient_checkpointing_cpu_offload is None:
            log.info("activation offload: %s", offload.reason)
        if config.fp8_compute:
            from ..memory.fp8 import enable_configured_fp8_compute

            enable_configured_fp8_compute(model, device, config, self.spec)
        self.memory = apply_memory_options(
            model, config, device, training=True, activation_offload=offload.enabled, check_host_ram=offload.check_host_ram
        )
        compile_blocks = config.compile_transformer
        if compile_blocks is None:
            compile_blocks = compiles_by_default(config, device)
        if compile_blocks:
            from ..compile_cache import enable_compile_cache

            enable_compile_cache()  # a second run of the same config reuses the compiled graphs
            model.compile_blocks()

    def _total_steps(self) -> int:
        if self.config.max_train_steps:
            return self.config.max_train_steps
        if self.data is None:
            raise ValueError("max_train_steps is not set and there is no dataset to count epochs from")
        per_epoch = math.ceil(self.data.batches_per_epoch() / self.config.gradient_accumulation_steps)
        return max(1, per_epoch * self.config.num_train_epochs)

    # ------------------------------------------------------------------ one step
    def training_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """Forward + loss for one micro-batch (no backward).

        The random draws are made for the global batch (every rank's micro-batch, in rank
        order) and each rank keeps its rows: N ranks with batch b train exactly like one
        process with batch N*b, and a run resumes exactly on another number of ranks.
        """
        config, device = self.config, self.accelerator.device
        latents = batch["latents"].to(device, torch.float32)
        local = latents.shape[0]
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = slice(rank * local, (rank + 1) * local)
        text, text_mask = batch["text"], batch["text_mask"]
        if config.caption_dropout_probability > 0:
            drop = torch.rand(local * world, generator=self.generator)[mine] < config.caption_dropout_probability
            text, text_mask = self._drop_captions(text, text_mask, drop)
        # Conditioning frames per sample: an int for the batch, or a [B] tensor (a mixed batch).
        k = batch.get("num_cond_latents", 0)
        forward_calls = None
        if batch.get("conditioning") is not None:  # the dataset's conditioning mix: a mode per sample
            latents, k, forward_calls = self._draw_conditioning(batch, latents, local, world, mine)
        sigmas = sample_sigmas(
            local * world,
            generator=self.generator,
            distribution=config.timestep_sampling,
            shift=self.training_shift,
            logit_mean=config.logit_mean,
            logit_std=config.logit_std,
        )[mine]
        seeds = sample_seeds(local * world, generator=self.generator)[mine]
        noise = sample_noise(tuple(latents.shape[1:]), seeds, device)
        inputs = self.spec.training_inputs(latents, noise, sigmas.to(device), num_cond_latents=k)
        inputs.forward_calls = forward_calls
        for name, value in (batch.get("conditioning_inputs") or {}).items():  # the family's cached extras (cache/)
            inputs.conditioning[name] = value.to(device)
        # accelerate autocasts a prepared model's forward, except under FSDP2 (which has its own policy).
        with self.accelerator.autocast() if self.sharded else nullcontext():
            prediction = self.spec.training_forward(self.model, inputs, text.to(device), text_mask.to(device))
        return flow_matching_loss(prediction, inputs)

    @property
    def training_shift(self) -> float:
        """The sigma shift of the timestep draw: ``flow_schedule_shift``, else the family's."""
        shift = self.config.flow_schedule_shift
        return self.spec.defaults.training_shift if shift is None else shift

    def _draw_conditioning(self, batch: dict[str, Any], latents: torch.Tensor, local: int, world: int, mine: slice):
        """Each sample's mode (t2v, i2v, continuation) from the batch's conditioning mix.

        Drawn from the step generator for the global batch like the sigmas (a resumed run
        and N ranks draw what one uninterrupted process would); a clip too short for its mode
        trains as t2v. The clean frames are the clip's own cached latents, except that an
        i2v sample with a conditioning image (``image_latents``) gets the image in frame 0.
        Returns the latents, ``num_cond_latents`` ``[B]`` and the most distinct Ks any rank
        holds (the DiT calls every rank makes, so that their collectives stay in step).
        """
        plan = draw_conditioning(
            batch["conditioning"], local * world, latent_frames=latents.shape[2],
            temporal_stride=self.spec.info.frame_stride, generator=self.generator,
        )
        rows = plan[mine]
        images = batch.get("image_latents")
        i2v = [row for row, item in enumerate(rows) if item.mode == "i2v"]
        if images is not None and i2v:
            latents = latents.clone()
            latents[i2v, :, :1] = images[i2v].to(latents)
        k = torch.tensor([item.num_cond_latents for item in rows], dtype=torch.int64)
        self.conditioning_counts.update(item.mode if not item.fallback else f"{item.drawn}->t2v" for item in plan)
        calls = max(len({item.num_cond_latents for item in plan[r * local : (r + 1) * local]}) for r in range(world))
        return latents, k, calls

    def step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One micro-batch: forward, loss, backward and (at accumulation boundaries) the
        optimizer step. Returns the loss and the pre-clip gradient norm, both on the device
        (no host sync here; the benchmark times exactly this)."""
        with self.accelerator.accumulate(self.model):
            loss = self.training_step(batch)
            self.accelerator.backward(loss)
            grad_norm = None
            if self.accelerator.sync_gradients and self.config.max_grad_norm:
                grad_norm = self.accelerator.clip_grad_norm_(list(self.trainable.values()), self.config.max_grad_norm)
                grad_norm = whole_tensor(grad_norm)  # FSDP2: a DTensor
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), grad_norm

    def _drop_captions(self, text: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if drop.any():
            empty_text, empty_mask = self.data.empty_text()
            # Padded to this batch's length here: cached batches are padded per batch, and an
            # unpadded [n, C] empty prompt would broadcast its last row over all L rows.
            empty_text, empty_mask = pad_text(empty_text[empty_mask.bool()], text.shape[1])
            text, mask = text.clone(), mask.clone()
            text[drop] = empty_text.to(text.dtype)
            mask[drop] = empty_mask.to(mask.dtype)
        return text, mask

    # ------------------------------------------------------------------ state
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights as whole tensors (under FSDP every rank must call: it gathers)."""
        return {n: whole_tensor(p) for n, p in self._trainable_parameters().items()}

    def save(self, reason: str = "periodic") -> Path:
        """A resumable checkpoint with LoRA exports inside; returns its folder.

        Every rank calls it: the main process opens a staging folder, each rank writes its
        part (its RNG; under FSDP its shards of weights and optimizer state; the LoRA is
        gathered on all ranks), and the main process commits the folder.
        """
        accelerator, step = self.accelerator, self.global_step
        staging = ckpt.staging_folder(self.checkpoint_dir, step)
        if accelerator.is_main_process:
            ckpt.begin_checkpoint(self.checkpoint_dir, step)
        accelerator.wait_for_everyone()
        model = accelerator.unwrap_model(self.model)
        with ckpt.saving(staging):  # a full disk: the partial goes, one clear error
            if self.sharded:
                ckpt.write_sharded_state(staging, model, self.optimizer.optimizer)
            elif accelerator.is_main_process:
                ckpt.write_plain_state(staging, weights=self.trainable_state_dict(), optimizer=self.optimizer)
            ckpt.write_rank_state(staging, accelerator.process_index, rng_state({"trainer": self.generator}))
        lora = self._lora_weights() if self.config.model_type == "lora" else None
        accelerator.wait_for_everyone()
        path = ckpt.checkpoint_folder(self.checkpoint_dir, step)
        if accelerator.is_main_process:
            if lora is not None:
                with ckpt.saving(staging):
                    self._write_exports(staging, lora)
            trainer_state = {
                "epoch": self.epoch,
                "data": self.data.state_dict() if self.data else None,
                "reason": reason,
                "num_processes": accelerator.num_processes,
                "strategy": "fsdp" if self.sharded else ("ddp" if accelerator.num_processes > 1 else "none"),
            }
            path = ckpt.commit_checkpoint(staging, step, scheduler=self.lr_scheduler, trainer_state=trainer_state, keep=self.config.checkpoints_total_limit)
            exports = {fmt: str(p.relative_to(self.output_dir)) for fmt, p in self._export_paths(path).items()}
            self.events.emit("checkpoint", step=step, path=str(path.relative_to(self.output_dir)), lora=exports)
            log.info("saved checkpoint %s", path)
        accelerator.wait_for_everyone()
        return path

    def _lora_weights(self):
        from ..lora import lora_weights_from_model

        return lora_weights_from_model(self.accelerator.unwrap_model(self.model), metadata=self._lora_metadata())

    def _write_exports(self, folder: Path, weights) -> dict[str, Path]:
        from ..lora import export_lora

        return export_lora(
            self.accelerator.unwrap_model(self.model),
            folder / "lora",
            formats=self.config.lora_export_formats,
            metadata=self._lora_metadata(),
            weights=weights,
        )

    def _export_paths(self, folder: Path) -> dict[str, Path]:
        """The LoRA files inside a checkpoint folder, by format."""
        if self.config.model_type != "lora":
            return {}
        from ..lora import EXPORT_NAMES

        return {fmt: folder / "lora" / EXPORT_NAMES[fmt] for fmt in self.config.lora_export_formats}

    def _lora_metadata(self) -> dict[str, str]:
        config = self.config
        return {
            "base_model": f"{config.model_family}:{config.model_flavour}",
            "rank": str(config.lora_rank),
            "alpha": str(config.effective_lora_alpha),
            "step": str(self.global_step),
        }

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint: exactly on the same number of ranks; on another number
        too (weights, optimizer and schedule exactly; the data order only approximately)."""
        accelerator = self.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        state = load_checkpoint(path, rank=rank)
        saved = state["state"]
        saved_world = int(saved.get("num_processes", 1))
        if saved_world != world and accelerator.is_main_process:
            log.warning(
                "checkpoint %s was written by %d process(es), resuming on %d: weights, optimizer state and schedule "
                "continue exactly; the data order continues from the same point of the epoch but not sample for sample",
                path, saved_world, world,
            )
        model = accelerator.unwrap_model(self.model)
        if state["sharded"]:
            ckpt.load_sharded_state(path, model, self.optimizer.optimizer)
        elif self.sharded:
            raise RuntimeError(
                f"checkpoint {path} holds whole weights (written by one process or DDP); resume it with "
                "distributed.strategy 'ddp', or start a new FSDP run from its LoRA with init_lora"
            )
        else:
            params = self._trainable_parameters()
            unknown = [n for n in state["weights"] if n not in params]
            if unknown:
                raise RuntimeError(f"checkpoint {path} does not fit this model: {unknown[0]} (and {len(unknown) - 1} more) unknown")
            with torch.no_grad():
                for name, value in state["weights"].items():
                    params[name].copy_(value)
            self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        # The step generator is the same on every rank, so rank 0's state serves a rank the
        # checkpoint did not have; the global RNGs (dropout) of such a rank restart from it too.
        restore_rng_state(state["rng"], {"trainer": self.generator})
        self.global_step = saved["step"]
        self.epoch = saved["epoch"]
        if self.data is not None and saved.get("data") is not None:
            self.data.load_state_dict(saved["data"])
        log.info("resumed from %s at step %d", path, self.global_step)

    # ------------------------------------------------------------------ loop
    @contextmanager
    def _graceful_stop(self):
        """SIGTERM / Ctrl-C finish the current step, save a checkpoint and exit cleanly."""
        previous = {}

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self._stop_requested is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            self._stop_requested = name
            log.warning("%s received: saving a checkpoint after this step", name)

        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread
                pass
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)

    def train(self) -> dict[str, Any]:
        if self.data is None:
            raise ValueError("Trainer.train() needs training data")
        with self._graceful_stop():
            return self._train()

    def _agree_on_stop(self) -> str | None:
        """The stop reason once any rank was signalled: all ranks must leave the loop after
        the same step, or the next collective would wait forever."""
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            requested = self._stop_requested
            code = torch.tensor([signal.Signals[requested].value if requested else 0], device=self.accelerator.device)
            dist.all_reduce(code, op=dist.ReduceOp.MAX)
            value = int(code.item())
            self.stop_reason = signal.Signals(value).name if value else None
        else:
            self.stop_reason = self._stop_requested
        return self.stop_reason

    def _train(self) -> dict[str, Any]:
        config = self.config
        if self.accelerator.is_main_process:
            recover_checkpoints(self.checkpoint_dir)  # finish what a killed save left
        self.accelerator.wait_for_everyone()
        resume = resolve_resume(self.checkpoint_dir, config.resume_from_checkpoint)
        if resume is not None:
            self.resume(resume)
            where = resume.resolve().relative_to(self.output_dir.resolve()) if resume.resolve().is_relative_to(self.output_dir.resolve()) else resume
            # Steps past the checkpoint that a killed launch logged are done again: readers drop the old ones.
            self.events.emit("resume", step=self.global_step, checkpoint=str(where))
        if self.accelerator.is_main_process and config.report_to != "none":
            # TensorBoard hides what earlier launches logged from the next step on (they are redone now).
            purge = {"tensorboard": {"purge_step": self.global_step + 1}}
            self.accelerator.init_trackers(config.tracker_project_name, config={k: str(v) for k, v in config.model_dump().items()}, init_kwargs=purge)
        self.events.emit("start", max_steps=self.max_steps, step=self.global_step, config=config.model_dump(mode="json"))
        started = time.perf_counter()

        if self.global_step == 0:
            self._validate()
        progress = self._progress_bar()
        smoothed = None
        step_started = time.perf_counter()
        while self.global_step < self.max_steps and self._agree_on_stop() is None:
            for batch in self.data.epoch(self.epoch):
                loss, grad_norm = self.step(batch)
                if not self.accelerator.sync_gradients:
                    continue
                self.global_step += 1
                now = time.perf_counter()
                seconds = now - step_started
                step_started = now
                value = self.accelerator.reduce(loss.detach(), reduction="mean").item()
                smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
                self._log_step(value, smoothed, grad_norm, seconds, batch, progress)
                if self._agree_on_stop() is not None or self.global_step >= self.max_steps:
                    break  # the stop or final checkpoint (and validation) follow below
                if self.global_step % config.checkpointing_steps == 0:
                    self.save()
                if self.global_step % config.validation_steps == 0:
                    self._validate()
            else:
                self.epoch += 1
                continue
            break
        progress.close()

        if self.stop_reason is not None:
            checkpoint = self.save(reason=self.stop_reason)
            self.events.emit("stopped", step=self.global_step, reason=self.stop_reason, checkpoint=str(checkpoint.relative_to(self.output_dir)))
            end_run(self.accelerator)
            return {"stopped": self.stop_reason, "step": self.global_step, "checkpoint": checkpoint}

        final = self.save(reason="final")
        self._validate(final=True)
        seconds = time.perf_counter() - started
        exports = {fmt: p for fmt, p in self._export_paths(final).items()}
        self.events.emit(
            "done", step=self.global_step, seconds=seconds, lora={k: str(v.relative_to(self.output_dir)) for k, v in exports.items()},
            **({"conditioning": dict(self.conditioning_counts)} if self.conditioning_counts else {}),
        )
        if self.conditioning_counts:
            log.info("conditioning modes trained (since this launch): %s", dict(sorted(self.conditioning_counts.items())))
        end_run(self.accelerator)
        return {"step": self.global_step, "seconds": seconds, "checkpoint": final, "lora": exports}

    def _progress_bar(self):
        from tqdm.auto import tqdm

        return tqdm(
            total=self.max_steps,
            initial=self.global_step,
            desc="training",
            unit="step",
            disable=not self.accelerator.is_main_process,
            dynamic_ncols=True,
        )

    def _log_step(self, loss: float, smoothed: float, grad_norm, seconds: float, batch: dict, progress) -> None:
        lr = self.lr_scheduler.get_last_lr()[0]
        # Global throughput: every rank's micro-batches of this optimizer step.
        samples = batch["latents"].shape[0] * self.accelerator.num_processes * self.config.gradient_accumulation_steps
        samples_per_s = samples / max(seconds, 1e-9)
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        norm = float(grad_norm) if grad_norm is not None else None
        remaining = (self.max_steps - self.global_step) * seconds
        progress.set_postfix(loss=f"{smoothed:.4f}", lr=f"{lr:.2e}", s_step=f"{seconds:.2f}", samples_s=f"{samples_per_s:.2f}", refresh=False)
        progress.update(1)
        metrics = {"loss": loss, "loss_smoothed": smoothed, "lr": lr, "step_time_s": seconds, "samples_per_s": samples_per_s, "peak_memory_gb": peak_gb}
        if norm is not None:
            metrics["grad_norm"] = norm
        if self.config.report_to != "none":
            self.accelerator.log(metrics, step=self.global_step)
        self.events.emit(
            "step", step=self.global_step, loss=loss, loss_smoothed=smoothed, lr=lr, s_per_step=seconds,
            samples_per_s=samples_per_s, eta_s=remaining, grad_norm=norm, peak_gb=peak_gb,
        )

    def _validate(self, final: bool = False) -> None:
        """Run the validator on the main process; under FSDP on every rank, since the sharded
        model's forwards need all of them (the validator writes on the main process only)."""
        if self.validator is None:
            return
        if self.accelerator.is_main_process or self.sharded:
            # Validation must not disturb training: every RNG is restored afterwards.
            saved = rng_state({"trainer": self.generator})
            model = self.accelerator.unwrap_model(self.model)
            was_training = model.training
            model.eval()
            try:
                self.validator(self, self.global_step)
            finally:
                model.train(was_training)
                restore_rng_state(saved, {"trainer": self.generator})
        self.accelerator.wait_for_everyone()
