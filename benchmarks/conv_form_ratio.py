# SPDX-License-Identifier: Apache-2.0
"""Issue 13's figure: t_onnxruntime_conv_form / t_ours, per device, interleaved.

``python benchmarks/conv_form_ratio.py [--devices 2:0 1:0] [--workloads A B ...]
[--shapes 1,33,33,256,256,3,12,SAME ...] [--rounds N]``

A lighter ``atrous-cl bench``: the same rounds (:func:`atrous_cl.bench.run`,
interleaved, a new order each round, results checked), but only our host API
on the named devices and onnxruntime's Conv form (NCHW), so a run takes a
fraction of the time on a shared machine. Prints ms per workload and the ratio
(above 1: we are faster) with the geometric mean over A-D.

Measured on this project's shared 2-core EPYC (Zen 5), 21 rounds, load 1.2-2.1,
commit f5d1a7c (before issue 13's kernel work) and this file's commit run
alternately, twice each (geometric mean A-D; Intel 2:0 / Debian PoCL 3.1 1:0):
before 0.69 / 0.70 and 0.69 / 0.71, after 0.82 / 0.79 and 0.88 / 0.85.
After, per workload (second run): Intel A 0.83 B 0.90 C 0.78 D 1.04 E 0.79
F 0.80; PoCL A 0.75 B 0.86 C 0.70 D 1.17 E 0.69 F 0.55.
"""

import argparse
import math

from atrous_cl import bench, discovery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["2:0", "1:0"])
    parser.add_argument("--workloads", nargs="*", default=None,
                        help="named workloads (default: all, or none where --shapes are given)")
    parser.add_argument("--shapes", nargs="*", default=[], help="N,H,W,CIN,COUT,K,RATE,PADDING")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    infos = {info.selector: info for info in discovery.devices()}
    impls = {f"ours {sel}": bench.Impl(bench._ours(infos[sel])) for sel in args.devices}
    impls["ort Conv"] = bench.Impl(bench._onnxruntime("NCHW", conv_form=True), "NCHW")
    workloads = bench.selected_workloads(args.workloads, args.shapes)
    times, _ = bench.run(workloads, rounds=args.rounds, impls=impls)
    print("| workload | " + " | ".join(f"{n} ms" for n in impls)
          + " | " + " | ".join(f"ratio {sel}" for sel in args.devices) + " |")
    print("|---" * (len(impls) + len(args.devices) + 1) + "|")
    ratios = {sel: [] for sel in args.devices}
    for wl in workloads:
        row = [f"{times[wl, n] * 1e3:.3f}" for n in impls]
        for sel in args.devices:
            r = times[wl, "ort Conv"] / times[wl, f"ours {sel}"]
            ratios[sel].append((wl.name, r))
            row.append(f"{r:.2f}")
        print(f"| {wl.name} | " + " | ".join(row) + " |")
    for sel in args.devices:
        ad = [r for name, r in ratios[sel] if name in ("A", "B", "C", "D")]
        if ad:
            print(f"{sel}: geomean A-D {math.exp(sum(map(math.log, ad)) / len(ad)):.2f}x")


if __name__ == "__main__":
    main()
