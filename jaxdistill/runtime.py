"""Process set-up shared by the command-line tools (`main`, `select`, the comparison scripts)."""

from __future__ import annotations

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
