# SPDX-License-Identifier: Apache-2.0
"""The filters' repack alone, as the installed atrous-cl launches it, kernels only.

``python benchmarks/repack_time.py [--devices 2:0 1:0] [--dtype float32] [--forward]
[--rounds 9] --shapes 1,33,33,1024,256,3,6,SAME ...``

For each device and ``N,H,W,CIN,COUT,K,RATE,PADDING`` problem, builds the launch
layer's plans (:func:`atrous_cl.launch.plan`) for the Winograd kernel's default tile
(where that kernel runs the problem) and the direct kernel's, and times each plan's
``repack_filters`` with its own geometry on a profiling queue: the median of
``--rounds`` launches, each waited for, the plans interleaved. ``--forward`` repacks
the forward op's filters (``[kh, kw, in, out]``, the filter gradient's and
``atrous_conv2d``'s). Every repack is first checked to fill its whole buffer with
finite values (the buffer poisoned with NaN before): the transformed filters, then
the copy of them the Winograd kernel's fallback reads, or the direct kernel's
packed weights and notes.

The script uses only what every version of the launch layer since the Winograd
kernel has (``plan``, a plan's ``kernels``, ``repack`` and ``packed_nbytes``), so
two installs can be compared by running it with each one's interpreter, alternately
(``docs/performance.md``). Nothing here asserts anything about time.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

import atrous_cl
from atrous_cl import bench, launch, tiles, validation


def plans(device, context, dtype, wl, forward) -> dict:
    """{name: plan}: the Winograd kernel's (where it runs the problem) and the direct one's."""
    if forward:
        args = launch.forward_as_transpose(validation.check_conv_args(
            (wl.n, wl.h, wl.w, wl.cin), (wl.k, wl.k, wl.cin, wl.cout), wl.rate, wl.padding))
    else:
        args = validation.check_transpose_args((wl.n, wl.h, wl.w, wl.cin),
                                               (wl.k, wl.k, wl.cout, wl.cin), wl.output_shape,
                                               wl.rate, wl.padding)
    wide = launch.widens_inputs(device, dtype)
    out = {}
    winograd = tiles.winograd_tile(device, dtype, args.filters_shape)
    if winograd is not None:
        p = launch.plan(context, device, dtype, args, winograd, forward, False)
        if p is not None and p.main_kernel == "winograd_transpose":
            out[f"winograd {winograd}"] = p
    direct = tiles.default_tile(device, dtype, args.filters_shape[2])
    p = launch.plan(context, device, dtype, args, direct, forward, wide)
    if p is not None:
        out[f"direct {direct}"] = p
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", nargs="+", default=["2:0", "1:0"])
    ap.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    ap.add_argument("--forward", action="store_true")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--shapes", nargs="+", type=bench.parse_workload, required=True)
    a = ap.parse_args()
    dtype = np.dtype(a.dtype)
    for sel in a.devices:
        device = atrous_cl.get_queue(device=sel).device
        context = cl.Context([device])
        queue = cl.CommandQueue(context, properties=cl.command_queue_properties.PROFILING_ENABLE)
        rng = np.random.default_rng(0)
        for wl in a.shapes:
            shape = (wl.k, wl.k, wl.cin, wl.cout) if a.forward else (wl.k, wl.k, wl.cout, wl.cin)
            filters = cl_array.to_device(queue, rng.standard_normal(shape).astype(dtype))
            launches = []
            for name, p in plans(device, context, dtype, wl, a.forward).items():
                packed = cl.Buffer(context, cl.mem_flags.READ_WRITE, p.packed_nbytes)
                kernel = p.kernels["repack_filters"]
                kernel.set_args(filters.base_data, np.int64(0), packed)
                # The packed buffer's type: ACC, or float16 where the direct kernel reads it so.
                halves = dtype == np.float16 and not p.wide and p.main_kernel != "winograd_transpose"
                acc = np.dtype(np.float16 if halves else np.float64 if dtype == np.float64
                               else np.float32)
                cl.enqueue_fill_buffer(queue, packed, acc.type(np.nan), 0, p.packed_nbytes)
                cl.enqueue_nd_range_kernel(queue, kernel, *p.repack)
                got = np.empty(p.packed_nbytes // acc.itemsize, acc)
                cl.enqueue_copy(queue, got, packed)
                if not np.isfinite(got).all():
                    raise SystemExit(f"{sel} {wl.name} {name}: the repack left "
                                     f"{int((~np.isfinite(got)).sum())} elements unwritten")
                # The buffer travels along: a kernel's arguments do not keep it alive.
                launches.append((name, kernel, p.repack, packed))
            times = {name: [] for name, *_ in launches}
            for r in range(a.rounds):
                for name, kernel, geometry, packed in (launches if r % 2 == 0 else launches[::-1]):
                    kernel.set_args(filters.base_data, np.int64(0), packed)
                    event = cl.enqueue_nd_range_kernel(queue, kernel, *geometry)
                    event.wait()
                    times[name].append((event.profile.end - event.profile.start) * 1e-6)
            print(f"{sel} {a.dtype}{' forward' if a.forward else ''} {wl.name}: "
                  + "  ".join(f"{name} {statistics.median(t):.2f} ms" for name, t in times.items()),
                  flush=True)


if __name__ == "__main__":
    main()
