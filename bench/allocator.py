"""executor.retain_memory: what keeping freed memory saves, side by side in fresh processes
(the setting is process-wide and stays set, so each measurement gets a process of its own).

Two measurements, each with glibc's defaults and with freed memory retained, alternated:

* ``eval``  — the built-in ``cnn`` on 8,333 CIFAR-shaped examples in batches of 1,024 under
  ``no_grad`` (what fedweave's evaluation of W2 does): each batch's activations are
  134 MB, above glibc's largest dynamic mmap threshold (32 MiB), so by default every one is
  mapped, faulted in page by page, and unmapped;
* ``train`` — 10 clients × 16 steps of W2's training step (the same ``cnn``, batch 32,
  ``torch.optim.SGD``): tensors of a few MB each.

Reported: CPU seconds (``time.process_time``, 1 thread) and minor page faults per pass,
medians over the passes after a first one. Never asserts a time.

    python bench/allocator.py --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

CHILD = r"""
import resource, statistics, sys, time
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
mode, what = sys.argv[1], sys.argv[2]
if mode == "retain":
    from fedweave.core.allocator import retain_freed_memory
    assert retain_freed_memory()
from fedweave.models.zoo import build_cnn
torch.manual_seed(0)
model = build_cnn((3, 32, 32), 10)
if what == "eval":
    model.eval()
    x = torch.randn(8333, 3, 32, 32)
    def one_pass():
        with torch.no_grad():
            for i in range(0, len(x), 1024):
                model(x[i:i + 1024])
else:
    x, y = torch.randn(16, 32, 3, 32, 32), torch.randint(0, 10, (16, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    def one_pass():
        for _ in range(10):
            for s in range(16):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[s]), y[s]).backward()
                opt.step()
one_pass()
cpu, faults = [], []
for _ in range(3):
    f, c = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    one_pass()
    cpu.append(time.process_time() - c)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
print(statistics.median(cpu), statistics.median(faults))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per mode and measurement")
    args = ap.parse_args(argv)
    env = {"PYTHONPATH": SRC}
    print(f"{'measurement':>11} {'malloc':>8} {'CPU s/pass':>11} {'page faults/pass':>17}")
    for what in ("eval", "train"):
        rows: dict[str, list[tuple[float, float]]] = {"default": [], "retain": []}
        for _ in range(args.repeats):
            for mode in rows:
                out = subprocess.run([sys.executable, "-c", CHILD, mode, what], capture_output=True, text=True,
                                     check=True, env=env).stdout.split()
                rows[mode].append((float(out[0]), float(out[1])))
        for mode, values in rows.items():
            cpu = statistics.median(v[0] for v in values)
            faults = statistics.median(v[1] for v in values)
            print(f"{what:>11} {mode:>8} {cpu:11.3f} {faults:17.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
