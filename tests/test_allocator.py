"""executor.retain_memory: freed blocks are reused instead of being unmapped and faulted
back in. Measured by page faults (a count, not a time) in a fresh process."""

import platform
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import torch
torch.set_num_threads(1)
if sys.argv[1] == "retain":
    from fedweave.core.allocator import retain_freed_memory
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
def faults_of_one_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    big = torch.ones(10 * 2**20)  # 40 MiB, every page written
    small = torch.ones(2 * 2**20)  # 8 MiB
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del big, small
    return after - before
faults = [faults_of_one_step() for _ in range(24)]
print(min(faults[-8:]), max(faults[-8:]))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_retained_memory_is_reused_without_page_faults():
    """A "step" that allocates 40 MiB and 8 MiB (10,240 + 2,048 pages of 4 KiB) and frees
    them, 24 times. glibc's default serves blocks above 32 MiB (its largest dynamic mmap
    threshold) with mmap and unmaps them on free, so every step faults the 40 MiB in
    again; retained, once the heap has grown, the steps reuse it (the last 8 steps)."""
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return [int(v) for v in out.stdout.split()]

    assert faults("default")[0] >= 10_240 * 0.9  # huge pages would lower it; not with THP off or on madvise
    assert faults("retain")[1] < 12_288 * 0.05


def test_retain_memory_is_on_by_default_and_reaches_the_worker_setup():
    from fedweave.config import load_config
    from fedweave.experiment import build_experiment

    base = ["data.partition.num_clients=4", "schedule.clients_per_round=2"]
    cfg = load_config(None, base)
    assert cfg.executor.retain_memory is True
    assert build_experiment(cfg).worker_setup().retain_memory is True
    off = load_config(None, base + ["executor.retain_memory=false"])
    assert build_experiment(off).worker_setup().retain_memory is False
