# SPDX-License-Identifier: Apache-2.0
"""What reusing packed filters saves the host path.

``python benchmarks/repack_reuse.py [DEVICE...] [--workloads A E F] [--calls 420]``

Times the host API on the workloads back to back, interleaved: calls that
pass the same filters every time (after the first, the op compares their bytes
and skips the repack) against calls that alternate between two filter arrays
differing in one element (every call repacks). Medians of all but the
first 20 calls each. Filters above ``atrous_cl.launch.REUSE_BYTES`` repack
either way (B's 576 KiB).
"""

import argparse
import statistics
import time

import numpy as np

import atrous_cl
from atrous_cl import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("devices", nargs="*", default=["2:0"])
    parser.add_argument("--workloads", nargs="+", default=["A", "E", "F"])
    parser.add_argument("--calls", type=int, default=420)
    args = parser.parse_args()
    for device in args.devices:
        queue = atrous_cl.get_queue(device=device)
        rng = np.random.default_rng(0)
        for wl in (w for w in bench.WORKLOADS if w.name in args.workloads):
            value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(np.float32)
            same = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(np.float32)
            changing = [same.copy(), same.copy()]
            changing[1].flat[0] += 1
            samples = {"same filters": [], "changing filters": []}
            for r in range(args.calls):
                for kind in sorted(samples, reverse=bool(r % 2)):
                    filters = same if kind == "same filters" else changing[r % 2]
                    start = time.perf_counter()
                    atrous_cl.atrous_conv2d_transpose(value, filters, wl.output_shape, wl.rate,
                                                      wl.padding, queue=queue)
                    if r >= 20:
                        samples[kind].append(time.perf_counter() - start)
            print(device, wl.name, "  ".join(f"{k} {statistics.median(s) * 1e3:.3f} ms"
                                             for k, s in samples.items()))


if __name__ == "__main__":
    main()
