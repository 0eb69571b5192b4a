// SPDX-License-Identifier: Apache-2.0
//
// The gradient of an atrous (dilated) 2-D convolution, stride 1, TF
// semantics, with respect to its filters:
//
//   filter_grad_partial + filter_grad_sum:
//     dfilters[a, b, c, o] = sum_{n, i, j} x[n, i - PAD_TOP + a*RATE_H, j - PAD_LEFT + b*RATE_W, c]
//                                          * d[n, i, j, o]
//
// over the terms whose input pixel lies inside x; outside it TF's zero
// padding contributes nothing. x and d are NHWC, dfilters [KH, KW, CIN, COUT],
// each C-contiguous from an element offset. It serves both ops: for
// atrous_conv2d x is its input and d the output's cotangent; for
// atrous_conv2d_transpose (the adjoint) x is the cotangent and d its input
// (atrous_cl/training.py). The forward atrous_conv2d itself runs on
// atrous_conv2d_transpose.cl's kernel with flipped taps.
//
// Build options (-D):
//   T, ACC     storage and accumulation types: float/float, double/double or
//              half/float (half is storage only, via vload_half/vstore_half,
//              so it needs no cl_khr_fp16); USE_HALF / USE_FP64 accordingly
//   BC         output channels per vector, 1, 2, 4, 8, 16
//   OV         filter gradient: vectors of BC output channels per work-item
//              (default 1)
//   GC         filter gradient: input channels per work-item
//   CIN, COUT, COUTP, KH, KW, RATE_H, RATE_W, PAD_TOP, PAD_LEFT
//              the channel counts, kernel, rate and pads, baked in so the
//              compiler can unroll the tap and channel loops; long literals
//              per axis, as in atrous_conv2d_transpose.cl
// Spatial sizes stay run-time arguments. Offsets are 64-bit.

// The type and vector macros (LOAD, STOREV, VACC, ...) come from prelude.cl.

// A vector whose lanes are a lane-wise view, for the ragged last channel tile.
typedef union { VACC v; ACC s[BC]; } lanes_t;

#ifndef OV
#define OV 1
#endif

// partial[s, tap, c, o] = the filter gradient's sum over the rows
// r = n * HD + i in [s * rows_per_chunk, (s + 1) * rows_per_chunk), in order.
// x is [N, HX, WX, CIN], d [N, HD, WD, COUT]; partial is ACC, [S, KH * KW,
// CIN, COUTP] (lanes past COUT hold garbage that filter_grad_sum skips).
// Global size (ceil(COUTP / (BC * OV)), ceil(CIN / GC), KH * KW * S).
//
// A work-item keeps a register tile of GC input channels x OV vectors of BC
// output channels: per pixel, OV vector loads of d and GC of x feed GC * OV
// multiply-adds (one vector, OV = 1, left the loads as many as the
// multiply-adds: B's filter gradient took 1.8x the transpose kernel's time).
// BC output channels of d from element at (lanes past COUT read as 0: they
// would read the next pixel, or past the buffer).
inline VACC load_d(__global const T *restrict d, const long at, const int o0, const bool whole_o)
{
    if (whole_o)
        return LOADV_UNALIGNED(d, at);
    lanes_t lanes;
    for (int k = 0; k < BC; ++k)
        lanes.s[k] = o0 + k < COUT ? (ACC)LOAD(d, at + k) : (ACC)0;
    return lanes.v;
}

__kernel void filter_grad_partial(
    __global const T *restrict x, const long x_off,
    __global const T *restrict d, const long d_off,
    __global ACC *restrict partial,
    const int HX, const int WX, const int HD, const int WD,
    const long rows, const long rows_per_chunk)
{
    const int o0 = (int)get_global_id(0) * (BC * OV);
    const int c0 = (int)get_global_id(1) * GC;
    // Remainders written out: a '%' next to its '/' makes clang pair them
    // through an LLVM 'freeze', which Oclgrind's uninitialised-value checker
    // cannot run.
    const long s = get_global_id(2) / (KH * KW);
    const int tap = (int)(get_global_id(2) - s * (KH * KW));
    const int ta = tap / KW;
    const long di = ta * RATE_H - PAD_TOP;                 // x row of d's row i: i + di
    const long dj = (tap - ta * KW) * RATE_W - PAD_LEFT;   // x column of d's column j: j + dj
    // The d columns whose x column lies inside x: no test per pixel.
    const int j_lo = (int)clamp(-dj, 0L, (long)WD);
    const int j_hi = (int)clamp(WX - dj, 0L, (long)WD);
    // Every vector of the tile whole (the usual case): one test per pixel, not OV.
    const bool whole_o = o0 + BC * OV <= COUT;

    // Input channels past CIN (the last, ragged tile) read channel CIN - 1
    // into lanes that are never stored.
    int cc[GC];
#pragma unroll
    for (int g = 0; g < GC; ++g)
        cc[g] = min(c0 + g, CIN - 1);

    // Unrolled loops keep acc[][] in registers (see atrous_conv2d_transpose.cl).
    VACC acc[GC][OV];
#pragma unroll
    for (int g = 0; g < GC; ++g)
#pragma unroll
        for (int v = 0; v < OV; ++v)
            acc[g][v] = (VACC)0;

    // The d pixels whose tap lands outside x read TF's zero padding, which TF
    // multiplies by d: 0 * d, NaN where d is Inf or NaN, the same for every
    // input channel. d - d is that term; pad sums them.
    VACC pad[OV];
#pragma unroll
    for (int v = 0; v < OV; ++v)
        pad[v] = (VACC)0;
    const long r_end = min(rows, (s + 1) * rows_per_chunk);
    for (long r = s * rows_per_chunk; r < r_end; ++r) {
        const long n = r / HD;
        const long ix = (r - n * HD) + di;
        const long drow = d_off + r * (long)WD * COUT + o0;
        const bool row_inside = ix >= 0 && ix < HX;
        const int lo = row_inside ? j_lo : WD;  // padding columns: [0, lo) and [hi, WD)
        const int hi = row_inside ? j_hi : WD;
        for (int j = 0; j < lo; ++j) {
#pragma unroll
            for (int v = 0; v < OV; ++v) {
                const VACC dv = load_d(d, drow + (long)j * COUT + v * BC, o0 + v * BC,
                                       o0 + (v + 1) * BC <= COUT);
                pad[v] += dv - dv;
            }
        }
        for (int j = hi; j < WD; ++j) {
#pragma unroll
            for (int v = 0; v < OV; ++v) {
                const VACC dv = load_d(d, drow + (long)j * COUT + v * BC, o0 + v * BC,
                                       o0 + (v + 1) * BC <= COUT);
                pad[v] += dv - dv;
            }
        }
        if (!row_inside)
            continue;
        const long xrow = x_off + ((n * HX + ix) * WX + dj) * CIN;
        for (int j = j_lo; j < j_hi; ++j) {
            VACC dv[OV];
            if (whole_o) {
#pragma unroll
                for (int v = 0; v < OV; ++v)
                    dv[v] = LOADV_UNALIGNED(d, drow + (long)j * COUT + v * BC);
            } else {
#pragma unroll
                for (int v = 0; v < OV; ++v)
                    dv[v] = load_d(d, drow + (long)j * COUT + v * BC, o0 + v * BC,
                                   o0 + (v + 1) * BC <= COUT);
            }
            const long xp = xrow + (long)j * CIN;
#pragma unroll
            for (int g = 0; g < GC; ++g) {
                const ACC xg = (ACC)LOAD(x, xp + cc[g]);
#pragma unroll
                for (int v = 0; v < OV; ++v)
                    acc[g][v] += xg * dv[v];
            }
        }
    }

#pragma unroll
    for (int v = 0; v < OV; ++v) {
        const int ov = o0 + v * BC;
        if (ov >= COUTP)
            break;
        const long base = ((s * KH * KW + tap) * CIN + c0) * (long)COUTP + ov;
#pragma unroll
        for (int g = 0; g < GC; ++g)
            if (c0 + g < CIN)
                STOREV_ACC(partial, base + (long)g * COUTP, acc[g][v] + pad[v]);
    }
}

// dfilters[tap, c, o] = sum over s = 0, 1, ..., S - 1 of partial[s, tap, c, o].
// Global size (COUT, CIN, KH * KW).
__kernel void filter_grad_sum(__global const ACC *restrict partial, const int S,
                              __global T *restrict dfilters, const long dfilters_off)
{
    const int o = (int)get_global_id(0);
    const int c = (int)get_global_id(1);
    const long tap = get_global_id(2);
    const long stride = (long)KH * KW * CIN * COUTP;
    long k = (tap * CIN + c) * COUTP + o;
    ACC sum = partial[k];
    for (int s = 1; s < S; ++s)
        sum += partial[k += stride];
    STORE(dfilters, dfilters_off + (tap * CIN + c) * COUT + o, sum);
}
