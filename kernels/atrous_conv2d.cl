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
//   KT         filter gradient: taps of a filter row per work-item, sharing
//              each load of d (default 1; it divides KW)
//   CB         filter gradient with XPACK: groups of GC input channels per
//              work-item, one after another on each row of d, which stays in
//              L1 for them (default 1)
//   CIN, COUT, COUTP, KH, KW, RATE_H, RATE_W, PAD_TOP, PAD_LEFT
//              the channel counts, kernel, rate and pads, baked in so the
//              compiler can unroll the tap and channel loops; long literals
//              per axis, as in atrous_conv2d_transpose.cl
//   WIDE_INPUTS  filter gradient: x and d come widened to ACC (float16 on
//              CPUs, by prelude.cl's widen), so the inner loop converts
//              nothing; dfilters is still stored as T
//   XPACK      filter gradient: x comes packed by pack_x (GC input channels
//              of a pixel next to the next pixel's, rows padded with TF's
//              zeros to every column a tap reads), from element 0
//   DPACK      filter gradient: d comes packed by pack_d (each work-item's
//              BC * OV output channels of a pixel next to the next pixel's,
//              zeros past COUT), from element 0
//   ONE_CHUNK  filter gradient in one chunk of rows: filter_grad_partial
//              stores dfilters itself (T, from its offset), no
//              filter_grad_sum
// Spatial sizes stay run-time arguments. Offsets are 64-bit.

// The type and vector macros (LOAD, STOREV, VACC, ...) come from prelude.cl.

// A vector whose lanes are a lane-wise view, for the ragged last channel tile.
typedef union { VACC v; ACC s[BC]; } lanes_t;

// stmt for each element [k][g][v] of a filter-gradient register tile, the loops
// unrolled (see filter_grad_partial).
#define FOR_TILE(stmt)                                                         \
    _Pragma("unroll") for (int k = 0; k < KT; ++k)                             \
    _Pragma("unroll") for (int g = 0; g < GC; ++g)                             \
    _Pragma("unroll") for (int v = 0; v < OV; ++v)                             \
        stmt

#ifndef OV
#define OV 1
#endif
#ifndef KT
#define KT 1
#endif
#ifndef CB
#define CB 1
#endif
#ifdef ONE_CHUNK
#define PARTIAL_T T
#else
#define PARTIAL_T ACC
#endif
#if CB > 1 && !defined(XPACK)
#error "CB > 1 needs XPACK"
#endif

// x's channel groups of GC (the last ragged) in pack_x's layout, and its rows'
// width for d's width WD: columns -PAD_LEFT .. WD - 1 + (KW - 1) * RATE_W - PAD_LEFT
// of x, every one a tap reads. XSTRIDE: the elements from a pixel of x to the
// next; XCH(g): where a work-item's input channel c0 + g lies in its pixel
// (cc[g], clamped to CIN - 1, unpacked).
#define CG ((CIN + GC - 1) / GC)
#define PACKED_W(WD) ((WD) + (KW - 1) * RATE_W)
#ifdef XPACK
#define XSTRIDE GC
#define XCH(g) (g)
#else
#define XSTRIDE CIN
#define XCH(g) cc[g]
#endif

// d's groups of BC * OV output channels, one a work-item (axis 0), in pack_d's
// layout; DSTRIDE: the elements from a pixel of d to the next; DROW(r): where
// row r of d starts for the work-item's output channels o0.
#define OB (BC * OV)
#define OG ((COUTP / BC + OV - 1) / OV)
#ifdef DPACK
#define DSTRIDE OB
#define DROW(r) (((r) * OG + o0 / OB) * (long)WD * OB)
#define WHOLE_V(v) true
#else
#define DSTRIDE COUT
#define DROW(r) (d_off + (r) * (long)WD * COUT + o0)
#define WHOLE_V(v) (o0 + ((v) + 1) * BC <= COUT)
#endif

#ifdef WIDE_INPUTS
#define IN_T ACC
#define LOAD_IN(p, i) ((p)[i])
#define LOADV_IN(p, i) LOADV_ACC_UNALIGNED(p, i)
#define STORE_IN(p, i, v) ((p)[i] = (v))
#else
#define IN_T T
#define LOAD_IN(p, i) LOAD(p, i)
#define LOADV_IN(p, i) LOADV_UNALIGNED(p, i)
#define STORE_IN(p, i, v) STORE(p, i, v)
#endif

// partial[s, tap, c, o] = the filter gradient's sum over the rows
// r = n * HD + i in [s * rows_per_chunk, (s + 1) * rows_per_chunk), in order.
// x is [N, HX, WX, CIN], d [N, HD, WD, COUT]; partial is ACC, [S, KH * KW,
// CIN, COUTP] (lanes past COUT hold garbage that filter_grad_sum skips), from
// partial_off = 0. With ONE_CHUNK (S = 1) it is dfilters itself, T, [KH * KW,
// CIN, COUT] from partial_off: filter_grad_sum would copy one sum (a launch
// that costs PyPI's PoCL about 50 us).
// Global size (ceil(COUTP / (BC * OV)), ceil(CIN / (GC * CB)), KH * (KW / KT) * S).
//
// A work-item keeps a register tile of KT taps x GC input channels x OV
// vectors of BC output channels: per pixel, OV vector loads of d and KT * GC
// of x feed KT * GC * OV multiply-adds (one vector, OV = 1, left the loads as
// many as the multiply-adds: B's filter gradient took 1.8x the transpose
// kernel's time). The KT taps of a filter row read the same pixel of d.
// With CB > 1 (x packed), a work-item takes CB groups of GC input channels in
// turn over each row of d, their register tiles kept in private memory
// between rows: the row's d, loaded from L2 for the first group, is in L1 for
// the others (one work-item a group streamed all its rows of d from L2 for
// every group).
// BC output channels of d from element at (lanes past COUT read as 0: they
// would read the next pixel, or past the buffer).
inline VACC load_d(__global const IN_T *restrict d, const long at, const int o0,
                   const bool whole_o)
{
    if (whole_o)
        return LOADV_IN(d, at);
    lanes_t lanes;
    for (int k = 0; k < BC; ++k)
        lanes.s[k] = o0 + k < COUT ? (ACC)LOAD_IN(d, at + k) : (ACC)0;
    return lanes.v;
}

// pad[v] = the sum of d - d over the columns [0, lo) and [hi, WD) of d's row
// at drow: TF's zero padding times d (0, or NaN where d is Inf or NaN).
inline void padding_terms(__global const IN_T *restrict d, const long drow, const int o0,
                          const int lo, const int hi, const int WD, VACC *pad)
{
#pragma unroll
    for (int v = 0; v < OV; ++v)
        pad[v] = (VACC)0;
    for (int j = 0; j < WD; ++j) {
        if (j == lo)
            j = hi;
        if (j >= WD)
            break;
#pragma unroll
        for (int v = 0; v < OV; ++v) {
            const VACC dv = load_d(d, drow + (long)j * DSTRIDE + v * BC, o0 + v * BC,
                                   WHOLE_V(v));
            pad[v] += dv - dv;
        }
    }
}

__kernel void filter_grad_partial(
    __global const IN_T *restrict x, const long x_off,
    __global const IN_T *restrict d, const long d_off,
    __global PARTIAL_T *restrict partial, const long partial_off,
    const int HX, const int WX, const int HD, const int WD,
    const long rows, const long rows_per_chunk)
{
    const int o0 = (int)get_global_id(0) * (BC * OV);
    const int c0 = (int)get_global_id(1) * (GC * CB);
    // Remainders written out: a '%' next to its '/' makes clang pair them
    // through an LLVM 'freeze', which Oclgrind's uninitialised-value checker
    // cannot run.
    const long s = get_global_id(2) / (KH * (KW / KT));
    const int group = (int)(get_global_id(2) - s * (KH * (KW / KT)));
    const int ta = group / (KW / KT);
    const int b0 = (group - ta * (KW / KT)) * KT;
    const long di = ta * RATE_H - PAD_TOP;                 // x row of d's row i: i + di
    // Tap b0 + k reads x column j + dj[k] for d's column j, inside x for j in
    // [lo[k], hi[k]); every tap of the group for j in [j0, j1), the shared
    // loop. No test per pixel.
    long dj[KT];
    int lo[KT], hi[KT];
    int j0 = 0, j1 = WD;
#pragma unroll
    for (int k = 0; k < KT; ++k) {
#ifdef XPACK
        // pack_x's row holds every column a tap reads, TF's zeros outside x,
        // whose 0 * d terms (NaN for an Inf or NaN d) the loop over all of d's
        // columns then adds: no fringes, no padding terms.
        dj[k] = (b0 + k) * RATE_W;
        lo[k] = 0;
        hi[k] = WD;
#else
        dj[k] = (b0 + k) * RATE_W - PAD_LEFT;
        lo[k] = (int)clamp(-dj[k], 0L, (long)WD);
        hi[k] = (int)clamp(WX - dj[k], 0L, (long)WD);
#endif
        j0 = max(j0, lo[k]);
        j1 = min(j1, hi[k]);
    }
    j1 = max(j0, j1);
    // Every vector of the tile whole (the usual case): one test per pixel, not OV.
#ifdef DPACK
    const bool whole_o = true;  // pack_d's zeros fill the lanes past COUT
#else
    const bool whole_o = o0 + BC * OV <= COUT;
#endif

    // Input channels past CIN (the last, ragged tile) read channel CIN - 1
    // into lanes that are never stored.
    int cc[GC];
#pragma unroll
    for (int g = 0; g < GC; ++g)
        cc[g] = min(c0 + g, CIN - 1);

    // Unrolled loops keep acc[][][] in registers (see atrous_conv2d_transpose.cl).
    // Each kept 0 + its sum (+0 for a sum of -0 terms, as every sum had
    // before taps shared their loads).
    VACC acc[KT][GC][OV];
    FOR_TILE(acc[k][g][v] = (VACC)0);
#if CB > 1
    // With CB groups, each group's tile waits in private memory between rows
    // (TILE(cb)); groups past x's last (a ragged CIN) are skipped. With one,
    // acc is the only tile: a private array there made Intel's compiler run
    // float64 4.4x slower.
    VACC accs[CB][KT][GC][OV];
    const int groups = min(CB, CG - c0 / GC);
    for (int cb = 0; cb < CB; ++cb)
        FOR_TILE(accs[cb][k][g][v] = acc[k][g][v]);
#define TILE(cb) accs[cb]
#else
    const int groups = 1;
#define TILE(cb) acc
#endif

    const long r_end = min(rows, (s + 1) * rows_per_chunk);
    for (long r = s * rows_per_chunk; r < r_end; ++r) {
        const long n = r / HD;
        const long ix = (r - n * HD) + di;
        const long drow = DROW(r);
        if (ix < 0 || ix >= HX) {
            // The whole row reads TF's zero padding, which TF multiplies by
            // d: the same term for every input channel and tap.
            VACC pad[OV];
            padding_terms(d, drow, o0, WD, WD, WD, pad);
            for (int cb = 0; cb < groups; ++cb)
                FOR_TILE(TILE(cb)[k][g][v] += pad[v]);
            continue;
        }
#if CB > 1
        for (int cb = 0; cb < groups; ++cb) {
        FOR_TILE(acc[k][g][v] = accs[cb][k][g][v]);
#else
        {
        const int cb = 0;
#endif
#ifdef XPACK
        const long xrow = ((n * HX + ix) * CG + c0 / GC + cb) * PACKED_W((long)WD) * GC;
#else
        const long xrow = x_off + (n * HX + ix) * WX * (long)CIN;
#endif
        // The columns every tap reads inside x: one load of d serves KT taps.
        for (int j = j0; j < j1; ++j) {
            VACC dv[OV];
            if (whole_o) {
#pragma unroll
                for (int v = 0; v < OV; ++v)
                    dv[v] = LOADV_IN(d, drow + (long)j * DSTRIDE + v * BC);
            } else {
#pragma unroll
                for (int v = 0; v < OV; ++v)
                    dv[v] = load_d(d, drow + (long)j * DSTRIDE + v * BC, o0 + v * BC,
                                   WHOLE_V(v));
            }
#pragma unroll
            for (int k = 0; k < KT; ++k) {
                const long xp = xrow + (j + dj[k]) * XSTRIDE;
#pragma unroll
                for (int g = 0; g < GC; ++g) {
                    const ACC xg = (ACC)LOAD_IN(x, xp + XCH(g));
#pragma unroll
                    for (int v = 0; v < OV; ++v)
                        acc[k][g][v] += xg * dv[v];
                }
            }
        }
#ifndef XPACK
        // Each tap's other columns: inside x in [lo, j0) and [j1, hi) (empty
        // with one tap a group), its zero padding in [0, lo) and [hi, WD).
        // None with x packed, whose rows hold every column a tap reads.
#pragma unroll
        for (int k = 0; k < KT; ++k) {
            const int inside_end = min(j0, hi[k]);
            const int inside_start = max(j1, lo[k]);
            for (int j = lo[k]; j < WD; ++j) {
                if (j == inside_end)
                    j = max(j, inside_start);
                if (j >= hi[k])
                    break;
                const long xp = xrow + (j + dj[k]) * XSTRIDE;
#pragma unroll
                for (int v = 0; v < OV; ++v) {
                    const VACC dv = load_d(d, drow + (long)j * DSTRIDE + v * BC, o0 + v * BC,
                                           WHOLE_V(v));
#pragma unroll
                    for (int g = 0; g < GC; ++g)
                        acc[k][g][v] += (ACC)LOAD_IN(x, xp + XCH(g)) * dv;
                }
            }
            if (lo[k] > 0 || hi[k] < WD) {
                VACC pad[OV];
                padding_terms(d, drow, o0, lo[k], hi[k], WD, pad);
#pragma unroll
                for (int g = 0; g < GC; ++g)
#pragma unroll
                    for (int v = 0; v < OV; ++v)
                        acc[k][g][v] += pad[v];
            }
        }
#endif
#if CB > 1
        FOR_TILE(accs[cb][k][g][v] = acc[k][g][v]);
#endif
        }
    }

#pragma unroll
    for (int v = 0; v < OV; ++v) {
        const int ov = o0 + v * BC;
        if (ov >= COUTP)
            break;
        for (int cb = 0; cb < groups; ++cb)
#pragma unroll
        for (int k = 0; k < KT; ++k) {
#ifdef ONE_CHUNK
            const long base = partial_off + ((ta * KW + b0 + k) * (long)CIN + c0 + cb * GC)
                              * COUT + ov;
#pragma unroll
            for (int g = 0; g < GC; ++g)
                if (c0 + cb * GC + g < CIN)
                    STORE_CHANNELS(partial, base + (long)g * COUT, TILE(cb)[k][g][v] + (VACC)0,
                                   ov);
#else
            const long base = ((s * KH * KW + ta * KW + b0 + k) * CIN + c0 + cb * GC)
                              * (long)COUTP + ov;
#pragma unroll
            for (int g = 0; g < GC; ++g)
                if (c0 + cb * GC + g < CIN)
                    STOREV_ACC_ALIGNED(partial, base + (long)g * COUTP,
                                       TILE(cb)[k][g][v] + (VACC)0);
#endif
        }
    }
}

// Where channel c of a pixel goes in pack_x's copy, from the pixel's first: its
// group's row, then its place in the group (the remainder written out, as in
// filter_grad_partial).
#define PACKED_AT(c, width) ((c) / GC * (width) * GC + ((c) - (c) / GC * GC))

// xp[((n * HX + i) * CG + cg) * PACKED_W(WD) + p][g] = x[n, i, p - PAD_LEFT, cg * GC + g]
// (ACC with WIDE_INPUTS), 0 where that column lies outside x; channels past CIN
// read as channel CIN - 1 (their lanes are never stored): for XPACK. Global size
// (PACKED_W(WD), N * HX).
__kernel void pack_x(__global const T *restrict x, const long x_off,
                     __global IN_T *restrict xp, const int WX, const int WD)
{
    const long p = get_global_id(0);
    const long row = get_global_id(1);
    const long width = PACKED_W((long)WD);
    const long j = p - PAD_LEFT;
    __global IN_T *to = xp + row * CG * width * GC + p * GC;
    if (j < 0 || j >= WX) {
        for (int cg = 0; cg < CG; ++cg)
#pragma unroll
            for (int g = 0; g < GC; ++g)
                STORE_IN(to, cg * width * GC + g, (ACC)0);
        return;
    }
    const long from = x_off + (row * WX + j) * CIN;
    // The whole groups without a clamp; then a ragged last one, its channels
    // past CIN reading CIN - 1. float16 is loaded 8 channels at once (converted
    // one at a time it ran at a fifth of a copy's speed).
    int c = 0;
#ifdef USE_HALF
    for (; c + 8 <= CIN / GC * GC; c += 8) {
        const union { float8 v; float s[8]; } eight = {vload_half8(0, x + from + c)};
#pragma unroll
        for (int k = 0; k < 8; ++k)
            STORE_IN(to, PACKED_AT(c + k, width), eight.s[k]);
    }
#endif
    for (; c < CIN / GC * GC; ++c)
        STORE_IN(to, PACKED_AT(c, width), (ACC)LOAD(x, from + c));
#if CIN % GC
#pragma unroll
    for (int g = 0; g < GC; ++g)
        STORE_IN(to, (CG - 1) * width * GC + g,
                 (ACC)LOAD(x, from + min((CG - 1) * GC + g, CIN - 1)));
#endif
}

// dp[((r * OG + og) * WD + j) * OB + k] = d[r, j, og * OB + k] (ACC with
// WIDE_INPUTS) for rows r = n * HD + i, 0 past COUT: for DPACK. Each work-item
// of filter_grad_partial then reads its rows' output channels from one run of
// memory, not a line a pixel of d apart (COUT * 4 bytes, 8 KiB at 2048
// channels: every pixel of a row in the same few sets of L1). Global size
// (OG, WD, N * HD).
__kernel void pack_d(__global const T *restrict d, const long d_off,
                     __global IN_T *restrict dp, const int WD)
{
    const int og = (int)get_global_id(0);
    const long j = get_global_id(1);
    const long r = get_global_id(2);
    const long from = d_off + (r * WD + j) * COUT + og * OB;
    __global IN_T *to = dp + ((r * OG + og) * WD + j) * OB;
    if (og * OB + OB <= COUT) {
        int k = 0;
#ifdef USE_HALF
        // 8 halves at once, as pack_x
        for (; k + 8 <= OB; k += 8) {
            const union { float8 v; float s[8]; } eight = {vload_half8(0, d + from + k)};
#pragma unroll
            for (int e = 0; e < 8; ++e)
                STORE_IN(to, k + e, eight.s[e]);
        }
#endif
#pragma unroll
        for (; k < OB; ++k)
            STORE_IN(to, k, (ACC)LOAD(d, from + k));
    } else {
        for (int k = 0; k < OB; ++k)
            STORE_IN(to, k, og * OB + k < COUT ? (ACC)LOAD(d, from + k) : (ACC)0);
    }
}

// dfilters[tap, c, o] = sum over s = 0, 1, ..., S - 1 of partial[s, tap, c, o],
// BC output channels a work-item (partial's rows are COUTP long, so its vector
// loads are aligned; lanes past COUT are not stored). Global size
// (COUTP / BC, CIN, KH * KW).
__kernel void filter_grad_sum(__global const ACC *restrict partial, const int S,
                              __global T *restrict dfilters, const long dfilters_off)
{
    const int o = (int)get_global_id(0) * BC;
    const int c = (int)get_global_id(1);
    const long tap = get_global_id(2);
    const long stride = (long)KH * KW * CIN * COUTP;
    long k = (tap * CIN + c) * COUTP + o;
    VACC sum = LOADV_ACC_ALIGNED(partial, k);
    for (int s = 1; s < S; ++s)
        sum += LOADV_ACC_ALIGNED(partial, k += stride);
    STORE_CHANNELS(dfilters, dfilters_off + (tap * CIN + c) * COUT + o, sum, o);
}
