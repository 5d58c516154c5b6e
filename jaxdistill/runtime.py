"""Process set-up shared by the command-line tools (`main`, `select`, the comparison scripts)."""

from __future__ import annotations

import contextlib
import logging as std_logging

from absl import logging


class QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of Orbax and Grain (every save logs dozens of lines); keeps warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
    return record.levelno >= std_logging.WARNING or not noisy


def prepare_process() -> None:
  """Quiets Orbax / Grain logs and keeps TensorFlow (imported by CLU and tfds) off accelerators,
  which belong to JAX."""
  logging.get_absl_handler().addFilter(QuietLibraries())
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


@contextlib.contextmanager
def refusals_as_exit():
  """Ends the tool with a one-line "error: ..." (exit status 1) for a config or data refusal, which
  names its key, file or line; a traceback would bury that line."""
  from jaxdistill.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxdistill.data.examples import DataError  # pylint: disable=g-import-not-at-top
  try:
    yield
  except (ConfigError, DataError) as e:
    raise SystemExit(f"error: {e}") from None
