# SPDX-License-Identifier: Apache-2.0
"""Kernels alone, interleaved: the working tree's main kernel against commit f5d1a7c's.

``python benchmarks/kernel_ab.py DEVICE [WORKLOADS] VARIANT...``, e.g.
``python benchmarks/kernel_ab.py 2:0 ABCDEF old:8x16 new:8x16 new:8x8:-DEXTRA=1``

A variant is ``old`` (the kernel of commit f5d1a7c, BW consecutive pixels per
tile, one work-item per packed weight in the repack) or ``new`` (this tree's,
through :mod:`atrous_cl.launch`' geometry), a tile ``PIXELSxCHANNELS`` and
optionally extra build options after a colon, comma-separated, and a work-group
size ``:L=a.b.c`` (the global size rounded up to it; the kernel must then
tolerate the extra work-items, so use it only where they divide). Each round
runs every variant once in a new order (repack, main kernel, wait; float32,
device buffers, no host transfers), after checking each against the
reference; prints the median ms of 25 rounds per workload. On a machine shared
with other work only such interleaved figures compare.
"""

import subprocess
import sys
import time
from pathlib import Path
import statistics

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

import atrous_cl
from atrous_cl import bench, launch, programs, reference
from atrous_cl.tiles import Tile
from atrous_cl.validation import check_transpose_args

_OLD = "f5d1a7c"
_ROOT = Path(__file__).resolve().parent.parent


def _old_program(context, options):
    show = lambda path: subprocess.run(["git", "show", f"{_OLD}:{path}"], cwd=_ROOT, check=True,
                                       capture_output=True, text=True).stdout
    source = f"{show('kernels/prelude.cl')}\n#line 1\n{show('kernels/atrous_conv2d_transpose.cl')}"
    return cl.Program(context, source).build(options=list(options))


def main() -> None:
    device, names, variants = sys.argv[1], sys.argv[2], sys.argv[3:]
    queue = atrous_cl.get_queue(device=device)
    rng = np.random.default_rng(0)
    for wl in bench.WORKLOADS:
        if wl.name not in names:
            continue
        value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(np.float32)
        filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(np.float32)
        args = check_transpose_args(value.shape, filters.shape, wl.output_shape, wl.rate, wl.padding)
        want = reference.atrous_conv2d_transpose(value, filters, wl.output_shape, wl.rate, wl.padding)
        d_value, d_filters = cl_array.to_device(queue, value), cl_array.to_device(queue, filters)
        out = cl_array.empty(queue, wl.output_shape, np.float32)
        kh, kw, cout, cin = filters.shape
        _, oh, ow, _ = wl.output_shape
        runs = {}
        for variant in variants:
            kind, pixels_channels, *extra = variant.split(":")
            local = None
            if extra and extra[-1].startswith("L="):
                local = tuple(map(int, extra.pop()[2:].split(".")))
            extra = [e for e in extra if e]
            tile = Tile(*map(int, pixels_channels.split("x")))
            options = launch.build_options(np.float32, args, tile) + tuple(extra[0].split(",") if extra else ())
            coutp = tile.padded_channels(cout)
            if kind == "old":
                kernels = {k.function_name: k for k in _old_program(queue.context, options).all_kernels()}
                repack = ((coutp, cin, kh * kw), None)
                geometry = ((coutp // tile.channels, -(-ow // tile.pixels), wl.n * oh), None)
                nbytes = kh * kw * cin * coutp * 4
            else:
                kernels, _ = programs.get_kernels(queue.context, "atrous_conv2d_transpose.cl", options)
                repack = launch.repack_geometry(filters.shape, tile)
                geometry = launch.launch_geometry(wl.output_shape, tile, launch.kernel_dilation(args)[2])
                nbytes = (kh * kw * (cin + 1) * coutp + cin) * 4
            if local is not None:  # a work-group of local[i] work-items along axis i, clipped
                local = tuple(min(l, g) for l, g in zip(local, geometry[0]))
                geometry = (tuple(-(-g // l) * l for g, l in zip(geometry[0], local)), local)
            packed = cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, nbytes)

            def run(kernels=kernels, repack=repack, geometry=geometry, packed=packed):
                kernels["repack_filters"](queue, *repack, d_filters.data, np.int64(0), packed)
                kernels["atrous_conv2d_transpose"](queue, *geometry, d_value.data, np.int64(0), packed,
                                                   out.data, np.int64(0),
                                                   *map(np.int32, (wl.h, wl.w, oh, ow)))
                queue.finish()
            out.fill(np.nan)
            run()
            err = np.max(np.abs(out.get() - want)) / np.max(np.abs(want))
            if not err < 1e-5:
                raise RuntimeError(f"{variant} disagrees with the reference on {wl.name}: {err:.2e}")
            runs[variant] = run
        samples = {variant: [] for variant in variants}
        for r in range(25):
            for variant in np.random.default_rng(r).permutation(variants):
                start = time.perf_counter()
                runs[variant]()
                samples[variant].append(time.perf_counter() - start)
        print(wl.name, "  ".join(f"{v} {statistics.median(s) * 1e3:.3f}" for v, s in samples.items()),
              flush=True)


if __name__ == "__main__":
    main()
