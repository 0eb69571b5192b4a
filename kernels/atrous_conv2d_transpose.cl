// SPDX-License-Identifier: Apache-2.0
//
// Transposed atrous (dilated) 2-D convolution, stride 1, TF semantics.
//
//   out[n, p, q, c] = sum_{a, b, o} value[n, p + PAD_TOP - a*RATE_H, q + PAD_LEFT - b*RATE_W, o]
//                                   * filters[a, b, c, o]
//
// over the taps whose input pixel lies inside value: the gather form of the
// scatter in atrous_cl/reference.py. value and out are NHWC, filters
// [KH, KW, COUT, CIN], each C-contiguous from an element offset.
//
// repack_filters first copies the filters to wt [KH, KW, CIN, COUTP], output
// channels innermost and zero-padded to COUTP (a multiple of BC), so one
// vector load fetches BC output channels of a tap. Each work-item of the main
// kernel then accumulates a register tile of BW consecutive output pixels of
// one row times BC output channels: one value load feeds BC multiply-adds,
// one weight vector BW of them.
//
// Build options (-D):
//   T, ACC     storage and accumulation types: float/float, double/double or
//              half/float (half is storage only, via vload_half/vstore_half,
//              so it needs no cl_khr_fp16); USE_HALF / USE_FP64 accordingly
//   BW, BC     the tile: output pixels x output channels; BC in 1, 2, 4, 8, 16
//   CIN, COUT, COUTP, KH, KW, RATE_H, RATE_W, PAD_TOP, PAD_LEFT
//              the problem's channel counts, kernel, rate and crop pads, so
//              the compiler can unroll the tap and channel loops. The rate
//              and pads are long literals, per axis: a rate too large for
//              the image arrives replaced by a small one that lands the same
//              taps (atrous_cl.geometry.equivalent_dilation), and the row and
//              column arithmetic is 64-bit, so no rate overflows it
//   FORWARD_FILTERS, WIDE_INPUTS   see repack_filters and WIDE_INPUTS below
// Spatial sizes stay run-time arguments: one build serves every image size.
// Offsets are 64-bit, so tensors past 2^31 elements index correctly.

// The type and vector macros (LOAD, STOREV, VACC, ...) come from prelude.cl.

// WIDE_INPUTS (float16 on CPUs): value and the packed weights reach the main
// kernel in ACC, widened once by widen and repack_filters, so its inner loop
// converts nothing; only out is stored as T. A CPU converts a half with an
// instruction per element (PoCL with a library call), which capped float16 at
// 0.4x float32's speed on Intel's runtime and 0.1x on PoCL.
#ifdef WIDE_INPUTS
#define VALUE_T ACC
#define WT_T ACC
#define LOAD_VALUE(p, i) ((p)[i])
#define LOADV_WT(p, i) LOADV_ACC_ALIGNED(p, i)
#define STORE_WT(p, i, v) ((p)[i] = (v))
#else
#define VALUE_T T
#define WT_T T
#define LOAD_VALUE(p, i) LOAD(p, i)
#define LOADV_WT(p, i) LOADV_ALIGNED(p, i)
#define STORE_WT(p, i, v) STORE(p, i, v)
#endif

// wide[i] = x[x_off + i] in ACC. Global size: the element count.
__kernel void widen(__global const T *restrict x, const long x_off, __global ACC *restrict wide)
{
    const long i = get_global_id(0);
    wide[i] = (ACC)LOAD(x, x_off + i);
}

// wt[tap, o, c] = filters[tap, c, o] for c < COUT, 0 for COUT <= c < COUTP.
// With FORWARD_FILTERS the filters are the forward atrous_conv2d's,
// [KH, KW, CIN, COUT], and the taps are flipped: wt[tap, o, c] =
// filters[KH * KW - 1 - tap, o, c]. The kernel below then computes that
// forward convolution, given the crop pads (k - 1) * RATE - (TF's pad).
// Global size (COUTP, CIN, KH * KW).
__kernel void repack_filters(__global const T *restrict filters, const long filters_off,
                             __global WT_T *restrict wt)
{
    const int c = (int)get_global_id(0);
    const int o = (int)get_global_id(1);
    const long tap = get_global_id(2);
#ifdef FORWARD_FILTERS
    const long from = filters_off + ((KH * KW - 1 - tap) * CIN + o) * COUT + c;
#else
    const long from = filters_off + (tap * COUT + c) * CIN + o;
#endif
    const ACC w = c < COUT ? (ACC)LOAD(filters, from) : (ACC)0;
    STORE_WT(wt, (tap * CIN + o) * COUTP + c, w);
}

// Global size (COUTP / BC, ceil(OW / BW), N * OH): one work-item per tile.
//
// The pixel loops are unrolled so that acc[] stays in registers, and an
// interior tile reads its pixels at constant offsets from one pointer:
// PoCL 3.0's compiler otherwise keeps acc[] on the stack and computes every
// address, about 3x slower (Intel's runtime: 1.0-1.3x).
__kernel void atrous_conv2d_transpose(
    __global const VALUE_T *restrict value, const long value_off,
    __global const WT_T *restrict wt,
    __global T *restrict out, const long out_off,
    const int H, const int W, const int OH, const int OW)
{
    const int c0 = (int)get_global_id(0) * BC;
    const int q0 = (int)get_global_id(1) * BW;
    const long row_id = get_global_id(2);  // n * OH + p
    const long n = row_id / OH;
    const int p = (int)(row_id - n * OH);

    VACC acc[BW];
#pragma unroll
    for (int px = 0; px < BW; ++px)
        acc[px] = (VACC)0;

    for (int a = 0; a < KH; ++a) {
        const long i = p + PAD_TOP - a * RATE_H;
        if (i < 0 || i >= H)
            continue;
        const long row = value_off + (n * H + i) * (long)W * CIN;
        for (int b = 0; b < KW; ++b) {
            const long j0 = q0 + PAD_LEFT - b * RATE_W;  // input column of pixel 0
            const long tap = (long)(a * KW + b) * CIN * COUTP + c0;
            if (j0 >= 0 && j0 + BW <= W) {
                // Interior: every pixel's input column lies inside value.
                __global const VALUE_T *v = value + row + j0 * CIN;
                for (int o = 0; o < CIN; ++o) {
                    const VACC w = LOADV_WT(wt, tap + o * COUTP);
#pragma unroll
                    for (int px = 0; px < BW; ++px)
                        acc[px] += (ACC)LOAD_VALUE(v, px * CIN + o) * w;
                }
            } else {
                // Border: a pixel whose input column lies outside value gets
                // no term at all (not 0 * w, which is NaN for an Inf or NaN
                // weight). Its address is clamped to a valid one and its sum
                // kept by a select, not a branch: PoCL 1.3-1.5x faster on
                // A, C and D, Intel's runtime the same or faster.
                long col[BW];
                bool inside[BW];
#pragma unroll
                for (int px = 0; px < BW; ++px) {
                    inside[px] = j0 + px >= 0 && j0 + px < W;
                    col[px] = row + clamp(j0 + px, 0L, (long)W - 1) * CIN;
                }
                for (int o = 0; o < CIN; ++o) {
                    const VACC w = LOADV_WT(wt, tap + o * COUTP);
#pragma unroll
                    for (int px = 0; px < BW; ++px) {
                        const VACC sum = acc[px] + (ACC)LOAD_VALUE(value, col[px] + o) * w;
                        acc[px] = inside[px] ? sum : acc[px];
                    }
                }
            }
        }
    }

    const long base = out_off + (row_id * OW + q0) * (long)COUT + c0;
    for (int px = 0; px < BW && q0 + px < OW; ++px) {
        if (c0 + BC <= COUT) {
            STOREV(out, base + (long)px * COUT, acc[px]);
        } else {  // the last channel tile of a COUT that BC does not divide
            union { VACC v; ACC s[BC]; } lanes = {acc[px]};
            for (int cc = 0; c0 + cc < COUT; ++cc)
                STORE(out, base + (long)px * COUT + cc, lanes.s[cc]);
        }
    }
}
