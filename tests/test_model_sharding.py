"""Every student kind on the 8-fake-device mesh (fsdp and tensor) equals the single-device model."""

import subprocess
import sys

from tests import train_utils as tu


def test_students_sharded_equal_single_device():
  proc = subprocess.run([sys.executable, "tests/sharded_models_check.py"], cwd=tu.REPO, env=tu.env(devices=8),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.endswith(": ok")]
  assert len(lines) == 4, proc.stdout
