"""Is there a batched form of W2's CNN step that beats training the clients one by one on
the CPU? One step of K clients (batch 32, CIFAR-shaped 3x32x32, the built-in ``cnn``),
measured side by side in one process, alternating forms each repeat:

* ``serial``   — K separate models, ``torch.optim.SGD``, one after another (what the serial
  executor and a plain PyTorch loop do);
* ``grouped``  — the conv kernel's form: the K clients as groups of one grouped
  convolution, feature maps ``[B, K·C, H, W]`` (channels-last and channels-first);
* ``looped``   — clients stacked in the batch dimension ``[K·B, C, H, W]`` for every
  element-wise op, pooling and the Linear layers (``baddbmm``), but each client's
  convolution run on its own slice with its own weights (the convolutions then cost what
  they cost serially; only the rest is batched);
* ``threads``  — the serial form, clients split over two Python threads with one torch
  thread each (inter-op instead of intra-op parallelism);
* ``serial-nhwc`` and ``serial-nhwc-relu-after-pool`` — still one client at a time, through
  the same layers rewritten: channels-last input, and ReLU moved after max-pooling (exact).
  Not batched forms: they measure how much a per-client graph rewrite would give serial.

Reported: CPU time per step of all K clients (``time.process_time``: what the process
used, whatever else runs on the machine; ``--threads 1`` makes it comparable across
forms), wall time, and serial's GFLOP per CPU-second against the fp32 matmul rate per
CPU-second measured in the same process — the ceiling any batched form could reach.
Never asserts a time.

    python bench/conv_forms.py                 # K = 10, 1 thread, CPU time
    python bench/conv_forms.py --threads 2     # wall time at 2 threads is the fair one
    python bench/conv_forms.py --layouts       # executor.channels_last on cnn, lenet5, resnet
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedweave.models.zoo import build_cnn  # noqa: E402
from fedweave.sim.conv_kernel import probe  # noqa: E402

SHAPE, CLASSES, BATCH, LR = (3, 32, 32), 10, 32, 0.05


def forms(k: int):
    torch.manual_seed(0)
    base = build_cnn(SHAPE, CLASSES)
    models = [copy.deepcopy(base) for _ in range(k)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR) for m in models]
    stacked = [p.detach().unsqueeze(0).repeat(k, *[1] * p.dim()).clone() for p in base.parameters()]
    x = torch.randn(k, BATCH, *SHAPE)
    y = torch.randint(0, CLASSES, (k, BATCH))

    def one(j):
        opts[j].zero_grad(set_to_none=True)
        F.cross_entropy(models[j](x[j]), y[j]).backward()
        opts[j].step()

    def serial():
        for j in range(k):
            one(j)

    def threads():
        def work(js):
            for j in js:
                one(j)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        pool = [threading.Thread(target=work, args=(range(i, k, 2),)) for i in range(2)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        torch.set_num_threads(previous)

    per_client = [list(m.parameters()) for m in models]
    x_nhwc = [x[j].contiguous(memory_format=torch.channels_last) for j in range(k)]

    def rewritten(channels_last: bool, relu_after_pool: bool):
        """Serial, one client at a time, through the same layers written out: channels-last
        input (oneDNN then runs NHWC convolutions) and/or ReLU after max-pooling (exact:
        max commutes with a monotone activation, and both give zero gradient where the
        window's maximum is ≤ 0), on a quarter of the elements."""
        def act(h):
            return F.relu(F.max_pool2d(h, 2)) if relu_after_pool else F.max_pool2d(F.relu(h), 2)

        def run():
            for j in range(k):
                w1, b1, w2, b2, f1, g1, f2, g2 = per_client[j]
                opts[j].zero_grad(set_to_none=True)
                h = act(F.conv2d(x_nhwc[j] if channels_last else x[j], w1, b1, padding=2))
                h = act(F.conv2d(h, w2, b2, padding=2)).flatten(1)
                F.cross_entropy(F.linear(F.relu(F.linear(h, f1, g1)), f2, g2), y[j]).backward()
                opts[j].step()
        return run

    def head_and_step(h, leaves):
        w1, b1, w2, b2, f1, g1, f2, g2 = leaves
        h = F.relu(torch.baddbmm(g1.unsqueeze(1), h.reshape(k, BATCH, -1), f1.transpose(1, 2)))
        out = torch.baddbmm(g2.unsqueeze(1), h, f2.transpose(1, 2))
        loss = F.cross_entropy(out.reshape(k * BATCH, -1), y.reshape(-1), reduction="sum") / BATCH
        with torch.no_grad():
            for t, g in zip(stacked, torch.autograd.grad(loss, leaves)):
                t.sub_(g, alpha=LR)

    def grouped(channels_last: bool):
        leaves = [t.detach().requires_grad_() for t in stacked]
        w1, b1, w2, b2 = leaves[:4]
        h = x.transpose(0, 1).reshape(BATCH, k * SHAPE[0], *SHAPE[1:])
        if channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        h = F.max_pool2d(F.relu(F.conv2d(h, w1.flatten(0, 1), b1.flatten(), padding=2, groups=k)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, w2.flatten(0, 1), b2.flatten(), padding=2, groups=k)), 2)
        head_and_step(h.reshape(BATCH, k, -1).transpose(0, 1), leaves)

    def looped():
        leaves = [t.detach().requires_grad_() for t in stacked]
        w1, b1, w2, b2 = leaves[:4]

        def conv(h, w, b):
            return torch.cat([F.conv2d(part, w[j], b[j], padding=2) for j, part in enumerate(h.chunk(k))])

        h = F.max_pool2d(F.relu(conv(x.reshape(k * BATCH, *SHAPE), w1, b1)), 2)
        h = F.max_pool2d(F.relu(conv(h, w2, b2)), 2)
        head_and_step(h, leaves)

    return {"serial": serial, "grouped-nhwc": lambda: grouped(True), "grouped-nchw": lambda: grouped(False),
            "looped": looped, "threads": threads, "serial-nhwc": rewritten(True, False),
            "serial-nhwc-relu-after-pool": rewritten(True, True)}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP per CPU-second of 2048 x 2048 fp32 products: a rate that other jobs on the
    machine barely change, comparable with serial's rate per CPU-second below."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.process_time()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.process_time() - t) / 1e9


def layouts(repeats: int) -> None:
    """``executor.channels_last`` on each zoo CNN: one training step (batch 32, 3×32×32)
    with a channels-last minibatch against the default layout, CPU time, alternated."""
    from fedweave.models import build_model

    for name, kwargs in (("cnn", {}), ("lenet5", {}), ("resnet", {"norm": "group"})):
        torch.manual_seed(0)
        base = build_model(name, SHAPE, CLASSES, **kwargs)
        x, y = torch.randn(BATCH, *SHAPE), torch.randint(0, CLASSES, (BATCH,))
        runs = {}
        for layout, xb in (("NCHW", x), ("NHWC", x.contiguous(memory_format=torch.channels_last))):
            model = copy.deepcopy(base)
            opt = torch.optim.SGD(model.parameters(), lr=LR)

            def step(model=model, opt=opt, xb=xb):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), y).backward()
                opt.step()
            runs[layout] = (step, [])
        for step, _ in runs.values():
            step()
        for _ in range(repeats):
            for step, times in runs.values():
                c = time.process_time()
                step()
                times.append(time.process_time() - c)
        nchw, nhwc = (statistics.median(t) for _, t in runs.values())
        print(f"{name:>7}: {1e3 * nchw:6.1f} CPU ms per step; channels-last {nhwc / nchw:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--layouts", action="store_true", help="executor.channels_last on the zoo CNNs instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.layouts:
        layouts(max(args.repeats, 15))
        return 0
    fs = forms(args.clients)
    for f in fs.values():  # first calls: allocator and oneDNN primitive caches
        f()
    cpu = {name: [] for name in fs}
    wall = {name: [] for name in fs}
    for _ in range(args.repeats):
        for name, f in fs.items():
            c, w = time.process_time(), time.perf_counter()
            f()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
    peak = matmul_gflops()
    macs, _ = probe(build_cnn(SHAPE, CLASSES), SHAPE)
    linear = sum(m.in_features * m.out_features for m in build_cnn(SHAPE, CLASSES).modules()
                 if isinstance(m, torch.nn.Linear))
    flops = 3 * 2 * (macs + linear) * BATCH * args.clients  # forward + two backward products
    serial_wall, serial_cpu = statistics.median(wall["serial"]), statistics.median(cpu["serial"])
    rate = flops / serial_cpu / 1e9
    print(f"K={args.clients}, batch {BATCH}, {args.threads} thread(s); per CPU-second: fp32 matmul {peak:.0f} GFLOP, "
          f"serial training {rate:.0f} GFLOP ({100 * rate / peak:.0f} % of the matmul rate)")
    print(f"{'form':>27} {'CPU ms':>8} {'x serial':>9} {'wall ms':>8} {'x serial':>9}")
    base_cpu = statistics.median(cpu["serial"])
    for name in fs:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:>27} {1e3 * c:8.1f} {c / base_cpu:9.2f} {1e3 * w:8.1f} {w / serial_wall:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
