"""Training a gradient-trained model: epochs, validation and selection, checkpoints, exact resume."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from surfad import bundle
from surfad.config import RunConfig
from surfad.training.checkpoint import TrainState, load_last, save_last
from surfad.training.distributed import from_main
from surfad.training.loop import train_epoch
from surfad.training.run_folder import write_history
from surfad.training.setup import Training
from surfad.training.validation import select, stalled, validate
from surfad.visualize import training_grid


def resume_state(out: Path, t: Training, config: RunConfig) -> TrainState:
    """The state to continue from; a run that had stopped early is finished without training."""
    tc = config.train
    state = load_last(out, t.model, t.optimizer, t.scheduler, t.average, tc.epochs)
    if stalled(state.history, tc.patience):
        state.epoch = tc.epochs
        if t.world.main:
            print(f"{out} had stopped early (no better validation for {tc.patience} validations)")
    elif t.world.main:
        print(f"resuming {out} at epoch {state.epoch + 1}/{tc.epochs}")
    return state


def run_epochs(config: RunConfig, t: Training, out: Path, state: TrainState, progress: bool) -> None:
    """Train from state.epoch to the end (or the time budget, or patience). After every epoch process 0
    validates, selects, checkpoints and decides whether to stop; every process follows that decision."""
    tc, world = config.train, t.world
    started, elapsed_before = time.monotonic(), state.elapsed
    if hasattr(t.train_set, "progress"):  # samples that show their own preparation (simplenet's features)
        t.train_set.progress = progress and world.main
    bar = tqdm(total=tc.epochs * t.steps_per_epoch, initial=state.epoch * t.steps_per_epoch,
               disable=not (progress and world.main), unit="step", dynamic_ncols=True)
    for epoch in range(state.epoch, tc.epochs):
        bar.set_description(f"epoch {epoch + 1}/{tc.epochs}")
        for dataset in (t.train_images, t.train_set):  # datasets that draw new tiles or synthetic samples each epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
        sums = train_epoch(t.model, t.step_loss, t.train_set, t.optimizer, epoch, tc, t.batch_size, t.device, bar,
                           t.average, world=world)
        if t.scheduler is not None:
            t.scheduler.step()
        state.epoch, state.elapsed = epoch + 1, elapsed_before + time.monotonic() - started
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": t.optimizer.param_groups[0]["lr"], **sums}
        if from_main(world, partial(end_epoch, config, t, out, state, row, bar, progress)):
            break
    bar.close()


def end_epoch(config: RunConfig, t: Training, out: Path, state: TrainState, row: dict[str, Any], bar: tqdm,
              progress: bool) -> bool:
    """Process 0's work after an epoch: validate when due, keep the best, write the history and the
    checkpoint; whether training stops here (time budget, patience)."""
    tc, epoch = config.train, state.epoch - 1
    is_last = state.epoch == tc.epochs
    over_budget = tc.time_budget_min > 0 and state.elapsed > tc.time_budget_min * 60
    if state.epoch % tc.val_every == 0 or is_last or over_budget:
        validate_epoch(config, t, out, state, row, epoch, shippable=state.epoch > tc.select_after or is_last
                       or over_budget, progress=progress)
    row["seconds"] = round(state.elapsed, 1)
    state.history.append(row)
    write_history(out, state.history)
    save_last(out, t.model, t.optimizer, t.scheduler, t.average, state)
    shown = {k: round(v, 4) for k, v in row.items() if k.startswith("val_")}
    bar.write(f"epoch {state.epoch}: loss {row.get('loss', float('nan')):.4f} {shown}{' *best' if row.get('best') else ''}")
    if over_budget and not is_last:
        bar.write(f"time budget of {tc.time_budget_min} min reached after epoch {state.epoch}")
        return True
    if stalled(state.history, tc.patience) and not is_last:
        bar.write(f"stopping early: no better validation for {tc.patience} validations (best: epoch "
                  f"{bundle.shipped_row(state.history)['epoch']})")
        return True
    return False


def validate_epoch(config: RunConfig, t: Training, out: Path, state: TrainState, row: dict[str, Any], epoch: int,
                   shippable: bool, progress: bool) -> None:
    """Validate the shipped weights, keep them if best (when the epoch may be shipped: see
    TrainConfig.select_after) and draw the training grid when due."""
    figures, _ = validate(t.shipped_graph, config, t.val_set, t.device, t.batch_size, progress, t.roi)
    row.update(figures)
    if shippable:
        select(state, row, figures, t.shipped, out)
    every = config.train.grid_every
    if every and ((epoch + 1) % every == 0 or epoch + 1 == config.train.epochs):
        training_grid(t.shipped, t.shipped_graph, t.val_set, t.device, out / "grids" / f"epoch_{epoch + 1:04d}.png")
