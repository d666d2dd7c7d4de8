"""The training loop: iteration-based, AdamW + warmup/poly, AMP, grad clipping, periodic evaluation,
atomic checkpoints that resume exactly, DDP under torchrun.

Every step checks that the loss is finite before the optimizer applies it (a diverged run stops with one
line; no checkpoint of non-finite weights is ever written). SIGTERM (what SLURM and Kubernetes send
before they stop a job) and Ctrl-C make the run finish its current step, write a checkpoint, print one
line and exit with code 143 (SIGTERM) or 130 (Ctrl-C): see docs/training.md, "Preemption"."""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cssformer.errors import UsageError
from cssformer.data.io import DatasetError
from cssformer.data.loader import ResumableSampler, SampleError, TrainSet, collate_train
from cssformer.engine import accumulate, builders, runtime
from cssformer.engine import checkpoint as ckpt
from cssformer.engine import curves
from cssformer.engine import distributed as D
from cssformer.engine import workdir
from cssformer.engine.config import save_yaml
from cssformer.engine.workdir import BEST, CONFIG, LAST, LOG, checkpoint_name, checkpoints
from cssformer.engine.evaluation import evaluate
from cssformer.engine.inference import TestOptions
from cssformer.engine.logger import JsonlLog, TrainProgress
from cssformer.engine.logger import console as plain_console
from cssformer.engine.optim import WarmupPoly, build_optimizer, build_scheduler
from cssformer.metrics import format_table


def train(cfg: dict, resume: str | None = None, default_work_dir: bool = False) -> dict:
    """Trains as ``cfg`` (a resolved config, see ``engine/config.py``) says; returns the last evaluation.

    ``resume``: a checkpoint path or ``"auto"`` (the work dir's newest). ``default_work_dir``: the work
    dir was not chosen by the user, so an occupied one is replaced by a fresh numbered sibling.
    """
    info = D.setup(cfg["device"])
    try:
        return Trainer(cfg, info, resume, default_work_dir).run()
    finally:
        D.cleanup()


def _work_dir(cfg: dict, resume: str | None, default: bool, info: D.DistInfo):
    """(work dir, its lock): rank 0 checks the folder is free for this run (see ``engine/workdir.py``)
    and takes the lock; every rank gets the path or rank 0's refusal."""
    lock, answer = None, None
    if info.is_main:
        try:
            path = workdir.choose(Path(cfg["work_dir"]), resume is not None, default)
            lock = workdir.WorkDirLock(path).acquire()
            answer = str(path)
        except UsageError as err:
            answer = err
    answer = D.broadcast_object(answer, info)
    if isinstance(answer, UsageError):
        raise answer
    return Path(answer), lock


class NonFiniteError(UsageError):
    """The loss or the weights became NaN / inf: the run stops before anything of that step is written."""


class Preempted(SystemExit):
    """Training stopped on SIGTERM / SIGINT after writing a checkpoint; ``code`` is 128 + the signal
    number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process ended by that signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class StopSignals:
    """While active, SIGTERM and SIGINT only ask the run to stop after its current step
    (``requested``); a second Ctrl-C stops at once (``KeyboardInterrupt``). A second SIGTERM changes
    nothing: torchrun forwards the SIGTERM a scheduler already sent to every process of the job.
    Installed only in the main thread; the previous handlers come back on exit. A signal the process
    was started with ignored (SIGINT of a job a shell script started with ``&``) stays ignored, as
    Python itself leaves it."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = signum
        if signum == signal.SIGINT:
            sys.stderr.write("cssformer train: Ctrl-C: stopping after the current step with a checkpoint "
                             "(Ctrl-C again to stop at once)\n")

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGINT to the main process (a scheduler signals them all): the
    main process ends them when it stops."""
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class Meter:
    """Sums of the losses between two log lines, and the time spent waiting for data."""

    def __init__(self):
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.loss, self.parts, self.n, self.t0, self.waited = 0.0, {}, 0, now, 0.0

    def add(self, loss, parts: dict) -> None:
        self.loss = self.loss + loss
        self.parts = {k: self.parts.get(k, 0.0) + v for k, v in parts.items()}
        self.n += 1

    def record(self, lr: float, batch_size: int, now: float) -> dict:
        elapsed = now - self.t0
        return {"loss": float(self.loss) / self.n, **{k: float(v) / self.n for k, v in self.parts.items()},
                "lr": lr, "it_per_s": self.n / elapsed, "img_per_s": self.n * batch_size / elapsed,
                "data_wait": self.waited / elapsed}


def dry_run(cfg: dict, resume: str | None = None, default_work_dir: bool = False) -> "Trainer":
    """``--dry-run``: everything ``train`` checks before its first step (work dir, batch split, data,
    model, optimiser, the checkpoint to resume), writing nothing; returns the set-up trainer."""
    info = D.setup(cfg["device"])
    try:
        return Trainer(cfg, info, resume, default_work_dir, dry_run=True)
    finally:
        D.cleanup()


class Trainer:
    def __init__(self, cfg: dict, info: D.DistInfo, resume: str | None, default_work_dir: bool,
                 dry_run: bool = False):
        self.cfg, self.info, self.dry_run = dict(cfg), info, dry_run
        # everything that can fail on user input happens before anything is written: on a failure the
        # lock and marker this run put into the work dir are taken back
        if dry_run:  # the folder the run would take; no lock, no marker
            self.work_dir, self.lock = workdir.choose(Path(cfg["work_dir"]), resume is not None, default_work_dir), None
        else:
            self.work_dir, self.lock = _work_dir(cfg, resume, default_work_dir, info)
        self.cfg["work_dir"] = str(self.work_dir)
        try:
            self._setup(cfg, info, resume)
        except BaseException:
            if self.lock is not None:
                self.lock.abandon()
            raise

    def _setup(self, cfg: dict, info: D.DistInfo, resume: str | None) -> None:
        torch.manual_seed(cfg["seed"] + info.rank)
        self.accum = int(cfg["accum_steps"])
        self.micro = accumulate.micro_batch(cfg["batch_size"], self.accum, info.world_size)
        self.train_set, self.val_set = builders.datasets(cfg)
        if len(self.train_set) // info.world_size < self.micro:
            raise UsageError(f"the training set has {len(self.train_set)} images: fewer than {self.micro} per "
                             f"micro-batch x {info.world_size} processes")
        if info.is_main and hasattr(self.val_set, "check"):
            self.val_set.check()  # a bad validation image or mask stops the run now, not at the first evaluation
        self.model = builders.model(cfg, self.train_set.num_classes).to(info.device)
        from cssformer.models import SegmentationLoss
        self.loss_fn = SegmentationLoss(aux_weight=cfg["aux_weight"])
        self.amp_dtype = runtime.amp_dtype(cfg["amp"])
        runtime.set_tf32(cfg.get("tf32", False))
        self.ddp_model = D.wrap_model(self.model, info, cfg["sync_bn"])
        raw = self.ddp_model.module if info.enabled else self.model
        self.model = raw  # SyncBN conversion may have replaced modules: keep the converted one
        # the training forward only; evaluation and checkpoints use the plain module (same parameters)
        self.ddp_model = runtime.compiled(self.ddp_model, cfg["compile"])
        self.optimizer = build_optimizer(raw, cfg["lr"], cfg["weight_decay"], cfg["betas"])
        self.scheduler = build_scheduler(self.optimizer, cfg["iters"], cfg["warmup_iters"], cfg["warmup_ratio"],
                                         cfg["poly_power"], cfg["min_lr"])
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=cfg["amp"] == "fp16")
        self.iteration, self.best_miou = 0, -math.inf
        self.written: list[Path] = []  # iter_*.pth this process wrote: the only ones rotation deletes
        self.saved_iteration = None
        if resume is not None:
            self._resume(ckpt.resolve_resume(resume, self.work_dir))
            self.saved_iteration = self.iteration
        self.log: JsonlLog | None = None
        if self.dry_run:
            if cfg["tensorboard"]:
                from cssformer.errors import require
                require("tensorboard", "tensorboard")
            return
        self.log = JsonlLog(self.work_dir / LOG if info.is_main else None, tensorboard=cfg["tensorboard"])

    # --- checkpoints ---
    def _resume(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        ckpt.load_weights(self.model, state, path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError) as err:
            raise UsageError(f"checkpoint {path} has no usable optimiser / scheduler state: {err}") from None
        cfg = self.cfg  # the schedule follows this run's settings (same as the checkpoint's for an exact resume)
        fn = WarmupPoly(cfg["iters"], min(cfg["warmup_iters"], cfg["iters"]), cfg["warmup_ratio"],
                        cfg["poly_power"], cfg["min_lr"] / cfg["lr"])
        self.scheduler.lr_lambdas = [fn] * len(self.optimizer.param_groups)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng") or []
        if self.info.rank < len(rng):
            ckpt.set_rng_state(rng[self.info.rank])
        self.iteration = int(state["iteration"])  # checked by load_checkpoint: an int >= 0
        self.best_miou = float(state.get("best_miou", -math.inf))
        if self.iteration >= cfg["iters"]:
            raise UsageError(f"checkpoint {path} is at iteration {self.iteration}: nothing left to do for "
                             f"iters={cfg['iters']} (raise --iters to train further)")
        later = [p.name for it, p in checkpoints(self.work_dir).items() if it > self.iteration]
        if later:
            raise UsageError(f"work dir {self.work_dir} holds checkpoints later than iteration {self.iteration} of "
                             f"{path} ({', '.join(later)}): this run would replace them; move them away or resume "
                             "the newest (nothing was written)")

    def _state(self, rng: list) -> dict:
        return {
            "model": self.model.state_dict(), "build_args": dict(self.model.build_args),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng, "iteration": self.iteration,
            "best_miou": self.best_miou,
            # the training size is stored once: build_args img_size (model_io.crop_size reads it back)
            "config": {k: v for k, v in self.cfg.items() if k != "crop_size"},
            "meta": {"dataset": self.cfg["dataset"], "class_names": list(self.train_set.class_names),
                     "palette": [list(c) for c in self.train_set.palette]},
        }

    def _checkpoint(self, best: bool = False) -> None:
        rng = D.gather_objects(ckpt.rng_state(), self.info)  # every rank's generators
        if not self.info.is_main:
            self.saved_iteration = self.iteration
            return
        name = checkpoint_name(self.iteration)
        state = self._state(rng)
        bad = ckpt.nonfinite_weight(state["model"])
        if bad:  # never a checkpoint that eval would score or a resume would continue from
            raise NonFiniteError(f"the weights are not finite at iteration {self.iteration} ({bad}): no checkpoint "
                                 "written; lower lr, set grad_clip or use amp bf16 instead of fp16")
        ckpt.save_checkpoint(state, self.work_dir / name)
        ckpt.atomic_write_bytes(self.work_dir / LAST, name.encode())
        if best:
            ckpt.save_checkpoint(state, self.work_dir / BEST)
        self.saved_iteration = self.iteration
        if self.work_dir / name not in self.written:
            self.written.append(self.work_dir / name)
        # rotation: only checkpoints this process wrote, never the one last_checkpoint names
        for old in self.written[: -self.cfg["keep_checkpoints"]]:
            if old.name != name and old.exists():
                old.unlink()
        self.written = self.written[-self.cfg["keep_checkpoints"]:]

    # --- loop ---
    def _loader(self):
        trainset = TrainSet(self.train_set, builders.transforms(self.cfg), self.cfg["seed"])
        sampler = ResumableSampler(trainset, self.info.world_size, self.info.rank, self.cfg["seed"])
        workers = self.cfg["num_workers"]
        loader = DataLoader(trainset, batch_size=self.micro, sampler=sampler, drop_last=True,
                            num_workers=workers, pin_memory=self.info.device.type == "cuda",
                            collate_fn=collate_train, worker_init_fn=_ignore_stop_signals if workers else None,
                            generator=torch.Generator())  # keeps the global RNG untouched: exact resume
        return trainset, sampler, loader

    def _batches(self):
        trainset, sampler, loader = self._loader()
        epoch, skip = accumulate.position(self.iteration, self.accum, self.micro, len(sampler) // self.micro)
        while True:
            trainset.epoch = epoch
            sampler.set_epoch(epoch, skip=skip)
            for batch in loader:
                if isinstance(batch, SampleError):  # a bad file, reported by value from the worker
                    self._save_before_failing()
                    raise DatasetError(batch.message)
                yield batch
            epoch, skip = epoch + 1, 0

    def _agree(self, loss: torch.Tensor) -> tuple[bool, bool]:
        """(the loss is finite on every rank, a stop signal arrived on some rank): one small all-reduce
        per step under torchrun, so every rank stops at the same step."""
        finite = bool(torch.isfinite(loss))
        stop = self.signals.requested is not None
        if not self.info.enabled:
            return finite, stop
        flags = torch.tensor([float(not finite), float(stop)], device=self.info.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return not bool(flags[0]), bool(flags[1])

    def _step(self, group):
        """One optimizer step over ``accum_steps`` micro-batches (see ``engine/accumulate.py``); refused,
        before the optimizer changes anything, when the loss is not finite. Returns (loss, its parts,
        grad norm or None, stop requested on some rank)."""
        device, world = self.info.device, self.info.world_size
        counts = [accumulate.valid_pixels(masks) for _, masks in group]
        total = accumulate.total_valid(counts, world, device)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, parts = 0.0, {}
        for i, (images, masks) in enumerate(group):
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            with accumulate.sync_context(self.ddp_model, sync=i == len(group) - 1):
                with runtime.autocast(device, self.amp_dtype):
                    out = self.ddp_model(images)
                    loss, micro_parts = self.loss_fn(out, masks)
                weight = accumulate.loss_weight(counts[i], total, world)
                self.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
            loss_sum = loss_sum + loss.detach() / len(group)  # logged: mean of the micro-batch losses
            parts = {k: parts.get(k, 0.0) + v / len(group) for k, v in micro_parts.items()}
        finite, stop = self._agree(loss_sum)
        if not finite:
            last = f"; the last checkpoint is iteration {self.saved_iteration}" if self.saved_iteration else ""
            raise NonFiniteError(f"loss is {float(loss_sum)} at iteration {self.iteration + 1} (not applied, nothing "
                                 f"written{last}): lower lr, set grad_clip or use amp bf16 instead of fp16")
        grad_norm = None
        if self.cfg["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss_sum, parts, grad_norm, stop

    def _evaluate(self, bar) -> dict:
        bar.eval_progress(0, len(self.val_set))
        panels = None
        if self.log.scalars is not None:  # TensorBoard: a few sample panels of each evaluation
            from cssformer.visualisation import Panels, sample_indices

            pictures = []
            panels = Panels(self.val_set.class_names, self.val_set.palette,
                            sample_indices(len(self.val_set), curves.TENSORBOARD_PANELS),
                            lambda *item: pictures.append(item))
        result = evaluate(self.model, self.val_set, TestOptions.from_config(self.cfg), self.info,
                          amp_dtype=self.amp_dtype, show=panels,
                          progress=bar.eval_progress)
        if panels is not None:
            self.log.scalars.images("val_samples", pictures, self.iteration)
        improved = result["mIoU"] > self.best_miou
        if improved:
            self.best_miou = result["mIoU"]
        names = self.val_set.class_names
        self.log.write(type="eval", iter=self.iteration, aAcc=result["aAcc"], mIoU=result["mIoU"],
                       mAcc=result["mAcc"], IoU=dict(zip(names, result["IoU"])))
        bar.print(f"iter {self.iteration}: mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  "
                  f"aAcc {result['aAcc']:.2f}" + ("  (best)" if improved else ""))
        return {**result, "improved": improved}

    def run(self) -> dict:
        self.signals = StopSignals()
        try:
            with self.signals:
                return self._run()
        except Preempted as stop:
            if self.info.is_main:
                name = "SIGTERM" if stop.signum == signal.SIGTERM else "Ctrl-C (SIGINT)"
                sys.stderr.write(f"cssformer train: stopped by {name} after iteration {self.iteration}/"
                                 f"{self.cfg['iters']}: checkpoint {self.work_dir / checkpoint_name(self.iteration)} "
                                 f"written; continue with --resume (exit code {stop.code})\n")
                sys.stderr.flush()
            raise
        finally:
            if self.log is not None:
                self.log.close()
            if self.lock is not None:
                self.lock.release()

    def _save_before_failing(self) -> None:
        """A failure after training steps (a bad sample, an evaluation error): keep the steps done."""
        if self.info.world_size == 1 and self.iteration and self.iteration != self.saved_iteration:
            self._checkpoint()

    def _begin(self) -> None:
        if self.info.is_main:
            self.lock.clean_stale_temps()  # writes a kill interrupted: never renamed, never used
            save_yaml(self.cfg, self.work_dir / CONFIG)
            self.log.write(type="start", iter=self.iteration, world_size=self.info.world_size,
                           device=str(self.info.device), config=self.cfg)

    def _log_step(self, bar, meter: Meter, lr: float, grad_norm) -> None:
        """Every ``log_interval`` steps (and the last): one log.jsonl record and log line; every step the
        progress bar."""
        cfg, cuda = self.cfg, self.info.device.type == "cuda"
        stats = {"lr": lr}
        if self.iteration % cfg["log_interval"] == 0 or self.iteration == cfg["iters"]:
            now = time.perf_counter()
            record = meter.record(lr, cfg["batch_size"], now)
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if cuda:
                record["memory_gb"] = torch.cuda.max_memory_allocated(self.info.device) / 1e9
            self.log.write(type="train", iter=self.iteration, **record)
            bar.log_line(f"iter {self.iteration}/{cfg['iters']}  " + "  ".join(
                f"{k} {v:.4g}" for k, v in record.items()), it=self.iteration)
            self._last = record
            meter.reset(now)
        if hasattr(self, "_last"):
            stats = {"loss": self._last["loss"], "lr": lr, "it/s": bar.speed(self.iteration),
                     "img/s": self._last["img_per_s"], "data": f"{self._last['data_wait']:.0%}"}
            if cuda:
                stats["mem"] = f"{torch.cuda.max_memory_allocated(self.info.device) / 1e9:.1f}G"
        bar.update(self.iteration, **stats)

    def _after_step(self, bar, stop: bool) -> tuple[dict | None, bool]:
        """Evaluation and checkpoint cadence after a step: (the evaluation or None, training is over).
        A stop request writes the checkpoint at once and ends the run (unless this was the last step:
        then the final evaluation still runs, after the checkpoint)."""
        cfg = self.cfg
        last = self.iteration == cfg["iters"]
        if stop:
            if self.iteration != self.saved_iteration:
                self._checkpoint()
            if not last:
                raise Preempted(self.signals.requested or signal.SIGTERM)
        result, improved = None, False
        if self.iteration % cfg["eval_interval"] == 0 or last:
            try:
                result = self._evaluate(bar)
            except Exception:
                self._save_before_failing()
                raise
            improved = result.pop("improved")
            self.ddp_model.train()
        if self.iteration % cfg["checkpoint_interval"] == 0 or last or improved:
            if improved or self.iteration != self.saved_iteration:
                self._checkpoint(best=improved)
        return result, last

    def _run(self) -> dict:
        cfg, info = self.cfg, self.info
        self._begin()
        self.ddp_model.train()
        result = None
        with TrainProgress(cfg["iters"], self.iteration, info.is_main) as bar:
            bar.print(f"training {cfg['model']} on {cfg['dataset']} ({len(self.train_set)} images) "
                      f"for {cfg['iters']} iterations on {info.world_size} x {info.device}, batch {cfg['batch_size']} = "
                      f"{info.world_size} x {self.accum} x {self.micro}; work dir {self.work_dir}")
            meter = Meter()
            t_ready = time.perf_counter()
            for group in accumulate.groups(self._batches(), self.accum):
                meter.waited += time.perf_counter() - t_ready
                lr = self.optimizer.param_groups[0]["lr"]
                loss, parts, grad_norm, stop = self._step(group)
                self.iteration += 1
                meter.add(loss, parts)
                self._log_step(bar, meter, lr, grad_norm)
                evaluation, last = self._after_step(bar, stop)
                result = evaluation or result
                t_ready = time.perf_counter()
                if last:
                    break
        if info.is_main and result is not None:
            out = plain_console()  # the result goes to stdout, the progress to stderr; no wrapped paths
            out.print(format_table(result, self.val_set.class_names))
            out.print(f"[bold]final mIoU {result['mIoU']:.2f}[/bold] (best {self.best_miou:.2f}); "
                      f"checkpoints and log in {self.work_dir}")
            curves.after_training(self.work_dir, out)
        return result
