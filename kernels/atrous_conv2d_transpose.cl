// SPDX-License-Identifier: Apache-2.0
//
// Transposed atrous (dilated) 2-D convolution, stride 1, TF semantics.
//
//   out[n, p, q, c] = sum_{a, b, o} value[n, p + PAD_TOP - a*RATE, q + PAD_LEFT - b*RATE, o]
//                                   * filters[a, b, c, o]
//
// over the taps whose input pixel lies inside value. value and out are NHWC,
// filters [KH, KW, COUT, CIN], all C-contiguous from the given element offset.
// This is the gather form of the scatter in atrous_cl/reference.py.
//
// Each work-item computes a register tile of BW consecutive output pixels of
// one row times BC consecutive output channels, so every value load feeds BC
// multiply-adds and every filter load BW.
//
// Build options (-D):
//   T      storage type: float, double or half (half is storage only, read and
//          written with vload_half/vstore_half, so it needs no cl_khr_fp16)
//   ACC    accumulation type (float for half storage)
//   BW, BC tile size in output pixels and output channels
//   USE_FP64  defined when T or ACC is double
// Offsets are 64-bit, so tensors past 2^31 elements index correctly.

#ifdef USE_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

#ifdef USE_HALF
#define LOAD(p, i) vload_half((i), (p))
#define STORE(p, i, v) vstore_half((v), (i), (p))
#else
#define LOAD(p, i) ((ACC)(p)[i])
#define STORE(p, i, v) ((p)[i] = (T)(v))
#endif

// acc[px][:] += value[pixel px, :] . filters[tap, chan, :] for the pixels
// where PIXEL_OK holds; the body of the tap loop, written once for the
// interior tiles (PIXEL_OK = true, no per-pixel test) and the border ones.
#define ACCUMULATE_TAP(PIXEL_OK)                                              \
    for (int o = 0; o < CIN; ++o) {                                          \
        ACC w[BC];                                                           \
        for (int cc = 0; cc < BC; ++cc)                                      \
            w[cc] = LOAD(filters, tap + chan[cc] + o);                       \
        for (int px = 0; px < BW; ++px) {                                    \
            if (PIXEL_OK) {                                                  \
                const ACC v = LOAD(value, col[px] + o);                      \
                for (int cc = 0; cc < BC; ++cc)                              \
                    acc[px][cc] += v * w[cc];                                \
            }                                                                \
        }                                                                    \
    }

__kernel void atrous_conv2d_transpose(
    __global const T *restrict value, const long value_off,
    __global const T *restrict filters, const long filters_off,
    __global T *restrict out, const long out_off,
    const int H, const int W, const int CIN, const int COUT,
    const int KH, const int KW, const int RATE,
    const int PAD_TOP, const int PAD_LEFT, const int OH, const int OW)
{
    const int c0 = (int)get_global_id(0) * BC;
    const int q0 = (int)get_global_id(1) * BW;
    const long row_id = get_global_id(2);  // n * OH + p
    // The global size is rounded up to whole tiles.
    if (c0 >= COUT || q0 >= OW) return;
    const long n = row_id / OH;
    const int p = (int)(row_id - n * OH);

    ACC acc[BW][BC];
    for (int px = 0; px < BW; ++px)
        for (int cc = 0; cc < BC; ++cc)
            acc[px][cc] = (ACC)0;

    // Channels past COUT in the last tile read channel COUT-1; their sums are
    // never stored. Clamping keeps every load in bounds without branches.
    long chan[BC];
    for (int cc = 0; cc < BC; ++cc)
        chan[cc] = (long)min(c0 + cc, COUT - 1) * CIN;

    for (int a = 0; a < KH; ++a) {
        const int i = p + PAD_TOP - a * RATE;
        if (i < 0 || i >= H) continue;
        const long row = value_off + (n * H + i) * (long)W * CIN;
        for (int b = 0; b < KW; ++b) {
            const int j0 = q0 + PAD_LEFT - b * RATE;
            // Pixels whose input column falls outside value get no term at
            // all from this tap (not 0 * w, which is NaN for an Inf or NaN
            // weight). Their loads use a clamped, valid address.
            long col[BW];
            bool inside[BW];
            bool all_inside = true;
            for (int px = 0; px < BW; ++px) {
                const int j = j0 + px;
                inside[px] = j >= 0 && j < W;
                all_inside = all_inside && inside[px];
                col[px] = row + (long)clamp(j, 0, W - 1) * CIN;
            }
            const long tap = filters_off + (long)(a * KW + b) * COUT * CIN;
            if (all_inside) {
                ACCUMULATE_TAP(true)
            } else {
                ACCUMULATE_TAP(inside[px])
            }
        }
    }

    const long base = out_off + (row_id * OW + q0) * (long)COUT + c0;
    for (int px = 0; px < BW; ++px) {
        if (q0 + px >= OW) break;
        for (int cc = 0; cc < BC; ++cc)
            if (c0 + cc < COUT)
                STORE(out, base + (long)px * COUT + cc, acc[px][cc]);
    }
}
