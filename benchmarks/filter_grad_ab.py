# SPDX-License-Identifier: Apache-2.0
"""The filter gradient alone, per tile: ``python benchmarks/filter_grad_ab.py``.

``python benchmarks/filter_grad_ab.py [--devices 2:0 1:0] [--workloads A B]
[--shapes N,H,W,CIN,COUT,K,RATE,PADDING ...] [--dtype float32]
[--bc 8 16] [--gc 4 8 16] [--ov 1 2] [--kt 1 3] [--items 1 4096] [--kib 0 512] [--xpack]
[--cb 1 4 16] [--winograd [GC ...]] [--rounds 7]``

For each device and workload, the filter gradient of the transpose vjp (the
forward conv from the op's output-shaped cotangent back to ``value``,
:func:`atrous_cl.filter_grad.launch`, both stages and the wait) on arrays already
on the device, for the direct kernel's default layout (``default``) and every layout ``BCxGCxOVxKT/items/KiB(chunks)`` (output channels per vector
x input channels per work-item x output vectors per work-item x taps of a filter row per work-item / work-items the row chunks aim for / the
largest chunk in KiB of both inputs, 0 for any (the chunks that gives)), interleaved
round by round in a new order each round. Prints the median ms of each layout
(best first) and its median and minimum over the default's, and
the transpose kernel's time on the same workload for scale. Every layout's
result is checked against the NumPy reference before it is timed.
"""

import argparse
import itertools
import statistics
import time

import numpy as np
import pyopencl.array as cl_array

import atrous_cl
from atrous_cl import bench, filter_grad, tiles, tuning, validation


def _time(queue, call, rounds, order_seed=1):
    """``(median, min)`` seconds of each of ``call``'s keys, interleaved in a new order each
    round. On a shared machine the minimum is the figure other jobs disturb least."""
    samples = {key: [] for key in call}
    keys = list(call)
    order = np.random.default_rng(order_seed)
    for r in range(rounds + 1):
        for i in order.permutation(len(keys)):
            start = time.perf_counter()
            call[keys[i]]()
            queue.finish()
            if r:
                samples[keys[i]].append(time.perf_counter() - start)
    return {key: (statistics.median(s), min(s)) for key, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_problem_arguments(parser, ["2:0", "1:0"])
    parser.add_argument("--bc", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--gc", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--ov", nargs="+", type=int, default=[1])
    parser.add_argument("--xpack", action="store_true",
                        help="each layout also with x packed by channel groups first "
                             "(FilterGradTile.xpack), the default also the other way")
    parser.add_argument("--cb", nargs="+", type=int, default=[1],
                        help="with --xpack: groups of input channels a work-item takes in turn "
                             "(FilterGradTile.cb)")
    parser.add_argument("--kt", nargs="+", type=int, default=[1],
                        help="taps of a filter row per work-item (those that divide its width)")
    parser.add_argument("--items", nargs="+", type=int, default=[4096])
    parser.add_argument("--kib", nargs="+", type=int, default=[0],
                        help="largest row chunk in KiB of both inputs (0: any)")
    parser.add_argument("--winograd", nargs="*", type=int, default=None, metavar="GC",
                        help="also the Winograd filter gradient (3x3 filters, "
                             "filter_grad.winograd_layout, forced), with its default register "
                             "tile or each of these input channels per work-item")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--show", type=int, default=8, help="how many of the fastest to print")
    args = parser.parse_args()
    workloads = bench.selected_workloads(args.workloads, args.shapes)
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    for device in args.devices:
        queue = atrous_cl.get_queue(device=device)
        for wl in workloads:
            prob = bench.FilterGradProblem.on(queue, wl, dtype, rng)
            conv, x, d, out = prob.conv, prob.x, prob.d, prob.out
            default = filter_grad.layout(queue.device, dtype, conv)
            plans = {"default": default}
            for bc, gc, ov, kt, items, kib in itertools.product(args.bc, args.gc, args.ov,
                                                                args.kt, args.items, args.kib):
                if (bc <= tiles.pow2_at_least(conv.filters_shape[3])
                        and gc <= conv.filters_shape[2] and wl.k % kt == 0):
                    plan = filter_grad.layout(queue.device, dtype, conv,
                                              tiles.Tile(default.tile.pixels, bc), gc, items,
                                              kib << 10, ov, kt, xpack=False)
                    plans[f"{bc}x{gc}x{ov}x{kt}/{items}/{kib}k({plan.chunks})"] = plan
            if args.xpack:  # each layout packed too, and the default the other way
                plans.update({f"{name}+xpack" + (f"x{cb}" if cb > 1 else ""):
                              plan._replace(xpack=True, cb=cb)
                              for name, plan in list(plans.items()) if name != "default"
                              for cb in args.cb})
                plans["default" + ("-xpack" if default.xpack else "+xpack")] = \
                    default._replace(xpack=not default.xpack, cb=1)
            if args.winograd is not None and wl.k == 3:
                for wgc in args.winograd or [None]:
                    plan = filter_grad.winograd_layout(queue.device, dtype, conv, gc=wgc,
                                                       force=True)
                    plans[f"winograd {plan.bc}x{plan.gc}x{plan.ov} ({plan.chunks} chunks)"] = plan
            for name, plan in plans.items():
                prob.check(plan, f"{name} on {wl.name}")
            calls = {name: (lambda p=plan: filter_grad.launch(queue, x, d, out, conv, p))
                     for name, plan in plans.items()}
            targs = validation.check_transpose_args(d.shape, prob.filters.shape, wl.output_shape,
                                                    wl.rate, wl.padding)
            v, f = d, cl_array.to_device(queue, prob.filters)
            y = cl_array.empty(queue, wl.output_shape, dtype)
            calls["transpose op"] = lambda: tuning.transpose(queue, v, f, y, targs)
            ms = {k: (t * 1e3, m * 1e3) for k, (t, m) in _time(queue, calls, args.rounds).items()}
            base, base_min = ms.pop("default")
            d_name = (f"{default.tile.channels}x{default.gc}x{default.ov}x{default.kt}"
                      f"{'+xpack' if default.xpack else ''}"
                      f"{f'x{default.cb}' if default.cb > 1 else ''} ({default.chunks} chunks)")
            ranked = sorted(ms, key=lambda k: ms[k][0])
            print(f"{device} {wl.name}: default {d_name} {base:.3f} ms (min {base_min:.3f}); "
                  + "  ".join(f"{k} {ms[k][0]:.3f} ({ms[k][0] / base:.2f}, min {ms[k][1] / base_min:.2f})"
                              for k in ranked[:args.show]), flush=True)


if __name__ == "__main__":
    main()
