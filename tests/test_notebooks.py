"""The Colab notebooks (colab/*.py, jupytext percent format; colab/*.ipynb generated from them): the
committed .ipynb match their .py, and each notebook runs top to bottom in a fresh `python3` kernel, in a
temporary working directory, with this repository importable, as a Colab user would run it."""

from __future__ import annotations

import json
import os
import time

import jupytext
import nbclient
import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = ("quickstart", "teachers", "tpu")
CELL_TIMEOUT_S = 600  # one cell: the longest trains a model
NOTEBOOK_TIMEOUT_S = 900  # no cell starts after this (so a notebook ends within it plus one cell's timeout)


def _cells(nb) -> list[tuple[str, str]]:
  return [(cell.cell_type, cell.source) for cell in nb.cells]


def _metadata(nb) -> dict:
  return {k: v for k, v in nb.metadata.items() if k != "jupytext"}


def test_every_notebook_has_its_py_and_ipynb():
  names = {os.path.splitext(f)[0] for f in os.listdir(COLAB) if f.endswith((".py", ".ipynb"))}
  assert names == set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_ipynb_is_generated_from_its_py(name):
  """The .py is the source; the committed .ipynb (for Colab) must be its conversion, without outputs.
  Regenerate with `jupytext --sync colab/*.py`."""
  source = jupytext.read(os.path.join(COLAB, f"{name}.py"))
  committed = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
  assert _cells(committed) == _cells(source), f"colab/{name}.ipynb is out of date: jupytext --sync colab/{name}.py"
  assert all(not cell.get("outputs") and cell.get("execution_count") is None
             for cell in committed.cells if cell.cell_type == "code"), f"colab/{name}.ipynb has outputs"
  assert _metadata(committed) == _metadata(source)  # the kernel, and Colab's runtime type (tpu: accelerator TPU)
  assert committed.metadata.kernelspec.name == "python3"


def _execute(name: str, workdir, monkeypatch) -> nbformat.NotebookNode:
  """Runs colab/NAME.py in a new kernel with `workdir` as its working directory; a failing cell fails
  the test with the cell's source and its traceback (nbclient's CellExecutionError)."""
  nb = jupytext.read(os.path.join(COLAB, f"{name}.py"))
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # the tpu notebook sets its own device count
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S

  def on_cell_start(cell, cell_index):
    if time.monotonic() > deadline:
      raise TimeoutError(f"colab/{name}: still running after {NOTEBOOK_TIMEOUT_S}s, at cell {cell_index}:\n"
                         f"{cell.source}")

  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                   resources={"metadata": {"path": str(workdir)}}, on_cell_start=on_cell_start,
                                   extra_arguments=["--InteractiveShell.colors=nocolor"])  # plain tracebacks
  failure = None
  try:
    client.execute()
  except (nbclient.exceptions.CellExecutionError, nbclient.exceptions.CellTimeoutError,
          nbclient.exceptions.DeadKernelError, TimeoutError) as e:
    failure = f"colab/{name}.py: {e}"  # the cell's source and its traceback (nbclient's own frames left out)
  if failure:
    pytest.fail(failure, pytrace=False)
  return nb


def _outputs(nb, kind: str) -> list:
  return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if kind in out.get("data", {})]


def _text(nb) -> str:
  return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def _metrics(path) -> dict:
  with open(path) as f:
    return json.load(f)


@pytest.mark.slow  # 2m23s-2m29s on the shared 2-core machine (colab/README.md)
def test_quickstart_runs(tmp_path, monkeypatch):
  nb = _execute("quickstart", tmp_path, monkeypatch)
  metrics = _metrics(tmp_path / "runs" / "quickstart-hybrid" / "metrics.json")
  assert metrics["setting"] == "hybrid" and metrics["steps"] == 200
  assert len(_outputs(nb, "image/png")) == 1  # the training curves
  assert f"on {metrics['data']['test_examples']} of {metrics['data']['test_examples']} test examples" in _text(nb)


@pytest.mark.slow  # 1m53s-3m28s on the shared 2-core machine (colab/README.md)
def test_teachers_runs(tmp_path, monkeypatch):
  nb = _execute("teachers", tmp_path, monkeypatch)
  cache = tmp_path / "caches" / "demo-teacher"
  with open(cache / "manifest.json") as f:
    counts = json.load(f)["counts"]
  [(teacher_prompt, rationales)] = counts["rationales_by_teacher_prompt"].items()  # one teacher, one prompt
  assert teacher_prompt.startswith("tiny-llama/") and rationales == 2 * counts["examples_by_task_split"]["demo/train"]
  student = _metrics(tmp_path / "runs" / "student-on-teacher" / "metrics.json")
  assert student["setting"] == "cot" and student["data"]["rationale_coverage"] == {"teacher": 1.0}
  text = _text(nb)
  assert f"{rationales} new rows" in text and "this run: 0 requests, 0 new rows" in text  # the rerun wrote none


@pytest.mark.slow  # 49s-1m42s on the shared 2-core machine, 8 simulated devices
def test_tpu_notebook_trains_over_an_8_device_mesh_on_cpu(tmp_path, monkeypatch):
  nb = _execute("tpu", tmp_path, monkeypatch)
  metrics = _metrics(tmp_path / "runs" / "tpu-hybrid" / "metrics.json")
  assert metrics["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert metrics["steps"] == 30
  text = _text(nb)
  assert "8 cpu devices" in text and "tokens/s" in text
  [table] = _outputs(nb, "text/html")  # the parameter shardings
  assert "fsdp" in table["data"]["text/html"]
