# SPDX-License-Identifier: Apache-2.0
"""The vjps against PyTorch's autograd backward at any shapes: ``python benchmarks/vjp_shapes.py``.

``python benchmarks/vjp_shapes.py --shapes N,H,W,CIN,COUT,K,RATE,PADDING ... [--workloads A B]
[--op transpose_vjp|conv_vjp] [--devices 1:0 2:0] [--rounds 5]``

What ``atrous-cl bench --op ...`` does (:func:`atrous_cl.bench.run`: every result checked
against the reference first, interleaved in a new order each round, medians after two
warm-ups), for the host API on the given devices and torch's autograd backward only, at
shapes the bench's workloads do not have (DeepLab's ASPP, wide channels). Prints each
one's median ms and t_torch / t_ours. Needs torch.
"""

import argparse

from atrous_cl import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_problem_arguments(parser, ["1:0", "2:0"])
    parser.add_argument("--op", default="transpose_vjp", choices=["transpose_vjp", "conv_vjp"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.dtype != "float32":
        parser.error("the bench's problems are float32")
    impls = {name: impl for name, impl in bench.implementations(op=args.op).items()
             if name.startswith("torch") or (name.split()[1] in args.devices
                                             and not name.endswith("(on device)"))}
    if not any(name.startswith("torch") for name in impls):
        parser.error("needs torch")
    workloads = bench.selected_workloads(args.workloads, args.shapes)
    times, _ = bench.run(workloads, rounds=args.rounds, impls=impls, op=args.op)
    torch_name = next(name for name in impls if name.startswith("torch"))
    for wl in workloads:
        theirs = times[wl, torch_name]
        print(f"{wl.name}: torch {theirs * 1e3:.1f} ms; " + "; ".join(
            f"{name.removeprefix('atrous-cl ')} {times[wl, name] * 1e3:.1f} ms "
            f"({theirs / times[wl, name]:.2f}x)"
            for name in impls if name != torch_name), flush=True)


if __name__ == "__main__":
    main()
