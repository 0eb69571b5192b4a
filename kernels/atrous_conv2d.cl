// SPDX-License-Identifier: Apache-2.0
//
// Forward atrous (dilated) 2-D convolution, stride 1, TF semantics, and the
// gradient of a convolution with respect to its filters.
//
//   atrous_conv2d:
//     out[n, i, j, o] = sum_{a, b, c} value[n, i - PAD_TOP + a*RATE, j - PAD_LEFT + b*RATE, c]
//                                     * filters[a, b, c, o]
//   filter_grad_partial + filter_grad_sum:
//     dfilters[a, b, c, o] = sum_{n, i, j} x[n, i - PAD_TOP + a*RATE, j - PAD_LEFT + b*RATE, c]
//                                          * d[n, i, j, o]
//
// over the terms whose input pixel lies inside value (x); outside it TF's
// zero padding contributes nothing. value, x, d and out are NHWC, filters
// [KH, KW, CIN, COUT], each C-contiguous from an element offset. The filter
// gradient serves both ops: for atrous_conv2d x is its input and d the
// output's cotangent; for atrous_conv2d_transpose (the adjoint) x is the
// cotangent and d its input (atrous_cl/training.py).
//
// The convolution's work-items each accumulate a register tile of BW
// consecutive output pixels of one row times BC output channels, as in
// atrous_conv2d_transpose.cl. The filters already have output channels
// innermost, so they are used in place unless COUT needs zero-padding to
// COUTP (a multiple of BC): then pad_filters copies them first.
//
// The filter gradient is a reduction over N * HD * WD pixels that is far
// longer than the filters are large, so it runs in two fixed-order stages and
// never uses atomics: each work-item of filter_grad_partial sums the rows of
// one chunk, in order, into a tile of GC input channels x BC output channels
// of one tap; filter_grad_sum then adds the chunks' partial sums in chunk
// order. The chunking depends only on the shapes (training.py), so a result
// is bit-identical from run to run.
//
// Build options (-D):
//   T, ACC     storage and accumulation types: float/float, double/double or
//              half/float (half is storage only, via vload_half/vstore_half,
//              so it needs no cl_khr_fp16); USE_HALF / USE_FP64 accordingly
//   BW         atrous_conv2d: output pixels per work-item
//   BC         both: output channels per work-item (a vector), 1, 2, 4, 8, 16
//   GC         filter gradient: input channels per work-item
//   CIN, COUT, COUTP, KH, KW, RATE, PAD_TOP, PAD_LEFT
//              the channel counts, kernel, rate and pads, baked in so the
//              compiler can unroll the tap and channel loops
// Spatial sizes stay run-time arguments. Offsets are 64-bit.

// The type and vector macros (LOAD, STOREV, VACC, ...) come from prelude.cl.

// A vector whose lanes are a lane-wise view, for the ragged last channel tile.
typedef union { VACC v; ACC s[BC]; } lanes_t;

// wt[tap, c, o] = filters[tap, c, o] for o < COUT, 0 for COUT <= o < COUTP.
// Global size (COUTP, CIN, KH * KW).
__kernel void pad_filters(__global const T *restrict filters, const long filters_off,
                          __global T *restrict wt)
{
    const int o = (int)get_global_id(0);
    const int c = (int)get_global_id(1);
    const long tap = get_global_id(2);
    const ACC w = o < COUT ? (ACC)LOAD(filters, filters_off + (tap * CIN + c) * COUT + o) : (ACC)0;
    STORE(wt, (tap * CIN + c) * COUTP + o, w);
}

// acc[px] += value[pixel px, c] * wt[tap, c, o0:o0+BC] for every input channel
// c and every pixel where PIXEL_OK holds. A pixel whose input column lies in
// the zero padding gets no term at all (not 0 * w, which is NaN for an Inf or
// NaN weight).
#define ACCUMULATE_TAP(PIXEL_OK)                                              \
    for (int c = 0; c < CIN; ++c) {                                          \
        const VACC w = LOADV(wt, tap + c * COUTP);                           \
        for (int px = 0; px < BW; ++px)                                      \
            if (PIXEL_OK)                                                    \
                acc[px] += (ACC)LOAD(value, col[px] + c) * w;                \
    }

// Global size (COUTP / BC, ceil(OW / BW), N * OH): one work-item per tile.
// wt is [KH, KW, CIN, COUTP] from wt_off: the filters themselves when
// COUTP == COUT, else pad_filters' copy.
__kernel void atrous_conv2d(
    __global const T *restrict value, const long value_off,
    __global const T *restrict wt, const long wt_off,
    __global T *restrict out, const long out_off,
    const int H, const int W, const int OH, const int OW)
{
    const int o0 = (int)get_global_id(0) * BC;
    const int q0 = (int)get_global_id(1) * BW;
    const long row_id = get_global_id(2);  // n * OH + p
    const long n = row_id / OH;
    const int p = (int)(row_id - n * OH);

    VACC acc[BW];
    for (int px = 0; px < BW; ++px)
        acc[px] = (VACC)0;

    for (int a = 0; a < KH; ++a) {
        const int i = p - PAD_TOP + a * RATE;
        if (i < 0 || i >= H)
            continue;
        const long row = value_off + (n * H + i) * (long)W * CIN;
        for (int b = 0; b < KW; ++b) {
            const int j0 = q0 - PAD_LEFT + b * RATE;  // input column of pixel 0
            // Clamped, so a border pixel's (unused) address is still valid.
            long col[BW];
            for (int px = 0; px < BW; ++px)
                col[px] = row + (long)clamp(j0 + px, 0, W - 1) * CIN;
            const long tap = wt_off + (long)(a * KW + b) * CIN * COUTP + o0;
            if (j0 >= 0 && j0 + BW <= W) {
                ACCUMULATE_TAP(true)
            } else {
                ACCUMULATE_TAP(j0 + px >= 0 && j0 + px < W)
            }
        }
    }

    const long base = out_off + (row_id * OW + q0) * (long)COUT + o0;
    for (int px = 0; px < BW && q0 + px < OW; ++px) {
        if (o0 + BC <= COUT) {
            STOREV(out, base + (long)px * COUT, acc[px]);
        } else {  // the last channel tile of a COUT that BC does not divide
            lanes_t lanes = {acc[px]};
            for (int k = 0; o0 + k < COUT; ++k)
                STORE(out, base + (long)px * COUT + k, lanes.s[k]);
        }
    }
}

// partial[s, tap, c, o] = the filter gradient's sum over the rows
// r = n * HD + i in [s * rows_per_chunk, (s + 1) * rows_per_chunk), in order.
// x is [N, HX, WX, CIN], d [N, HD, WD, COUT]; partial is ACC, [S, KH * KW,
// CIN, COUTP] (lanes past COUT hold garbage that filter_grad_sum skips).
// Global size (COUTP / BC, ceil(CIN / GC), KH * KW * S).
__kernel void filter_grad_partial(
    __global const T *restrict x, const long x_off,
    __global const T *restrict d, const long d_off,
    __global ACC *restrict partial,
    const int HX, const int WX, const int HD, const int WD,
    const long rows, const long rows_per_chunk)
{
    const int o0 = (int)get_global_id(0) * BC;
    const int c0 = (int)get_global_id(1) * GC;
    const int tap = (int)(get_global_id(2) % (KH * KW));
    const long s = get_global_id(2) / (KH * KW);
    const int di = (tap / KW) * RATE - PAD_TOP;   // x row of d's row i: i + di
    const int dj = (tap % KW) * RATE - PAD_LEFT;  // x column of d's column j: j + dj
    // The d columns whose x column lies inside x: no test per pixel.
    const int j_lo = max(0, -dj);
    const int j_hi = min(WD, WX - dj);
    const bool whole_o = o0 + BC <= COUT;

    // Input channels past CIN (the last, ragged tile) read channel CIN - 1
    // into lanes that are never stored.
    int cc[GC];
    for (int g = 0; g < GC; ++g)
        cc[g] = min(c0 + g, CIN - 1);

    VACC acc[GC];
    for (int g = 0; g < GC; ++g)
        acc[g] = (VACC)0;

    const long r_end = min(rows, (s + 1) * rows_per_chunk);
    for (long r = s * rows_per_chunk; r < r_end; ++r) {
        const long n = r / HD;
        const int ix = (int)(r - n * HD) + di;
        if (ix < 0 || ix >= HX)
            continue;
        const long xrow = x_off + ((n * HX + ix) * (long)WX + dj) * CIN;
        const long drow = d_off + r * (long)WD * COUT + o0;
        for (int j = j_lo; j < j_hi; ++j) {
            VACC dv;
            if (whole_o) {
                dv = LOADV(d, drow + (long)j * COUT);
            } else {  // lanes past COUT would read the next pixel, or past the buffer
                lanes_t lanes;
                for (int k = 0; k < BC; ++k)
                    lanes.s[k] = o0 + k < COUT ? (ACC)LOAD(d, drow + (long)j * COUT + k) : (ACC)0;
                dv = lanes.v;
            }
            const long xp = xrow + (long)j * CIN;
            for (int g = 0; g < GC; ++g)
                acc[g] += (ACC)LOAD(x, xp + cc[g]) * dv;
        }
    }

    const long base = ((s * KH * KW + tap) * CIN + c0) * (long)COUTP + o0;
    for (int g = 0; g < GC && c0 + g < CIN; ++g)
        STOREV_ACC(partial, base + (long)g * COUTP, acc[g]);
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
