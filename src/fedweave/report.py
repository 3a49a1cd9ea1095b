"""Reports on finished runs and sweeps: a comparison table, plots and one HTML page.

::

    fedweave report sweeps/cmp                 # → sweeps/cmp/report.html (+ PNG files)
    fedweave report runs/a runs/b --out cmp.html

Inputs are run directories (holding ``summary.json``), sweep directories (holding
``sweep.json``) or any folder, searched recursively for both. Everything is read from
the files a run wrote; nothing is rebuilt or re-run.

Runs are grouped by their *label*: for sweeps, the values of the grid keys; otherwise the
config keys whose values differ between the runs (``seed`` and the ``output`` section
left out), or the method name where nothing else differs. A group's statistics are over
its completed runs, typically one per seed.

The page shows the table (see :func:`summary_table`) and PNG plots: the primary metric
against rounds, virtual time and bytes communicated (mean over seeds with a min–max
band), and the distribution of per-client scores in the final evaluation where
``eval.per_client`` recorded them. The PNGs are embedded in the page as data URIs, so
the HTML file is self-contained, and are also written next to it.

matplotlib (the ``plot`` extra) is needed for the plots only; it is imported when a
report is drawn and drawn without pyplot, so it never changes a session's backend.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import yaml

from .core.errors import ConfigError

SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SWEEP_FILE = "sweep.json"
ERROR_FILE = "error.txt"


# -- loading -----------------------------------------------------------------------------------


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _text(value: Any) -> str:
    """A config value as shown in labels: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class RunRecord:
    """One run as found on disk."""

    path: Path
    status: str  # completed | diverged | interrupted | failed | unfinished | missing
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None  # flattened config.yaml
    params: dict[str, str] = field(default_factory=dict)  # grid values as typed (sweep runs)
    label: tuple[tuple[str, str], ...] = ()
    _metrics: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def get(self, key: str) -> Any:
        return (self.summary or {}).get(key)

    def value_of(self, key: str) -> str:
        """The text of config key ``key`` for this run (grid text first, then config.yaml)."""
        if key in self.params:
            return self.params[key]
        if self.config is not None and key in self.config:
            return _text(self.config[key])
        if key == "method.name" and self.summary and "method" in self.summary:
            return str(self.summary["method"])
        return "?"

    def metrics(self) -> list[dict[str, Any]]:
        """The evaluation records of ``metrics.jsonl`` (a torn last line is skipped)."""
        if self._metrics is None:
            records = []
            path = self.path / METRICS
            if path.exists():
                for line in path.read_text().splitlines():
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        continue
            self._metrics = records
        return self._metrics


def _read_run(path: Path, params: dict[str, str] | None = None) -> RunRecord:
    summary = config = None
    if (path / SUMMARY).exists():
        try:
            summary = json.loads((path / SUMMARY).read_text())
        except ValueError as exc:
            raise ConfigError(f"{str(path / SUMMARY)!r} is not valid JSON: {exc}") from None
    if (path / CONFIG).exists():
        try:
            raw = yaml.safe_load((path / CONFIG).read_text())
            config = _flatten(raw) if isinstance(raw, dict) else None
        except yaml.YAMLError:
            config = None
    if summary is not None:
        status = str(summary.get("status", "unknown"))
    elif (path / ERROR_FILE).exists():
        status = "failed"
    else:
        status = "unfinished" if path.exists() else "missing"
    return RunRecord(path, status, summary, config, dict(params or {}))


def _read_sweep(path: Path) -> tuple[list[RunRecord], list[str]]:
    try:
        info = json.loads((path / SWEEP_FILE).read_text())
    except ValueError as exc:
        raise ConfigError(f"{str(path / SWEEP_FILE)!r} is not valid JSON: {exc}") from None
    keys = [g["key"] for g in info.get("grid", [])]
    runs = [_read_run(path / entry["dir"], entry.get("params", {})) for entry in info.get("runs", [])]
    return runs, keys


def _discover(path: Path, runs: list[RunRecord], grid_keys: list[str], from_sweep: list[bool]) -> None:
    if (path / SWEEP_FILE).is_file():
        found, keys = _read_sweep(path)
        runs.extend(found)
        grid_keys.extend(k for k in keys if k not in grid_keys)
        from_sweep.extend([True] * len(found))
    elif (path / SUMMARY).is_file():
        runs.append(_read_run(path))
        from_sweep.append(False)
    else:
        for child in sorted(p for p in path.iterdir() if p.is_dir()):
            _discover(child, runs, grid_keys, from_sweep)


@dataclass
class Group:
    """Runs that share a label (e.g. one grid combination over its seeds)."""

    label: tuple[tuple[str, str], ...]
    runs: list[RunRecord]

    @property
    def title(self) -> str:
        """``value`` for one label key, else ``key=value, ...`` with keys shortened where unambiguous.

        A key is shortened to its last part, or for ``x.name`` to ``x`` (``method.name`` → ``method``,
        ``data.partition.alpha`` → ``alpha``); full keys are kept if two would read the same.
        """
        if len(self.label) == 1:
            return self.label[0][1]
        short = [k[: -len(".name")].rsplit(".", 1)[-1] if k.endswith(".name") else k.rsplit(".", 1)[-1]
                 for k, _ in self.label]
        keys = short if len(set(short)) == len(short) else [k for k, _ in self.label]
        return ", ".join(f"{k}={v}" for k, (_, v) in zip(keys, self.label))

    @property
    def completed(self) -> list[RunRecord]:
        return [r for r in self.runs if r.completed]

    def curve_runs(self) -> list[RunRecord]:
        """Runs drawn in plots: the completed ones with evaluation records (as in the table)."""
        return [r for r in self.completed if r.metrics()]


@dataclass
class RunSet:
    """Everything a report is made of: the runs, the keys that label them, the inputs."""

    runs: list[RunRecord]
    label_keys: list[str]
    sources: list[Path]

    def groups(self) -> list[Group]:
        groups: dict[tuple, Group] = {}
        for run in self.runs:
            groups.setdefault(run.label, Group(run.label, [])).runs.append(run)
        return list(groups.values())

    @property
    def metric_name(self) -> str:
        names = {r.get("metric_name") for r in self.runs if r.get("metric_name")}
        return names.pop() if len(names) == 1 else "metric"

    @property
    def higher_is_better(self) -> bool:
        flags = [r.get("higher_is_better") for r in self.runs if r.get("higher_is_better") is not None]
        return bool(flags[0]) if flags else True


def _label_keys(runs: list[RunRecord]) -> list[str]:
    """Config keys whose values differ between runs (seed and output.* excluded)."""
    configs = [r.config for r in runs if r.config is not None]
    keys: list[str] = []
    for cfg in configs:
        keys.extend(k for k in cfg if k not in keys)
    differing = [k for k in keys if k != "seed" and not k.startswith("output.")
                 and len({_text(c.get(k)) for c in configs}) > 1]
    if len(differing) > 1 and "name" in differing:
        differing.remove("name")  # a config's name says nothing that its differing keys do not
    return differing or ["method.name"]


def load_runs(paths: Iterable[str | Path]) -> RunSet:
    """Find the runs under ``paths`` and label them; raises ConfigError where none are found."""
    runs: list[RunRecord] = []
    grid_keys: list[str] = []
    from_sweep: list[bool] = []
    sources = [Path(p) for p in paths]
    if not sources:
        raise ConfigError("report needs at least one run or sweep directory.")
    for source in sources:
        if not source.is_dir():
            raise ConfigError(f"{str(source)!r} is not a directory; give run or sweep directories.")
        before = len(runs)
        _discover(source, runs, grid_keys, from_sweep)
        if len(runs) == before:
            raise ConfigError(f"no runs found in {str(source)!r} (no summary.json or sweep.json in it or below it).")
    if all(from_sweep) and grid_keys:
        keys = grid_keys
    else:
        keys = _label_keys(runs)
    for run in runs:
        run.label = tuple((k, run.value_of(k)) for k in keys)
    return RunSet(runs, keys, sources)


# -- the table -----------------------------------------------------------------------------------


@dataclass
class Cell:
    text: str
    bold: bool = False


@dataclass
class SummaryTable:
    headers: list[str]
    rows: list[list[Cell]]
    notes: list[str]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None for fewer than two values)."""
    if not values:
        return None, None
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


LEAD_ALPHA = 0.05  # one-sided significance level of "the best row leads the runner-up"


def _ahead(a: dict, b: dict, higher: bool) -> bool:
    """Is row ``a`` ({seed: value}) better than row ``b`` by more than seed-to-seed noise?

    Paired t-test over the seeds both rows ran (at least two), else Welch's t-test (at
    least two runs each), one-sided at :data:`LEAD_ALPHA`; a difference with no spread at
    all (every paired difference equal) counts when it is non-zero. One run per row says
    nothing about noise: never ahead.
    """
    from scipy.stats import t as student_t

    sign = 1.0 if higher else -1.0
    common = sorted(set(a) & set(b), key=str)
    if len(common) >= 2:
        d = sign * (np.array([a[s] for s in common]) - np.array([b[s] for s in common]))
        sd = float(d.std(ddof=1))
        if sd == 0.0:
            return float(d.mean()) > 0
        stat, df = float(d.mean()) / (sd / math.sqrt(d.size)), d.size - 1
    elif len(a) >= 2 and len(b) >= 2:
        xa, xb = np.array(list(a.values())), np.array(list(b.values()))
        va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
        diff = sign * float(xa.mean() - xb.mean())
        if va + vb == 0.0:
            return diff > 0
        stat = diff / math.sqrt(va + vb)
        df = (va + vb) ** 2 / ((va**2 / (xa.size - 1) if va else 0.0) + (vb**2 / (xb.size - 1) if vb else 0.0))
    else:
        return False
    return float(student_t.sf(stat, df)) < LEAD_ALPHA


def _bold_flags(samples: list[dict], higher: bool, eligible: list[bool] | None = None) -> list[bool]:
    """Which rows to bold: the best mean, only where it leads the runner-up beyond the noise.

    ``samples`` holds one {seed: value} per row. The rows sharing the best mean are bold
    only if each is :func:`_ahead` of the best other row; nothing is bold with fewer than
    two rows with values, or where every row has the best mean.
    """
    eligible = eligible or [True] * len(samples)
    means = [float(np.mean(list(v.values()))) if v else None for v in samples]
    present = [m is not None for m in means]
    candidates = [i for i, (m, ok) in enumerate(zip(means, eligible)) if m is not None and ok]
    if sum(present) < 2 or not candidates:
        return [False] * len(samples)
    pick = max if higher else min
    best = pick(means[i] for i in candidates)
    leaders = [i for i in candidates if math.isclose(means[i], best, rel_tol=1e-12, abs_tol=0.0)]
    others = [i for i in candidates if i not in leaders]
    if not others:
        # no eligible row to compare with: bold only where eligibility itself set the leaders
        # apart (time to target: they reached it more often than every other row)
        return [i in leaders and len(leaders) < sum(present) for i in range(len(samples))]
    runner_up = pick(others, key=lambda i: means[i])
    flags = [False] * len(samples)
    if all(_ahead(samples[i], samples[runner_up], higher) for i in leaders):
        for i in leaders:
            flags[i] = True
    return flags


def _samples(runs: list[RunRecord], value) -> dict:
    """{seed: value(run)} over the runs whose value is a finite number (unseeded runs keyed by position)."""
    out = {}
    for pos, r in enumerate(runs):
        v = value(r)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            seed = r.get("seed")
            out[seed if seed is not None and seed not in out else ("run", pos)] = float(v)
    return out


def _values(runs: list[RunRecord], key: str) -> list[float]:
    out = []
    for r in runs:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _target(run: RunRecord) -> float | None:
    return (run.config or {}).get("eval.target")


def summary_table(runset: RunSet) -> SummaryTable:
    """One row per group: mean ± std over its completed runs, the best in each column in bold.

    Columns: the label keys; ``runs`` (completed/total, with what happened to the rest);
    final and best value of the primary metric; time to target, where a target is set
    (mean over the runs that reached it, with reached/completed); total MB up + down.
    """
    groups = runset.groups()
    metric, higher = runset.metric_name, runset.higher_is_better
    targets = {_target(r) for r in runset.runs if _target(r) is not None}
    show_time = bool(targets) or any(r.get("time_to_target_s") is not None for r in runset.runs)

    label_cols = [[g.label[i][1] if i < len(g.label) else "" for g in groups] for i in range(len(runset.label_keys))]
    headers = list(runset.label_keys) + ["runs", f"final {metric}", f"best {metric}"]
    columns: list[list[Cell]] = [[Cell(v) for v in col] for col in label_cols]

    runs_col = []
    for g in groups:
        others: dict[str, int] = {}
        for r in g.runs:
            if not r.completed:
                others[r.status] = others.get(r.status, 0) + 1
        extra = ", ".join(f"{n} {s}" for s, n in others.items())
        runs_col.append(Cell(f"{len(g.completed)}/{len(g.runs)}" + (f" ({extra})" if extra else "")))
    columns.append(runs_col)

    for key in ("final_metric", "best_metric"):
        samples = [_samples(g.completed, lambda r, key=key: r.get(key)) for g in groups]
        stats = [mean_std(list(v.values())) for v in samples]
        bold = _bold_flags(samples, higher)
        columns.append([Cell(_fmt(m, s, 4), b) for (m, s), b in zip(stats, bold)])

    if show_time:
        if len(targets) == 1:
            target_text = f"{metric} {'≥' if higher else '≤'} {next(iter(targets)):g}"
        else:
            target_text = "target"
        headers.append(f"time to {target_text} (s)")
        stats, shares, counts, samples = [], [], [], []
        for g in groups:
            reached = _samples(g.completed, lambda r: r.get("time_to_target_s"))
            samples.append(reached)
            stats.append(mean_std(list(reached.values())))
            counts.append(f"{len(reached)}/{len(g.completed)}")
            shares.append(len(reached) / len(g.completed) if g.completed else 0.0)
        top = max(shares, default=0.0)
        bold = _bold_flags(samples, False, [top > 0 and s == top for s in shares])
        columns.append([Cell(f"{_fmt(m, s, 1)} ({c})", b) for (m, s), c, b in zip(stats, counts, bold)])

    headers.append("MB up+down")
    stats, samples = [], []

    def total_mb(r: RunRecord) -> float | None:
        if r.get("bytes_up") is None and r.get("bytes_down") is None:
            return None
        return (float(r.get("bytes_up") or 0) + float(r.get("bytes_down") or 0)) / 1e6

    for g in groups:
        samples.append(_samples(g.completed, total_mb))
        stats.append(mean_std(list(samples[-1].values())))
    bold = _bold_flags(samples, False)
    columns.append([Cell(_fmt(m, s, 2), b) for (m, s), b in zip(stats, bold)])

    rows = [[col[i] for col in columns] for i in range(len(groups))]
    better = "higher" if higher else "lower"
    notes = [
        "Each cell: mean ± sample standard deviation (ddof=1) over the completed runs of the row (one per seed); "
        "a single run shows no ±. Diverged, failed and unfinished runs are counted in `runs` and left out of the statistics.",
        f"**Bold**: the best mean of each column ({better} is better for {metric}; lower is better for time and bytes), "
        "only where its lead over the next row is beyond the seed-to-seed noise: a one-sided paired t-test over the "
        f"seeds both rows ran (Welch's t-test where they share fewer than two), p < {LEAD_ALPHA}. No bold with one run "
        "per row (no measure of noise) or where all rows are equal.",
        f"final = the run's final {metric} (mean of its last `eval.final_window` evaluations); "
        f"best = its best evaluation.",
    ]
    if show_time:
        notes.append("Time to target: virtual seconds until the metric first reached `eval.target`, mean over the runs "
                     "that reached it (reached/completed); bold among the rows that reached it most often.")
    notes.append("MB up+down: total bytes communicated, uplink plus downlink (1 MB = 10⁶ bytes).")
    return SummaryTable(headers, rows, notes)


def _md_cell(cell: Cell) -> str:
    text = cell.text.replace("|", "\\|")
    return f"**{text}**" if cell.bold and cell.text != "—" else text


def markdown_table(runset: RunSet) -> str:
    """The summary table as GitHub-flavoured Markdown, with its notes as a footer."""
    table = summary_table(runset)
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in table.headers) + " |",
             "|" + "|".join("---" if i < len(runset.label_keys) else "---:" for i in range(len(table.headers))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in table.notes) + "\n"


def _md_inline(text: str) -> str:
    """The little Markdown the notes use (``**bold**``, `` `code` ``) as HTML."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def html_table(table: SummaryTable, label_cols: int) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = []
        for i, c in enumerate(row):
            text = html.escape(c.text)
            cls = "" if i < label_cols else ' class="num"'
            cells.append(f"<td{cls}>{'<strong>' + text + '</strong>' if c.bold else text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<li>{_md_inline(n)}</li>" for n in table.notes)
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<ul class=\"notes\">{notes}</ul>")


# -- plots ----------------------------------------------------------------------------------------


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError('fedweave report draws its plots with matplotlib, which is not installed; '
                          'install the plot extra: pip install "fedweave[plot]".') from None
    return Figure


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _series(run: RunRecord, metric: str, x_of: Callable[[dict], float | None]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for rec in run.metrics():
        x, y = x_of(rec), rec.get(metric)
        if x is not None and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return np.asarray(xs), np.asarray(ys)


def _by_round(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Align curves on the rounds they all have; rows of the result are runs."""
    common = set(curves[0][0].tolist())
    for x, _ in curves[1:]:
        common &= set(x.tolist())
    grid = np.asarray(sorted(common))
    lookups = [dict(zip(x.tolist(), y.tolist())) for x, y in curves]
    ys = np.asarray([[values[g] for g in grid.tolist()] for values in lookups], dtype=np.float64)
    return grid, ys.reshape(len(curves), len(grid))


def _interpolated(curves: list[tuple[np.ndarray, np.ndarray]], points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate curves onto a common grid over the x range they all cover."""
    lo = max(float(x[0]) for x, _ in curves)
    hi = min(float(x[-1]) for x, _ in curves)
    if hi <= lo:
        return _by_round(curves)
    grid = np.linspace(lo, hi, points)
    return grid, np.stack([np.interp(grid, x, y) for x, y in curves])


#: lines in one panel beyond which a plot stops being readable: the page warns
MAX_LINES = 10


def facets(runset: RunSet) -> tuple[str | None, list[str]]:
    """How the curve plots are laid out: the label key drawn as lines (the method name where
    it varies, else the first key) and the keys whose value combinations get a panel each."""
    keys = list(runset.label_keys)
    if not keys:
        return None, []
    series = "method.name" if "method.name" in keys else keys[0]
    return series, [k for k in keys if k != series]


def _panels(runset: RunSet) -> tuple[list[tuple[str, list[Group]]], dict[str, str]]:
    """[(panel title, its groups)] and each group's line label (the series key's value)."""
    series, facet_keys = facets(runset)
    panels: dict[str, list[Group]] = {}
    line: dict[str, str] = {}
    for g in runset.groups():
        values = dict(g.label)
        title = ", ".join(f"{k.rsplit('.', 1)[-1] if not k.endswith('.name') else k[:-5]}={values.get(k, '')}"
                          for k in facet_keys)
        panels.setdefault(title, []).append(g)
        line[g.title] = values.get(series, g.title) if series else g.title
    return list(panels.items()), line


def _curve_figure(runset: RunSet, metric: str, x_of, xlabel: str, align: str):
    panels, line = _panels(runset)
    Figure = _figure_class()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols + 2.4, 3.5 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    names = list(dict.fromkeys(line[g.title] for _, groups in panels for g in groups))
    color_of = dict(zip(names, _colors(len(names))))
    styles = ["-", "--", "-.", ":"]  # lines that coincide stay visible
    drawn = False
    handles: dict[str, Any] = {}
    for ax, (title, groups) in zip(axes, panels):
        for group in groups:
            curves = [c for c in (_series(r, metric, x_of) for r in group.curve_runs()) if len(c[0])]
            if not curves:
                continue
            grid, ys = _by_round(curves) if align == "round" else _interpolated(curves)
            if not len(grid):
                continue
            name = line[group.title]
            i = names.index(name)
            (h,) = ax.plot(grid, ys.mean(axis=0), color=color_of[name], lw=1.8, ls=styles[i % len(styles)],
                           marker="o" if len(grid) == 1 else None)
            handles.setdefault(name, h)
            if len(curves) > 1:
                ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=color_of[name], alpha=0.18, lw=0)
            drawn = True
        if title:
            ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if not drawn:
        return None
    for ax in axes[::cols]:
        ax.set_ylabel(metric)
    # the legend beside the panels, never over the curves
    fig.legend(list(handles.values()), list(handles), fontsize=8, loc="outside right upper")
    fig.suptitle(f"{metric} vs {xlabel.split(' (')[0]} — mean over seeds, band: min–max", fontsize=10)
    return fig


def plot_warnings(runset: RunSet) -> list[str]:
    """What makes the plots hard to read: too many lines in a panel (unrelated runs)."""
    panels, _ = _panels(runset)
    crowded = max((len(groups) for _, groups in panels), default=0)
    if crowded <= MAX_LINES:
        return []
    return [f"{crowded} lines share one panel (groups by {', '.join(runset.label_keys)}); the plots are hard to "
            "read. Report fewer runs at a time, or runs that differ in fewer config keys."]


def _client_figure(groups: list[Group], metric: str):
    data, labels = [], []
    for group in groups:
        pooled: list[float] = []
        for run in group.curve_runs():
            last = next((rec["client_scores"] for rec in reversed(run.metrics()) if rec.get("client_scores")), None)
            pooled.extend(float(v) for v in last or [])
        if pooled:
            data.append(pooled)
            labels.append(group.title)
    if not data:
        return None
    Figure = _figure_class()
    fig = Figure(figsize=(max(7.5, 1.1 * len(data) + 2), 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.boxplot(data, showmeans=True)
    rotate = max(len(label) for label in labels) > 12
    ax.set_xticks(range(1, len(data) + 1), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center",
                  fontsize=8)
    ax.set_ylabel(f"per-client {metric}")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"per-client {metric}, final evaluation (seeds pooled; ▲ mean)", fontsize=10)
    return fig


PLOTS: dict[str, str] = {
    "metric-vs-round": "Primary metric against rounds (aligned by round). Plots show completed runs only.",
    "metric-vs-time": "Primary metric against virtual time (interpolated onto a common grid).",
    "metric-vs-bytes": "Primary metric against bytes communicated, up + down (interpolated onto a common grid).",
    "client-scores": "Per-client scores of the final global model on each client's held-out data.",
}


def make_figures(runset: RunSet) -> dict[str, Any]:
    """The report's matplotlib figures, by name (plots without data are left out)."""
    groups, metric = runset.groups(), runset.metric_name
    figures = {
        "metric-vs-round": _curve_figure(runset, metric, lambda r: r.get("round"), "round", "round"),
        "metric-vs-time": _curve_figure(runset, metric, lambda r: r.get("virtual_time_s"), "virtual time (s)", "interp"),
        "metric-vs-bytes": _curve_figure(
            runset, metric,
            lambda r: (r.get("bytes_up", 0) + r.get("bytes_down", 0)) / 1e6 if "bytes_up" in r or "bytes_down" in r else None,
            "bytes communicated, up + down (MB)", "interp"),
        "client-scores": _client_figure(groups, metric),
    }
    return {k: f for k, f in figures.items() if f is not None}


# -- the page ----------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:14px;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
ul.notes{font-size:13px;color:#555}
figure{margin:1.5em 0}
figure img{max-width:100%}
figcaption{font-size:13px;color:#555}
code{background:#f3f3f3;padding:0 3px}
p.warn{background:#fff4e0;border-left:4px solid #e69500;padding:6px 10px}
"""


@dataclass
class ReportResult:
    html: Path
    images: list[Path]
    runset: RunSet
    warnings: list[str] = field(default_factory=list)


def _default_out(sources: list[Path]) -> Path:
    return sources[0] / "report.html" if len(sources) == 1 else Path("report.html")


def write_report(paths: Iterable[str | Path], out: str | Path | None = None) -> ReportResult:
    """Write the HTML report of the runs under ``paths`` and its PNG plots next to it."""
    runset = load_runs(paths)
    out = Path(out) if out is not None else _default_out(runset.sources)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out must name an .html file; got {str(out)!r}.")
    figures = make_figures(runset)  # fails early (ConfigError) if matplotlib is missing
    out.parent.mkdir(parents=True, exist_ok=True)

    images, blocks = [], []
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        png = buf.getvalue()
        path = out.with_name(f"{out.stem}-{name}.png")
        path.write_bytes(png)
        images.append(path)
        data = base64.b64encode(png).decode("ascii")
        blocks.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                      f'<figcaption>{html.escape(PLOTS[name])} File: <code>{html.escape(path.name)}</code></figcaption></figure>')

    table = summary_table(runset)
    run_rows = "".join(
        f"<tr><td>{html.escape(str(r.path))}</td><td>{html.escape(', '.join(v for _, v in r.label))}</td>"
        f"<td>{html.escape(r.status)}</td><td class=\"num\">{html.escape(_fmt(r.get('final_metric'), None, 4))}</td></tr>"
        for r in runset.runs
    )
    sources = ", ".join(f"<code>{html.escape(str(s))}</code>" for s in runset.sources)
    warnings = plot_warnings(runset)
    warn_html = "".join(f'<p class="warn">⚠ {html.escape(w)}</p>' for w in warnings)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedweave report</title><style>{_CSS}</style></head>
<body>
<h1>fedweave report</h1>
<p>{len(runset.runs)} runs in {len(runset.groups())} groups from {sources}; generated {datetime.now():%Y-%m-%d %H:%M}.</p>
<h2>Summary</h2>
{html_table(table, len(runset.label_keys))}
<h2>Plots</h2>
{warn_html}{''.join(blocks) or '<p>No evaluation records to plot.</p>'}
<h2>Runs</h2>
<details><summary>{len(runset.runs)} runs</summary>
<table><thead><tr><th>run directory</th><th>label</th><th>status</th><th>final {html.escape(runset.metric_name)}</th></tr></thead>
<tbody>{run_rows}</tbody></table></details>
</body></html>
"""
    out.write_text(page)
    return ReportResult(out, images, runset, warnings)


__all__ = ["RunRecord", "RunSet", "Group", "SummaryTable", "Cell", "load_runs", "summary_table", "markdown_table",
           "html_table", "mean_std", "make_figures", "write_report", "ReportResult"]
