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
// repack_filters first copies the filters to wt [COUTP / WB, KH, KW, CIN, WB]:
// on CPUs blocks of WB output channels (a work-item's, BC * OV; in one row of
// every channel, [KH, KW, CIN, COUTP], a work-item of 256->256 read its
// weights 1 KiB apart: 1x64x64 took 52 ms, in blocks 28), on GPUs one block
// (WB = COUTP, which neighbouring work-items load together); output channels
// innermost and zero-padded to COUTP (a multiple of BC), so one vector load
// fetches BC output channels of a tap. It notes which weights are finite.
// Each work-item of the main kernel then accumulates a register tile of BW
// output pixels of one row, RATE_W apart, times BC output channels: one value
// load feeds up to KW * BC multiply-adds, one weight vector BW of them. With
// CONSECUTIVE the main kernel is atrous_conv2d_transpose_rows instead, whose
// tiles are BW consecutive columns, for rates large against the image.
//
// Build options (-D):
//   T, ACC     storage and accumulation types: float/float, double/double or
//              half/float (half is storage only, via vload_half/vstore_half,
//              so it needs no cl_khr_fp16); USE_HALF / USE_FP64 accordingly
//   BW, BC     the tile: output pixels (RATE_W apart, or consecutive with
//              CONSECUTIVE) x output channels; BC in 1, 2, 4, 8, 16
//   OV         vectors of BC output channels per work-item (default 1); COUTP
//              is then a multiple of BC * OV
//   WB         output channels per block of the packed weights: BC * OV, or
//              COUTP (the default: one block, [KH, KW, CIN, COUTP], as the
//              local-memory kernel file reads them)
//   CIN, COUT, COUTP, KH, KW, RATE_H, RATE_W, PAD_TOP, PAD_LEFT
//              the problem's channel counts, kernel, rate and crop pads, so
//              the compiler can unroll the tap and channel loops. The rate
//              and pads are long literals, per axis: a rate too large for
//              the image arrives replaced by a small one that lands the same
//              taps (atrous_cl.geometry.equivalent_dilation), and the row and
//              column arithmetic is 64-bit, so no rate overflows it
//   FORWARD_FILTERS, WIDE_INPUTS   see repack_filters and WIDE_INPUTS below
//   CONSECUTIVE  builds atrous_conv2d_transpose_rows; VW the one-channel
//              kernel atrous_conv2d_transpose_pixels (see each)
// Spatial sizes stay run-time arguments: one build serves every image size.
// Offsets are 64-bit, so tensors past 2^31 elements index correctly.

// The type and vector macros (LOAD, STOREV, VACC, ...) come from prelude.cl.

// WIDE_INPUTS (float16 on CPUs): value and the packed weights reach the main
// kernel in ACC, widened once by widen (prelude.cl) and repack_filters, so its inner loop
// converts nothing; only out is stored as T. A CPU converts a half with an
// instruction per element (PoCL with a library call), which capped float16 at
// 0.4x float32's speed on Intel's runtime and 0.1x on PoCL.
#ifdef WIDE_INPUTS
#define VALUE_T ACC
#define WT_T ACC
#define LOAD_VALUE(p, i) ((p)[i])
#define LOADV_WT(p, i) LOADV_ACC_ALIGNED(p, i)
#define STORE_WT(p, i, v) ((p)[i] = (v))
#define STOREV_WT(p, i, v) STOREV_ACC(p, i, v)
#else
#define VALUE_T T
#define WT_T T
#define LOAD_VALUE(p, i) LOAD(p, i)
#define LOADV_WT(p, i) LOADV_ALIGNED(p, i)
#define STORE_WT(p, i, v) STORE(p, i, v)
#define STOREV_WT(p, i, v) STOREV(p, i, v)
#endif

// wt[c / WB, tap, o, c % WB] = filters[tap, c, o] for c < COUT, 0 for COUT <= c < COUTP.
// With FORWARD_FILTERS the filters are the forward atrous_conv2d's,
// [KH, KW, CIN, COUT], and the taps are flipped: wt[c / WB, tap, o, c % WB] =
// filters[KH * KW - 1 - tap, o, c]. The kernel below then computes that
// forward convolution, given the crop pads (k - 1) * RATE - (TF's pad).
// After the weights, at FINITE, wt[FINITE + tap * COUTP + c] is 0 when every
// weight of tap and output channel c is finite, else NaN (w - w is NaN
// exactly for Inf and NaN): see zero_slots in the main kernel. At ZEROS, CIN
// zeros follow, which the main kernel reads for input columns outside value.
// Global size (WB / BC, COUTP / WB, KH * KW): a vector of BC output channels of a
// block, the block, the tap (no division by WB: clang pairs a / and %
// through an LLVM 'freeze', which Oclgrind's uninitialised-value checker
// cannot run). A work-item packs BC channels at once (one channel a
// work-item, 1x33x33 2048->256 took 3.7 ms on Intel's runtime).
#ifndef WB
#define WB COUTP
#endif
// Where the weights of output channel c0 (a multiple of WB) start: in blocks,
// (c0 / WB) * KH * KW * CIN * WB; in one row, c0 itself.
#if WB == COUTP
#define WT_BLOCK(c0) ((long)(c0))
#else
#define WT_BLOCK(c0) ((long)(c0) * KH * KW * CIN)
#endif
#define FINITE ((long)KH * KW * CIN * COUTP)
#define ZEROS (FINITE + (long)KH * KW * COUTP)
__kernel void repack_filters(__global const T *restrict filters, const long filters_off,
                             __global WT_T *restrict wt)
{
    const int lane = (int)get_global_id(0) * BC;  // the vector's first lane in its block
    const int c = (int)get_global_id(1) * WB + lane;
    const long tap = get_global_id(2);
    __global WT_T *to = wt + WT_BLOCK(c - lane) + lane;
    VACC finite = (VACC)0;
    for (int o = 0; o < CIN; ++o) {
        union { VACC v; ACC s[BC]; } w;
        LOAD_FILTER_LANES(w, filters, filters_off, tap, c, o);
        finite += w.v - w.v;
        STOREV_WT(to, (tap * CIN + o) * WB, w.v);
    }
    STOREV_WT(wt, FINITE + tap * COUTP + c, finite);
    if (tap == 0)
        for (int l = 0; l < BC; ++l)
            for (int o = c + l; o < CIN; o += COUTP)
                STORE_WT(wt, ZEROS + o, (ACC)0);
}

// Global size (COUTP / (BC * OV), PHASES * ceil(ceil(OW / RATE_W) / BW), N * OH),
// PHASES = min(RATE_W, OW): one work-item per tile of BW output pixels of one
// row that lie RATE_W apart (one phase sub-grid of the dilated kernel) times
// BC output channels. Pixel px of a tile reads, through tap b, input column
// jb + (px - b) * RATE_W, so the tile's taps of a row read only BW + KW - 1
// input values per channel, each loaded once and used for up to KW taps
// (a window in registers), where BW consecutive pixels would share none at a
// rate above 1 and load BW * KW.
//
// The pixel and tap loops are unrolled so that acc[] and the window stay in
// registers, and an interior tile reads its window at constant offsets from
// one pointer: PoCL 3.0's compiler otherwise keeps acc[] on the stack and
// computes every address, about 3x slower (Intel's runtime: 1.0-1.3x).
#define WIN (BW + KW - 1)

#ifndef OV
#define OV 1
#endif

// acc[px][v] += x[px - b + KW - 1] * w_a[tap b, channel o, vector v] for every
// tap b of the row.
#define TAPS_OF_WINDOW(x, w_a, o)                                               \
    _Pragma("unroll") for (int b = 0; b < KW; ++b) {                            \
        _Pragma("unroll") for (int v = 0; v < OV; ++v) {                        \
            const VACC w = LOADV_WT(w_a, ((long)b * CIN + (o)) * WB + v * BC);    \
            _Pragma("unroll") for (int px = 0; px < BW; ++px)                   \
                acc[px][v] += x[px - b + KW - 1] * w;                           \
        }                                                                       \
    }

// The n slots of a tile's row, input columns first + m * step, m < n, in the
// row at `row` (of value where row_inside): src[m] points at a slot's CIN
// inputs, or outside value at the CIN zeros repack_filters left at ZEROS.
#define ZERO_SLOTS(src, n, first, step)                                         \
    _Pragma("unroll") for (int m_ = 0; m_ < (n); ++m_) {                        \
        const long j_ = (first) + m_ * (step);                                  \
        src[m_] = row_inside && j_ >= 0 && j_ < W                               \
                      ? value + row + j_ * CIN                                  \
                      : (__global const VALUE_T *)wt + ZEROS;                   \
    }

// The same slots as offsets of their inputs, clamped into the row
// (col[m]), and whether each lies inside value (inside[m]).
#define CLAMPED_SLOTS(col, inside, n, first, step)                              \
    _Pragma("unroll") for (int m_ = 0; m_ < (n); ++m_) {                        \
        const long j_ = (first) + m_ * (step);                                  \
        inside[m_] = j_ >= 0 && j_ < W;                                         \
        col[m_] = row + clamp(j_, 0L, (long)W - 1) * CIN;                       \
    }

// Whether every weight of output channels c0 .. c0 + BC * OV, at every tap, is
// finite: from the notes repack_filters left at FINITE.
bool weights_finite(__global const WT_T *restrict wt, const int c0)
{
    VACC z = (VACC)0;
    for (long tap = 0; tap < KH * KW; ++tap)
#pragma unroll
        for (int v = 0; v < OV; ++v)
            z += LOADV_WT(wt, FINITE + tap * COUTP + c0 + v * BC);
#if BC == 1
    return z == (ACC)0;
#else
    union { VACC v; ACC s[BC]; } lanes = {z};
    ACC sum = 0;
#pragma unroll
    for (int cc = 0; cc < BC; ++cc)
        sum += lanes.s[cc];
    return sum == (ACC)0;
#endif
}

__kernel void atrous_conv2d_transpose(
    __global const VALUE_T *restrict value, const long value_off,
    __global const WT_T *restrict wt,
    __global T *restrict out, const long out_off,
    const int H, const int W, const int OH, const int OW)
{
    const int c0 = (int)get_global_id(0) * (BC * OV);
    const long phases = min(RATE_W, (long)OW);
    const long tile = (long)get_global_id(1) / phases;
    // q0 = the tile's first output column: its phase plus whole tiles of
    // that phase (a remainder written out: see Oclgrind in the README).
    const long q0 = (long)get_global_id(1) - tile * phases + tile * BW * RATE_W;
    const long row_id = get_global_id(2);  // n * OH + p
    const long n = row_id / OH;
    const int p = (int)(row_id - n * OH);

    VACC acc[BW][OV];
#pragma unroll
    for (int px = 0; px < BW; ++px)
#pragma unroll
        for (int v = 0; v < OV; ++v)
            acc[px][v] = (VACC)0;

    // Window slot m holds input column j_first + m * RATE_W; pixel px reads
    // slot px - b + KW - 1 through tap b.
    const long j_first = q0 + PAD_LEFT - (KW - 1) * RATE_W;
    const bool interior = j_first >= 0 && j_first + (WIN - 1) * RATE_W < W;
    // A border tile, where some slots lie outside value, must add no term
    // for them, not 0 * w, which is NaN for an Inf or NaN weight (the border
    // comment below). With every weight of the tile's channels finite, 0 * w
    // is a zero, and adding it changes no sum (an accumulator that starts at
    // +0 only ever holds -0 after an FMA whose product underflowed to -0;
    // such a zero may come out +0), so the slot may just hold 0: the same
    // loop as an interior tile. repack_filters left which weights are finite.
    //
    // FORWARD_FILTERS (the forward conv): every tap outside value is one of
    // TF's zero padding, which TF multiplies by the weight, so 0 * w is
    // exactly its term (NaN for an Inf or NaN weight): border slots and rows
    // outside value always read the zeros.
#ifdef FORWARD_FILTERS
    const bool zero_slots = true;
#else
    const bool zero_slots = !interior && weights_finite(wt, c0);
#endif

    for (int a = 0; a < KH; ++a) {
        const long i = p + PAD_TOP - a * RATE_H;
        const bool row_inside = i >= 0 && i < H;
#ifndef FORWARD_FILTERS
        if (!row_inside)
            continue;
#endif
        const long row = value_off + (n * H + (row_inside ? i : 0)) * (long)W * CIN;
        __global const WT_T *w_a = wt + WT_BLOCK(c0) + (long)a * KW * CIN * WB;
        if (interior && row_inside) {
            // Every slot's input column lies inside value.
            __global const VALUE_T *v = value + row + j_first * CIN;
            for (int o = 0; o < CIN; ++o) {
                ACC x[WIN];
#pragma unroll
                for (int m = 0; m < WIN; ++m)
                    x[m] = (ACC)LOAD_VALUE(v, m * RATE_W * CIN + o);
                TAPS_OF_WINDOW(x, w_a, o);
            }
        } else if (zero_slots) {
            // A slot outside value reads CIN zeros that repack_filters
            // left after the weights: the same loads as inside, no select
            // per channel (PoCL 3.1: B 21-26 -> 18-20 ms).
            __global const VALUE_T *src[WIN];
            ZERO_SLOTS(src, WIN, j_first, RATE_W);
            for (int o = 0; o < CIN; ++o) {
                ACC x[WIN];
#pragma unroll
                for (int m = 0; m < WIN; ++m)
                    x[m] = (ACC)LOAD_VALUE(src[m], o);
                TAPS_OF_WINDOW(x, w_a, o);
            }
        } else {
            // Border with a non-finite weight: a pixel whose input column
            // lies outside value gets no term at all (not 0 * w, which is
            // NaN for an Inf or NaN weight). Its address is clamped to a
            // valid one and its sum kept by a select, not a branch: PoCL
            // 1.3-1.5x faster on A, C and D, Intel's runtime the same or faster.
            long col[WIN];
            bool inside[WIN];
            CLAMPED_SLOTS(col, inside, WIN, j_first, RATE_W);
            for (int o = 0; o < CIN; ++o) {
                ACC x[WIN];
#pragma unroll
                for (int m = 0; m < WIN; ++m)
                    x[m] = (ACC)LOAD_VALUE(value, col[m] + o);
#pragma unroll
                for (int b = 0; b < KW; ++b) {
#pragma unroll
                    for (int v = 0; v < OV; ++v) {
                        const VACC w = LOADV_WT(w_a, ((long)b * CIN + o) * WB + v * BC);
#pragma unroll
                        for (int px = 0; px < BW; ++px) {
                            const VACC sum = acc[px][v] + x[px - b + KW - 1] * w;
                            acc[px][v] = inside[px - b + KW - 1] ? sum : acc[px][v];
                        }
                    }
                }
            }
        }
    }

    const long base = out_off + (row_id * OW + q0) * (long)COUT + c0;
#pragma unroll
    for (int px = 0; px < BW; ++px) {
        if (q0 + px * RATE_W < OW) {
#pragma unroll
            for (int v = 0; v < OV; ++v)
                STORE_CHANNELS(out, base + px * RATE_W * COUT + v * BC, acc[px][v], c0 + v * BC);
        }
    }
}

#ifdef CONSECUTIVE
// acc[px][v] += x[px] * w_ab[channel o, vector v] for the BW pixels of a tap.
#define PIXELS_OF_TAP(x, w_ab, o)                                               \
    _Pragma("unroll") for (int v = 0; v < OV; ++v) {                            \
        const VACC w = LOADV_WT(w_ab, (long)(o) * WB + v * BC);                 \
        _Pragma("unroll") for (int px = 0; px < BW; ++px)                       \
            acc[px][v] += x[px] * w;                                            \
    }

// The same sum with a tile of BW consecutive output pixels of a row (built
// with CONSECUTIVE): for rates large against the image, where a phase has a
// few columns (DeepLab's ASPP rates, 6 to 36, on feature maps of 33 or 65
// pixels), so its tiles above are narrow, most of their window's slots lie
// outside value, and their taps multiply zeros. Tap b of pixel px reads input
// column j0 + px, j0 = q0 + PAD_LEFT - b * RATE_W: a tap whose BW columns (or
// row) all lie outside value is skipped, one whose columns all lie inside
// reads BW consecutive inputs, and one across the border reads CIN zeros for
// its outside pixels, or, with a non-finite weight, adds no term for them by a
// select, as the border tiles above do. The forward conv (FORWARD_FILTERS)
// skips taps outside value only where the tile's weights are all finite: its
// terms there are 0 * w, which add nothing then (and NaN else).
// Terms are added by tap rows, tap columns, input channels.
// Global size (COUTP / (BC * OV), ceil(OW / BW), N * OH).
__kernel void atrous_conv2d_transpose_rows(
    __global const VALUE_T *restrict value, const long value_off,
    __global const WT_T *restrict wt,
    __global T *restrict out, const long out_off,
    const int H, const int W, const int OH, const int OW)
{
    const int c0 = (int)get_global_id(0) * (BC * OV);
    const long q0 = (long)get_global_id(1) * BW;
    const long row_id = get_global_id(2);  // n * OH + p
    const long n = row_id / OH;
    const int p = (int)(row_id - n * OH);

    VACC acc[BW][OV];
#pragma unroll
    for (int px = 0; px < BW; ++px)
#pragma unroll
        for (int v = 0; v < OV; ++v)
            acc[px][v] = (VACC)0;

#ifdef FORWARD_FILTERS
    const bool skip_outside = weights_finite(wt, c0);
    const bool zero_slots = true;
#else
    const bool skip_outside = true;
    // Some tap of the tile crosses the border: whether its outside pixels may
    // read zeros (every weight finite), as zero_slots above.
    const bool border = q0 + PAD_LEFT - (KW - 1) * RATE_W < 0 || q0 + BW - 1 + PAD_LEFT >= W;
    const bool zero_slots = !border || weights_finite(wt, c0);
#endif

    for (int a = 0; a < KH; ++a) {
        const long i = p + PAD_TOP - a * RATE_H;
        const bool row_inside = i >= 0 && i < H;
        if (!row_inside && skip_outside)
            continue;
        const long row = value_off + (n * H + (row_inside ? i : 0)) * (long)W * CIN;
        for (int b = 0; b < KW; ++b) {
            const long j0 = q0 + PAD_LEFT - b * RATE_W;
            const bool none_inside = !row_inside || j0 >= W || j0 + BW <= 0;
            if (none_inside && skip_outside)
                continue;
            __global const WT_T *w_ab = wt + WT_BLOCK(c0) + ((long)a * KW + b) * CIN * WB;
            if (row_inside && j0 >= 0 && j0 + BW <= W) {
                __global const VALUE_T *v = value + row + j0 * CIN;
                for (int o = 0; o < CIN; ++o) {
                    ACC x[BW];
#pragma unroll
                    for (int px = 0; px < BW; ++px)
                        x[px] = (ACC)LOAD_VALUE(v, px * CIN + o);
                    PIXELS_OF_TAP(x, w_ab, o);
                }
            } else if (zero_slots) {
                __global const VALUE_T *src[BW];
                ZERO_SLOTS(src, BW, j0, 1);
                for (int o = 0; o < CIN; ++o) {
                    ACC x[BW];
#pragma unroll
                    for (int px = 0; px < BW; ++px)
                        x[px] = (ACC)LOAD_VALUE(src[px], o);
                    PIXELS_OF_TAP(x, w_ab, o);
                }
            } else {
                // Transpose only (the forward conv always has zero_slots).
                long col[BW];
                bool inside[BW];
                CLAMPED_SLOTS(col, inside, BW, j0, 1);
                for (int o = 0; o < CIN; ++o) {
#pragma unroll
                    for (int v = 0; v < OV; ++v) {
                        const VACC w = LOADV_WT(w_ab, (long)o * WB + v * BC);
#pragma unroll
                        for (int px = 0; px < BW; ++px) {
                            const VACC sum = acc[px][v] + (ACC)LOAD_VALUE(value, col[px] + o) * w;
                            acc[px][v] = inside[px] ? sum : acc[px][v];
                        }
                    }
                }
            }
        }
    }

    const long base = out_off + (row_id * OW + q0) * (long)COUT + c0;
#pragma unroll
    for (int px = 0; px < BW; ++px) {
        if (q0 + px < OW) {
#pragma unroll
            for (int v = 0; v < OV; ++v)
                STORE_CHANNELS(out, base + px * COUT + v * BC, acc[px][v], c0 + v * BC);
        }
    }
}

#endif  // CONSECUTIVE

#ifdef VW
// One input and one output channel (CIN = COUT = 1), built with VW: a
// work-item computes VW consecutive output pixels of one row as a vector.
// A tap then reads VW consecutive inputs with one vector load, where the
// register tiles above, vectorised over output channels, would run scalar
// (a one-channel 128x128 image on Intel's runtime: 56 us in the kernel).
// Global size (ceil(OW / VW), N * OH). The sum runs over the taps in the
// same order as the main kernel's; a lane whose input lies outside value
// adds no term (FORWARD_FILTERS: 0 * w, TF's zero padding), as above.
#define VX CAT(ACC, VW)
#if defined(USE_HALF) && !defined(WIDE_INPUTS)
#define LOAD_PIXELS(p, i) CAT(vload_half, VW)(0, (p) + (i))
#elif defined(__clang__)
typedef VX __attribute__((aligned(sizeof(ACC)))) vx_unaligned;
#define LOAD_PIXELS(p, i) (*(__global const vx_unaligned *)((p) + (i)))
#else
#define LOAD_PIXELS(p, i) CAT(vload, VW)(0, (p) + (i))
#endif
#ifdef USE_HALF
#define STORE_PIXELS(p, i, v) CAT(vstore_half, VW)((v), 0, (p) + (i))
#else
#define STORE_PIXELS(p, i, v) CAT(vstore, VW)((v), 0, (p) + (i))
#endif

__kernel void atrous_conv2d_transpose_pixels(
    __global const VALUE_T *restrict value, const long value_off,
    __global const WT_T *restrict wt,
    __global T *restrict out, const long out_off,
    const int H, const int W, const int OH, const int OW)
{
    const long q0 = (long)get_global_id(0) * VW;
    const long row_id = get_global_id(1);  // n * OH + p
    const long n = row_id / OH;
    const int p = (int)(row_id - n * OH);
    VX acc = (VX)0;
    for (int a = 0; a < KH; ++a) {
        const long i = p + PAD_TOP - a * RATE_H;
        const bool row_inside = i >= 0 && i < H;
#ifndef FORWARD_FILTERS
        if (!row_inside)
            continue;
#endif
        const long row = value_off + (n * H + (row_inside ? i : 0)) * (long)W;
#pragma unroll
        for (int b = 0; b < KW; ++b) {
            const ACC w = (ACC)LOAD_VALUE(wt, a * KW + b);  // COUTP = 1: tap a, b
            const long j0 = q0 + PAD_LEFT - b * RATE_W;
            if (row_inside && j0 >= 0 && j0 + VW <= W) {
                acc += LOAD_PIXELS(value, row + j0) * w;
            } else {
                // Border lanes: their products in a private array, added as one
                // vector; a lane outside adds -0, which leaves any sum as it is (no
                // term: +0 would turn an FMA's -0 into +0). Each product rounds
                // before it is added. Adding them lane by lane to a union with acc
                // kept acc in memory: F's kernel took 1.4-2.3x as long in float32
                // and float64 (PoCL 3.0, Intel's runtime; benchmarks/one_channel.py,
                // 2-core EPYC).
                ACC t[VW];
                for (int k = 0; k < VW; ++k) {
                    const long j = j0 + k;
                    const bool inside = row_inside && j >= 0 && j < W;
#ifdef FORWARD_FILTERS
                    t[k] = (inside ? (ACC)LOAD_VALUE(value, row + j) : (ACC)0) * w;
#else
                    t[k] = inside ? (ACC)LOAD_VALUE(value, row + j) * w : (ACC)-0.0;
#endif
                }
                acc += CAT(vload, VW)(0, t);
            }
        }
    }
    const long base = out_off + row_id * OW + q0;
    if (q0 + VW <= OW) {
        STORE_PIXELS(out, base, acc);
    } else {
        ACC t[VW];
        CAT(vstore, VW)(acc, 0, t);
        for (int k = 0; q0 + k < OW; ++k)
            STORE(out, base + k, t[k]);
    }
}
#endif
