# SPDX-License-Identifier: Apache-2.0
"""Host-device copies on one OpenCL device, pageable against pinned, beside PyTorch's on CUDA.

``python benchmarks/transfers.py [--device P:D] [--mib 1 4 16] [--repeat 30]``

For each size (float32): pyopencl's blocking copy from and to a NumPy array
(pageable memory); the same through a ``CL_MEM_ALLOC_HOST_PTR`` buffer mapped
once (pinned on GPU drivers), the NumPy memcpy into or out of it included, and
the copy from it alone; NumPy's memcpy; and, where PyTorch sees a CUDA GPU,
``tensor.cuda()`` and ``.cpu()`` of the same array. Median ms of ``--repeat``
copies after one unmeasured. What the host API's copies cost on a GPU, and
whether pinned staging would pay (docs/performance-history.md, "Issue 13 on a GPU").
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyopencl as cl

import atrous_cl


def median_ms(fn, repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--mib", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--repeat", type=int, default=30)
    opts = parser.parse_args()
    queue = atrous_cl.get_queue(device=opts.device)
    print(f"device: {queue.device.name.strip()} ({queue.device.platform.name.strip()})")
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    for mib in opts.mib:
        n = mib * (1 << 20) // 4
        host = np.random.default_rng().standard_normal(n).astype(np.float32)
        back = np.empty_like(host)
        dev = cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, host.nbytes)
        pin = cl.Buffer(queue.context, cl.mem_flags.READ_WRITE | cl.mem_flags.ALLOC_HOST_PTR,
                        host.nbytes)
        pinned, _ = cl.enqueue_map_buffer(queue, pin, cl.map_flags.READ | cl.map_flags.WRITE,
                                          0, (n,), np.float32)
        r = opts.repeat
        times = {
            "up, pageable": median_ms(lambda: cl.enqueue_copy(queue, dev, host, is_blocking=True), r),
            "up, via pinned": median_ms(lambda: (np.copyto(pinned, host), cl.enqueue_copy(
                queue, dev, pinned, is_blocking=True)), r),
            "up, from pinned alone": median_ms(lambda: cl.enqueue_copy(queue, dev, pinned,
                                                                       is_blocking=True), r),
            "down, pageable": median_ms(lambda: cl.enqueue_copy(queue, back, dev, is_blocking=True), r),
            "down, via pinned": median_ms(lambda: (cl.enqueue_copy(
                queue, pinned, dev, is_blocking=True), np.copyto(back, pinned)), r),
            "memcpy": median_ms(lambda: np.copyto(back, host), r),
        }
        if cuda:
            t = torch.from_numpy(host)
            times["torch up"] = median_ms(lambda: (t.cuda(), torch.cuda.synchronize()), r)
            g = t.cuda()
            times["torch down"] = median_ms(lambda: g.cpu().numpy(), r)
        print(f"{mib} MiB: " + "; ".join(f"{k} {v:.3f}" for k, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
