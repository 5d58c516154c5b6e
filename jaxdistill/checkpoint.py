"""Orbax checkpointing: the train state and the data iterator, saved together.

`WORKDIR/checkpoints` holds the latest K steps (async saves, restore-on-start); `WORKDIR/best`
holds the best-on-dev parameters. Saving the Grain iterator with the model means a resumed
run sees exactly the batches an uninterrupted run would have seen.

Every save may be cut by a kill at any point and done again by the rerun: `best/N` is written
(synchronously) before the step-N train checkpoint commits, so a run killed in between resumes
from an older step, replays to N and saves `best/N` again, which replaces the one on disk.
`best/` keeps the previous best too: the step the committed train checkpoint names stays
restorable while a newer one is being written. Half-written step directories of a killed save
(`*.orbax-checkpoint-tmp*`) are removed when a manager opens the directory.

A checkpoint resumes onto any mesh (Orbax reads each array into the run's own shardings), but
only with the number of processes that saved it: each host's iterator state is its position in
its own share of the records (and its packer's pool), which does not split over another count.
"""

from __future__ import annotations

import signal
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxdistill import files
from jaxdistill.errors import ConfigError


def make_manager(directory: files.PathLike, *, every: int, keep: int, async_save: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=every,
      max_to_keep=keep,
      create=True,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(epath.Path(files.absolute(directory)), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any, meta: dict,
         *, force: bool = False) -> bool:
  """Saves (state, iterator, meta) when `step` is due (or `force`); returns whether it saved."""
  args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter),
      meta=ocp.args.JsonSave(meta),
  )
  return manager.save(step, args=args, force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any):
  """Restores the newest finished checkpoint into `data_iter` (in place) and returns
  (step, state, meta), or None when there is nothing to resume from."""
  step = manager.latest_step()
  if step is None:
    return None
  check_process_count(manager, step)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter),
      meta=ocp.args.JsonRestore(),
  ))
  logging.info("Resumed from step %d in %s", step, manager.directory)
  return step, restored["state"], dict(restored["meta"])


def check_process_count(manager: ocp.CheckpointManager, step: int) -> None:
  """Refuses to resume step `step` with another number of processes than saved it (grain writes one
  iterator state per process, `data/process_I-of-N.json`)."""
  step_dir = ocp.step.find_step_path(manager.directory, ocp.step.standard_name_format(), step=step)
  saved = {int(path.stem.rsplit("-of-", 1)[1]) for path in (step_dir / "data").glob("process_*-of-*.json")}
  if saved and saved != {jax.process_count()}:
    count = ", ".join(map(str, sorted(saved)))
    raise ConfigError(
        f"{step_dir}: the checkpoint of step {step} was saved by {count} processes and this run has "
        f"{jax.process_count()}; the data iterator's state is per process (each host's position in its own share "
        f"of the training records), so resume it with --num_processes={count} (any mesh), or use a new --workdir")


def save_params(directory: files.PathLike, params: Any, meta: dict) -> None:
  """Writes a standalone parameter checkpoint at step meta["step"] (the best-on-dev model),
  replacing one of the same step left by a run that was killed before its train checkpoint."""
  manager = make_manager(directory, every=1, keep=2, async_save=False)
  step = int(meta["step"])
  if step in manager.all_steps():
    manager.delete(step)
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                             meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()
  manager.close()


def restore_params(directory: files.PathLike, abstract_params: Any, step: int | None = None):
  """Returns (params, meta) of `step` (default: the newest) in `directory`, or None if it is not there."""
  if not epath.Path(directory).is_dir():
    return None
  manager = make_manager(directory, every=1, keep=2, async_save=False)
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    manager.close()
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
  manager.close()
  return restored["params"], dict(restored["meta"])


class PreemptionFlag:
  """Turns SIGTERM into a flag the loop polls, so it can save and exit between steps."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting.")
    self.requested = True

  def should_stop(self) -> bool:
    """True on every host once any host was asked to stop (hosts must stop at the same step)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(multihost_utils.process_allgather(jax.numpy.asarray(self.requested)).any())

  def restore_handler(self):
    signal.signal(signal.SIGTERM, self._previous)
