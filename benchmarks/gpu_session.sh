#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The checks a session with a lent NVIDIA GPU machine runs, prepared so that one device call does
# them all (device time is short: docs/performance-history.md, "Issue 13 on a GPU").
#
#   bash benchmarks/gpu_session.sh fetch [BEFORE]  # here, with PyPI: pyopencl and its
#                                          # dependencies as cp312 wheels into .whl/ (emptied
#                                          # first), and wheels of this checkout and of commit
#                                          # BEFORE (default 9d622ae) in .whl/after, .whl/before
#   bash benchmarks/gpu_session.sh run     # there (no network; carry .whl): writes
#                                          # its logs under $OUT (or ./gpu-logs)
#   bash benchmarks/gpu_session.sh compare # there, if device time is left: the two wheels'
#                                          # host API against each other on the GPU
#                                          # (compare_installs.py), 300 s at most
#   bash benchmarks/gpu_session.sh tune    # there, if device time is left: `atrous-cl tune`
#                                          # on A-F (register and local-memory tiles), then
#                                          # `atrous-cl bench` with the winners, 450 s at most
#
# `run` installs the wheels into /tmp/site, registers NVIDIA's OpenCL library with the ICD
# loader (OCL_ICD_VENDORS), runs the source tree from PYTHONPATH, and then: the queue tests
# serially (test_reliability.py, whose user-event tests crashed a worker there once), the
# global-LLVM test with its traceback, call_cost.py on the GPU, and `atrous-cl bench --rounds 9`
# twice. Each step has its own timeout (550 s in all, under a device command's 600); a failing
# step does not stop the next.
set -u -o pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = fetch ]; then
    rm -rf .whl/*.whl .whl/before .whl/after
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        pyopencl pytools siphash24 platformdirs typing_extensions || exit 1
    # atrous-cl itself is pure Python: one wheel serves any CPython 3.
    python3 -m pip wheel -q --no-deps -w .whl/after . || exit 1
    before=$(mktemp -d)
    git worktree add -q --detach "$before/tree" "${2:-9d622ae}" || exit 1
    python3 -m pip wheel -q --no-deps -w .whl/before "$before/tree"
    status=$?
    git worktree remove --force "$before/tree"
    rm -rf "$before"
    exit $status
fi
case "${1:-}" in
    run|compare|tune) ;;
    *) echo "usage: $0 fetch [BEFORE]|run|compare|tune" >&2; exit 2 ;;
esac

out=${OUT:-gpu-logs}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
lib=$(ls /usr/local/nvidia/lib64/libnvidia-opencl.so.1 /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1 \
      2>/dev/null | head -1)
[ -n "$lib" ] || lib=$(find / -xdev -name 'libnvidia-opencl.so.1' 2>/dev/null | head -1)
[ -n "$lib" ] || { echo "no libnvidia-opencl.so.1 on this machine" >&2; exit 1; }
mkdir -p /tmp/icd && echo "$lib" > /tmp/icd/nvidia.icd && export OCL_ICD_VENDORS=/tmp/icd
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -m atrous_cl.cli devices | tee -a "$out/gpu.txt"
gpu=$(python3 -c "from atrous_cl import discovery as d; print(next(i.selector for i in d.devices() if 'NVIDIA' in i.platform))") \
    || { echo "no NVIDIA OpenCL device" >&2; exit 1; }

quiet() { grep -v "CompilerWarning\|prg.build\|timed$"; }
step() { echo "== $1 $(date +%T)"; }

if [ "$1" = compare ]; then
    # Each wheel in a venv of its own over the system's packages (NumPy), with pyopencl's
    # wheels; compare_installs starts its workers with -I, which ignores PYTHONPATH.
    for name in before after; do
        python3 -m venv --without-pip --system-site-packages "/tmp/v-$name" || exit 1
        site=$("/tmp/v-$name/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
            .whl/*.whl .whl/$name/*.whl || exit 1
    done
    step "compare_installs on $gpu"
    timeout 300 python3 benchmarks/compare_installs.py --python before=/tmp/v-before/bin/python \
        --python after=/tmp/v-after/bin/python --workloads A B C D E F --rounds 9 --calls 5 \
        --device "$gpu" 2>&1 | quiet | tee "$out/compare.log"
    step end
    exit
fi

if [ "$1" = tune ]; then
    export XDG_CACHE_HOME=/tmp/tune-cache  # a cache of its own: only this run's winners
    step "tune on $gpu"
    timeout 300 python3 -m atrous_cl.cli tune --device "$gpu" --repeat 5 2>&1 | quiet \
        | tee "$out/tune.log"
    cp /tmp/tune-cache/atrous-cl/tuning.json "$out/" 2>/dev/null
    step "bench with the tuned tiles"
    timeout 140 python3 -m atrous_cl.cli bench --rounds 9 2>&1 | quiet > "$out/bench-tuned.log"
    echo "exit $?"; grep -c '^| [A-F]:' "$out/bench-tuned.log"
    step end
    exit
fi

step "queue tests, serially"
timeout 150 python3 -m pytest -p no:cacheprovider -q --tb=short -W ignore -o faulthandler_timeout=60 \
    tests/test_reliability.py > "$out/reliability.log" 2>&1
echo "exit $?"; tail -5 "$out/reliability.log"

step "global LLVM"
timeout 60 python3 -m pytest -p no:cacheprovider -q --tb=long -W ignore \
    tests/test_environment.py::test_drivers_run_beside_a_global_llvm > "$out/global_llvm.log" 2>&1
echo "exit $?"; tail -3 "$out/global_llvm.log"

step "call cost on $gpu"
timeout 60 python3 benchmarks/call_cost.py --devices "$gpu" --workloads A B C D E F --calls 100 2>&1 \
    | quiet | tee "$out/call_cost.log"

for i in 1 2; do
    step "bench $i"
    timeout 140 python3 -m atrous_cl.cli bench --rounds 9 2>&1 | quiet > "$out/bench$i.log"
    echo "exit $?"; grep -c '^| [A-F]:' "$out/bench$i.log"
done

step end
