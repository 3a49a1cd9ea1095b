"""Partition plots: each client's label distribution and size.

``fedweave partition CONFIG --plot FILE.png`` calls :func:`plot_partition`. The figure
has two panels sharing the client axis:

* top: one stacked bar per client, the share of each class among its examples (so every
  non-empty client's bar reaches 1; an iid split shows level bands, a label-skewed one
  a patchwork);
* bottom: the number of training examples of each client.

Up to 20 classes get a legend; more are coloured along a continuous colormap with a
colour bar. matplotlib (the ``plot`` extra) is imported only when a plot is drawn; the
figure is built without pyplot, so no display or global state is involved.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedweave.core.errors import ConfigError


_MAX_BARS = 150  # above this many clients the bars are drawn as filled steps (fast for thousands)


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            'Drawing a partition plot needs matplotlib, which is not installed; install the plot extra: '
            'pip install "fedweave[plot]".'
        ) from None
    return Figure


def _class_colors(num_classes: int):
    from matplotlib import colormaps

    if num_classes <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(num_classes)], None
    if num_classes <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(num_classes)], None
    cmap = colormaps["turbo"]
    return [cmap(i / (num_classes - 1)) for i in range(num_classes)], cmap


def check_plot_path(path) -> Path:
    """The plot file ``path``, or ConfigError if its folder is missing or it has no extension."""
    path = Path(os.fspath(path)).expanduser()
    if not path.parent.is_dir():
        raise ConfigError(f"Cannot write the plot to {path}: the folder {path.parent} does not exist. Create it first.")
    if not path.suffix:
        raise ConfigError(f"The plot file {path} needs an extension that names its format, e.g. {path}.png.")
    return path


def plot_partition(hists, path, *, title: str | None = None, class_names: list[str] | None = None) -> Path:
    """Draw the per-client label distribution and sizes of ``hists`` into ``path``.

    ``hists`` is the ``[num_clients, num_classes]`` count matrix of
    :func:`fedweave.data.label_histograms`. The format follows the file extension
    (``.png``, ``.pdf``, ``.svg``...). Returns the path written.
    """
    h = np.asarray(hists, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] == 0 or h.shape[1] == 0:
        raise ConfigError(f"A partition plot needs a non-empty [clients, classes] histogram; got shape {h.shape}.")
    path = check_plot_path(path)
    num_clients, num_classes = h.shape
    sizes = h.sum(axis=1)
    shares = np.divide(h, sizes[:, None], out=np.zeros_like(h), where=sizes[:, None] > 0)
    Figure = _figure_class()
    width = min(4.0 + 0.12 * num_clients, 16.0)
    fig = Figure(figsize=(width, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    x = np.arange(num_clients)
    bar_width = 0.85 if num_clients <= 60 else 1.0
    colors, cmap = _class_colors(num_classes)
    base = np.zeros(num_clients)
    names = class_names or [str(c) for c in range(num_classes)]
    few = num_clients <= _MAX_BARS
    edges = np.arange(num_clients + 1) - 0.5
    for c in range(num_classes):
        if few:
            top.bar(x, shares[:, c], bar_width, bottom=base, color=colors[c], label=names[c], linewidth=0)
        else:  # one filled step polygon per class instead of one rectangle per client and class
            top.fill_between(edges, np.append(base, base[-1]), np.append(base + shares[:, c], base[-1] + shares[-1, c]),
                             step="post", color=colors[c], label=names[c], linewidth=0)
        base += shares[:, c]
    top.set_ylim(0, 1)
    top.set_ylabel("share of the client's examples")
    top.set_title(title or f"Label distribution of {num_clients} clients ({num_classes} classes)")
    if cmap is None:
        top.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = fig.colorbar(ScalarMappable(norm=Normalize(0, num_classes - 1), cmap=cmap), ax=top, pad=0.01)
        bar.set_label("class")
    if few:
        bottom.bar(x, sizes, bar_width, color="0.35", linewidth=0)
    else:
        bottom.fill_between(edges, 0, np.append(sizes, sizes[-1]), step="post", color="0.35", linewidth=0)
    bottom.set_ylabel("examples")
    bottom.set_xlabel("client")
    bottom.set_xlim(-0.6, num_clients - 0.4)
    if num_clients <= 40:
        bottom.set_xticks(x)
    try:
        fig.savefig(path, dpi=120)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"Could not write the plot to {path}: {exc}.") from None
    return path
