"""Comparison reports: rows of runs -> a markdown table and a bar plot (PNG).

`write_report(rows, columns, out_dir, name, title, plot=...)` writes OUT_DIR/NAME.md,
OUT_DIR/NAME.json (the rows, for other tools) and OUT_DIR/NAME.png. A row is a dict; `columns`
are (key, header) pairs, the first column naming the row. Values are formatted by type (floats
with 4 digits, missing as "-"). `run_metrics(workdir)` reads a run's metrics.json.

Used by the PST, MoRSD and trace comparisons; every number in a report comes from the runs'
metrics.json files, never typed in.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from etils import epath

from jaxdistill import files


def run_metrics(workdir: str) -> dict[str, Any]:
  path = epath.Path(workdir) / "metrics.json"
  if not path.exists():
    raise FileNotFoundError(f"{path}: the run has not finished (no metrics.json)")
  return json.loads(path.read_text())


def get_path(row: Mapping[str, Any], key: str) -> Any:
  """row["a.b.c"] as row["a"]["b"]["c"]; None when any part is missing."""
  value: Any = row
  for part in key.split("."):
    if not isinstance(value, Mapping) or part not in value:
      return None
    value = value[part]
  return value


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float):
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
  return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
  lines = ["| " + " | ".join(h for _, h in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_cell(get_path(row, k)) for k, _ in columns) + " |")
  return "\n".join(lines) + "\n"


def bar_plot(rows: Sequence[Mapping[str, Any]], label_key: str, value_keys: Sequence[tuple[str, str]],
             path: str, title: str, ylabel: str = "accuracy") -> None:
  """Grouped bars: one group per row, one bar per value key."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  names = [str(get_path(r, label_key)) for r in rows]
  x = np.arange(len(rows))
  width = 0.8 / max(len(value_keys), 1)
  fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 1.5), 3.6))
  for i, (key, header) in enumerate(value_keys):
    values = [get_path(r, key) for r in rows]
    heights = [float(v) if isinstance(v, (int, float)) else 0.0 for v in values]
    bars = ax.bar(x + (i - (len(value_keys) - 1) / 2) * width, heights, width, label=header)
    for bar, v in zip(bars, values):
      if isinstance(v, (int, float)):
        ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
  ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  if len(value_keys) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  with files.atomic_open(path) as f:
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)


def write_report(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], out_dir: str,
                 name: str, title: str, *, plot: Sequence[tuple[str, str]] = (), notes: str = "") -> str:
  """Writes NAME.md (title, table, notes), NAME.json and, when `plot` names value columns, NAME.png.
  Returns the markdown text."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  text = f"# {title}\n\n" + markdown_table(rows, columns)
  if plot:
    bar_plot(rows, columns[0][0], plot, out / f"{name}.png", title)
    text += f"\n![{title}]({name}.png)\n"
  if notes:
    text += "\n" + notes.rstrip() + "\n"
  for filename, content in ((f"{name}.md", text), (f"{name}.json", json.dumps(list(rows), indent=2,
                                                                              default=str))):
    files.atomic_write_text(out / filename, content)
  return text
