# SPDX-License-Identifier: Apache-2.0
"""The filter gradient's default layout against itself with one field changed, in pairs.

``python benchmarks/filter_grad_pairs.py [--devices 1:0 2:0] [--workloads A B]
[--shapes N,H,W,CIN,COUT,K,RATE,PADDING ...] [--dtype float32] [--field xpack|cb|dpack]
[--pairs 41]``

For each device and workload, the transpose vjp's filter gradient
(:func:`atrous_cl.filter_grad.launch`, both stages and the wait, arrays already on
the device) with the default layout's ``--field`` of
:class:`atrous_cl.filter_grad.Layout` off and on (``xpack``: False and True, x
packed with the default's ``cb``, or 1 where that is 1; ``cb``: 1 and the default's,
x packed; ``dpack``: d as it is and packed), called alternately, each pair in
a new order. Prints each side's median and minimum ms and the median of the
pairs' ratios (on over off): on a shared machine whose speed drifts over seconds,
two calls next to each other see the same machine, where medians over a run
need not. Both results are checked against the NumPy reference first.

Nothing here asserts anything about time.
"""

import argparse
import statistics
import time

import numpy as np

import atrous_cl
from atrous_cl import bench, filter_grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_problem_arguments(parser, ["1:0", "2:0"])
    parser.add_argument("--field", default="xpack", choices=["xpack", "cb", "dpack"])
    parser.add_argument("--pairs", type=int, default=41)
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    for device in args.devices:
        queue = atrous_cl.get_queue(device=device)
        for wl in bench.selected_workloads(args.workloads, args.shapes):
            prob = bench.FilterGradProblem.on(queue, wl, dtype, rng)
            default = filter_grad.layout(queue.device, dtype, prob.conv)
            if args.field == "cb":
                plans = [default._replace(cb=1), default]
            elif args.field == "dpack":
                plans = [default._replace(dpack=False), default._replace(dpack=True)]
            else:
                plans = [default._replace(xpack=False, cb=1), default._replace(xpack=True)]
            for plan in plans:
                prob.check(plan, f"{plan} on {wl.name}")
            seconds = ([], [])
            order = np.random.default_rng(1)
            for _ in range(args.pairs):
                for k in order.permutation(2):
                    start = time.perf_counter()
                    prob.run(plans[k])
                    seconds[k].append(time.perf_counter() - start)
            off, on = ([t * 1e3 for t in s] for s in seconds)
            ratio = statistics.median(b / a for a, b in zip(off, on))
            print(f"{device} {wl.name} {dtype.name}: {args.field} off {statistics.median(off):.3f} ms "
                  f"(min {min(off):.3f}), on {statistics.median(on):.3f} (min {min(on):.3f}); "
                  f"on / off, median of pairs {ratio:.3f} (default: xpack {default.xpack}, "
                  f"cb {default.cb}, dpack {default.dpack})", flush=True)


if __name__ == "__main__":
    main()
