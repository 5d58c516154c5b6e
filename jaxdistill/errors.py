"""Errors that tools report as one line (`runtime.refusals_as_exit`): they name the key, file or line."""

from __future__ import annotations


class ConfigError(ValueError):
  """A config value, or a workdir made with another config, that cannot work; the message names the key."""
