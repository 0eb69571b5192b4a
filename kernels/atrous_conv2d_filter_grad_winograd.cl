// SPDX-License-Identifier: Apache-2.0
//
// The filter gradient of kernels/atrous_conv2d.cl for 3x3 filters, by Winograd's
// minimal filtering F(3x3, 2x2) on the phase sub-grids: the same sum,
//
//   dfilters[a, b, c, o] = sum_{n, i, j} x[n, i - PAD_TOP + a*RATE_H, j - PAD_LEFT + b*RATE_W, c]
//                                        * d[n, i, j, o]
//
// (TF's zero padding where the input pixel lies outside x), with 16 multiplies
// per input and output channel for every 2x2 pixels of d where the direct
// kernel takes 36.
//
// The pixels of d of one phase, i = ph + RATE_H * I, read the rows of x
// ph - PAD_TOP + RATE_H * (I + a) only: on that sub-grid, x'[I'] = x[ph -
// PAD_TOP + RATE_H * I'] and d'[I] = d[ph + RATE_H * I], the sum is the
// undilated correlation sum_I d'[I] x'[I + a]. A tile of 2x2 pixels of d' (rows
// and columns 2 I0 + {0, 1}) meets the 4x4 pixels of x' from (2 I0, 2 J0), and
// F(2x2, 3x3)'s bilinear form, Y = A^T [(G g G^T) . (B^T X B)] A, read
// backwards gives its part of the filter gradient:
//
//   dG = G^T [sum over tiles of (A D A^T) . (B^T X B)] G
//
// with D the tile of d' and X the one of x'. The sum over tiles is 16 products
// of matrices (input x output channels, over the tiles), and the output
// transform G^T M G runs once, on the sums. Tiles past d's edge read zeros
// there (and in x outside x), which add nothing to finite sums.
//
// Kernels, in order (atrous_cl.filter_grad.winograd_launch):
//   wgrad_x         xt[k][t][c] = (B^T X B)[k] of tile t, input channel c
//   wgrad_d         dt[k][ob][t][w] = (A D A^T)[k] of tile t, output channel ob * WB + w
//   wgrad_products  partial[s][k][c][o] = sum over the tiles of chunk s of
//                   xt[k][t][c] * dt[k][..][t][o]: a register tile of GC
//                   input channels x OV vectors of BC output channels, as
//                   filter_grad_partial's (GC + OV loads feed GC * OV
//                   multiply-adds), the tiles streamed in order
//   wgrad_out       the chunks' sums in order, G^T M G, the fallback and the store
// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A = [1 0; 1 1; 1 -1; 0 -1],
// G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1]. Tiles t run over (n, ph, bh,
// pw, bw), bw fastest: per axis, PH = min(RATE, HD) phases of B = ceil(ceil(HD /
// RATE) / 2) tiles (phase 0's, the most any phase has).
//
// Non-finite values: an output whose Winograd value is not finite is
// recomputed by the direct sum over the same terms (direct_sum). That is
// exact: a non-finite term x * d of the direct sum (a non-finite x or d; 0 * d
// for TF's padding with a non-finite d) always gives a non-finite Winograd
// value. (Not the other way round where float32 products overflow and cancel:
// x of 1e20 times d of 1e20 and -1e20 side by side gave the direct kernel Inf
// and Winograd 0, the float64 reference's value.) For tap a and the term's pixel i in {0, 1} of its tile (so x' pixel
// m = i + a of the window), some k has B^T[k][m], A[k][i] and G^T[a][k] all
// non-zero (a = 0: k = 0 for i = 0, 1 or 2 for i = 1; a = 1: k = 1 or 2; a = 2:
// k = 1 or 2 for i = 0, k = 3 for i = 1), per axis; so the non-finite operand
// reaches a product of that k whose other factor, finite or not, keeps it
// non-finite (Inf * 0 is NaN), sums never turn it finite (Inf - Inf is NaN),
// and the output transform adds it with a non-zero coefficient. An
// intermediate that overflows is Inf and takes the fallback too; so does a
// non-finite x that only tiles past d's edge (zeros of d) meet.
//
// Accuracy: float32 relative errors like the direct sum's on the tests' data
// (docs/training.md). ATROUS_CL_WINOGRAD=0 turns it off, as it does the
// forward's Winograd kernel.
//
// Build options (-D):
//   T, ACC      storage and accumulation types (float/float, double/double,
//               half/float); USE_HALF, USE_FP64 as in prelude.cl
//   BC          output channels per vector; OV vectors and GC input channels
//               per register tile; WB = BC * OV
//   CIN, COUT   channel counts; COUTP = COUT rounded up to WB; CG = ceil(CIN / GC)
//   RATE_H, RATE_W, PAD_TOP, PAD_LEFT   as in atrous_conv2d.cl (long literals)
// Spatial sizes stay run-time arguments; offsets are 64-bit.

#define WB (BC * OV)
#define OB (COUTP / WB)
#define CG ((CIN + GC - 1) / GC)
#define CINP ((CG * GC + BC - 1) / BC * BC)  // xt's rows: every register tile's channels

// The tile t's first pixel of d, (row, column), from the tile counts per axis.
// Remainders written out: a '%' next to its '/' makes clang pair them through an
// LLVM 'freeze', which Oclgrind's uninitialised-value checker cannot run.
#define TILE_ORIGIN                                                            \
    const long t1 = t / BW, t2 = t1 / PW, t3 = t2 / BH;                        \
    const long n = t3 / PH;                                                    \
    const long bw = t - t1 * BW, pw = t1 - t2 * PW, bh = t2 - t3 * BH;         \
    const long ph = t3 - n * PH;                                               \
    const long i0 = ph + RATE_H * 2 * bh;                                      \
    const long j0 = pw + RATE_W * 2 * bw

// BC channels from element at, whose first is channel first of count: lanes from count
// on read as 0 (they would read the next pixel, or past the buffer).
inline VACC load_channels(__global const T *restrict p, const long at, const int first,
                          const int count)
{
    if (first + BC <= count)
        return LOADV_UNALIGNED(p, at);
    union { VACC v; ACC s[BC]; } lanes;
    for (int l = 0; l < BC; ++l)
        lanes.s[l] = first + l < count ? (ACC)LOAD(p, at + l) : (ACC)0;
    return lanes.v;
}

// xt[k][t][c] = (B^T X B)[k] of tile t for input channel c (0 from CIN to CINP), BC
// channels a work-item. Global size (T, CINP / BC).
__kernel void wgrad_x(__global const T *restrict x, const long x_off,
                      __global ACC *restrict xt,
                      const int HX, const int WX, const int PH, const int BH,
                      const int PW, const int BW, const long TILES)
{
    const long t = get_global_id(0);
    const int c = (int)get_global_id(1) * BC;
    TILE_ORIGIN;
    VACC v[16];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
        const long r = i0 - PAD_TOP + m * RATE_H;
#pragma unroll
        for (int mm = 0; mm < 4; ++mm) {
            const long q = j0 - PAD_LEFT + mm * RATE_W;
            const bool inside = r >= 0 && r < HX && q >= 0 && q < WX;
            v[m * 4 + mm] = inside ? load_channels(x, x_off + ((n * HX + r) * WX + q) * CIN + c,
                                                   c, CIN)
                                   : (VACC)0;
        }
    }
    // B^T X, on columns (prelude.cl), then (B^T X) B, on rows.
    VACC e[16];
    WINOGRAD_BT_COLUMNS(e, v);
    __global ACC *to = xt + t * CINP + c;
    const long k_stride = TILES * CINP;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        STOREV_ACC_ALIGNED(to, (k * 4 + 0) * k_stride, e[k * 4 + 0] - e[k * 4 + 2]);
        STOREV_ACC_ALIGNED(to, (k * 4 + 1) * k_stride, e[k * 4 + 1] + e[k * 4 + 2]);
        STOREV_ACC_ALIGNED(to, (k * 4 + 2) * k_stride, e[k * 4 + 2] - e[k * 4 + 1]);
        STOREV_ACC_ALIGNED(to, (k * 4 + 3) * k_stride, e[k * 4 + 1] - e[k * 4 + 3]);
    }
}

// dt[k][ob][t][w] = (A D A^T)[k] of tile t for output channel ob * WB + w (0 from COUT on),
// BC channels a work-item. Global size (T, COUTP / BC).
__kernel void wgrad_d(__global const T *restrict d, const long d_off,
                      __global ACC *restrict dt,
                      const int HD, const int WD, const int PH, const int BH,
                      const int PW, const int BW, const long TILES)
{
    const long t = get_global_id(0);
    const int o = (int)get_global_id(1) * BC;
    TILE_ORIGIN;
    VACC y[4];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            const long i = i0 + r * RATE_H, j = j0 + q * RATE_W;
            y[r * 2 + q] = i < HD && j < WD
                ? load_channels(d, d_off + ((n * HD + i) * WD + j) * COUT + o, o, COUT)
                : (VACC)0;
        }
    // A D, on columns (4 x 2), then (A D) A^T, on rows.
    VACC e[4][2];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
        e[0][q] = y[q];
        e[1][q] = y[q] + y[2 + q];
        e[2][q] = y[q] - y[2 + q];
        e[3][q] = -y[2 + q];
    }
    const int ob = o / WB;
    __global ACC *to = dt + ((long)ob * TILES + t) * WB + (o - ob * WB);
    const long k_stride = (long)OB * TILES * WB;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        STOREV_ACC_ALIGNED(to, (k * 4 + 0) * k_stride, e[k][0]);
        STOREV_ACC_ALIGNED(to, (k * 4 + 1) * k_stride, e[k][0] + e[k][1]);
        STOREV_ACC_ALIGNED(to, (k * 4 + 2) * k_stride, e[k][0] - e[k][1]);
        STOREV_ACC_ALIGNED(to, (k * 4 + 3) * k_stride, -e[k][1]);
    }
}

// partial[s][k][c][o] = sum over the tiles t of chunk s (in order) of xt[k][t][c]
// * dt[k][o / WB][t][o % WB], for input channels below CIN; every lane of COUTP. Global size
// (OB, CG, 16 * S).
__kernel void wgrad_products(__global const ACC *restrict xt, __global const ACC *restrict dt,
                             __global ACC *restrict partial, const long TILES,
                             const long tiles_per_chunk)
{
    const int ob = (int)get_global_id(0);
    const int cg = (int)get_global_id(1);
    const long s = get_global_id(2) / 16;
    const int k = (int)(get_global_id(2) - s * 16);
    __global const ACC *xk = xt + (long)k * TILES * CINP + cg * GC;
    __global const ACC *dk = dt + (((long)k * OB + ob) * TILES) * WB;
    VACC acc[GC][OV];
#pragma unroll
    for (int g = 0; g < GC; ++g)
#pragma unroll
        for (int v = 0; v < OV; ++v)
            acc[g][v] = (VACC)0;
    const long t_end = min(TILES, (s + 1) * tiles_per_chunk);
    for (long t = s * tiles_per_chunk; t < t_end; ++t) {
        VACC dv[OV];
#pragma unroll
        for (int v = 0; v < OV; ++v)
            dv[v] = LOADV_ACC_ALIGNED(dk, t * WB + v * BC);
#pragma unroll
        for (int g = 0; g < GC; ++g) {
            const ACC xg = xk[t * CINP + g];
#pragma unroll
            for (int v = 0; v < OV; ++v)
                acc[g][v] += xg * dv[v];
        }
    }
    const int c0 = cg * GC;
#pragma unroll
    for (int g = 0; g < GC; ++g) {
        if (c0 + g >= CIN)
            break;
        const long base = ((s * 16 + k) * CIN + c0 + g) * (long)COUTP + ob * WB;
#pragma unroll
        for (int v = 0; v < OV; ++v)
            STOREV_ACC_ALIGNED(partial, base + v * BC, acc[g][v] + (VACC)0);
    }
}

// Whether a lane of v below COUT (v's first channel o) is Inf or NaN: lanes past COUT,
// which are never stored, hold products of d's zero padding that an Inf of x makes NaN.
// v - v is 0 for a finite lane and NaN for an Inf or NaN one, in one vector
// subtraction (isinf and isnan per lane were library calls on PyPI's PoCL: 1.5% of
// the transpose vjp of 1x65x65 2048->256 rate 6).
bool nonfinite(const VACC v, const int o)
{
    union { VACC v; ACC s[BC]; } lanes = {v - v};
    bool any_bad = false;
    for (int l = 0; l < BC && o + l < COUT; ++l)
        any_bad |= lanes.s[l] != (ACC)0;
    return any_bad;
}

// Whether every lane of v below COUT is NaN: a sum that no further term changes.
bool all_nan(const VACC v, const int o)
{
    union { VACC v; ACC s[BC]; } lanes = {v};
    bool all = true;
    for (int l = 0; l < BC && o + l < COUT; ++l)
        all &= isnan(lanes.s[l]);
    return all;
}

// sum_{n, i, j} x[n, i - PAD_TOP + a*RATE_H, j - PAD_LEFT + b*RATE_W, c] * d[n, i, j, o..]
// over every pixel of d (0 * d where x's pixel lies outside x, TF's padding), rows
// then columns in order: the fallback. It stops at the end of a row where every lane
// is NaN, which no later term changes (a diverged step's all-NaN cotangent would
// otherwise sum every pixel for every entry: 1x64x64 128->128 took 305 ms, the direct
// kernel 14).
VACC direct_sum(__global const T *restrict x, const long x_off,
                __global const T *restrict d, const long d_off,
                const int a, const int b, const int c, const int o,
                const int N, const int HX, const int WX, const int HD, const int WD)
{
    VACC acc = (VACC)0;
    for (long r = 0; r < (long)N * HD; ++r) {
        const long n = r / HD;
        const long xr = r - n * HD - PAD_TOP + a * RATE_H;
        for (long j = 0; j < WD; ++j) {
            const long xc = j - PAD_LEFT + b * RATE_W;
            const ACC xv = xr >= 0 && xr < HX && xc >= 0 && xc < WX
                ? (ACC)LOAD(x, x_off + ((n * HX + xr) * WX + xc) * CIN + c) : (ACC)0;
            acc += xv * load_channels(d, d_off + (r * WD + j) * COUT + o, o, COUT);
        }
        if (all_nan(acc, o))
            break;
    }
    return acc;
}

// dfilters[a, b, c, o..o + BC] = (G^T M G)[a][b] with M[k] = the sum of partial[s][k][c][o..]
// over s = 0, 1, ..., S - 1, or the direct sum where that is not finite. Global size
// (COUTP / BC, CIN).
__kernel void wgrad_out(__global const ACC *restrict partial, const int S,
                        __global const T *restrict x, const long x_off,
                        __global const T *restrict d, const long d_off,
                        __global T *restrict dfilters, const long dfilters_off,
                        const int N, const int HX, const int WX, const int HD, const int WD)
{
    const int o = (int)get_global_id(0) * BC;
    const int c = (int)get_global_id(1);
    if (o >= COUT)
        return;  // a vector wholly in COUTP's padding: nothing to store
    const long stride = 16L * CIN * COUTP;
    VACC m[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        long at = ((long)k * CIN + c) * COUTP + o;
        VACC sum = LOADV_ACC_ALIGNED(partial, at);
        for (int s = 1; s < S; ++s)
            sum += LOADV_ACC_ALIGNED(partial, at += stride);
        m[k] = sum;
    }
    // G^T M, on columns (3 x 4), then (G^T M) G, on rows.
    VACC e[3][4];
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const VACC mid = (ACC)0.5 * (m[4 + l] + m[8 + l]);
        e[0][l] = m[l] + mid;
        e[1][l] = (ACC)0.5 * (m[4 + l] - m[8 + l]);
        e[2][l] = mid + m[12 + l];
    }
#pragma unroll
    for (int a = 0; a < 3; ++a) {
        const VACC mid = (ACC)0.5 * (e[a][1] + e[a][2]);
        const VACC y[3] = {e[a][0] + mid, (ACC)0.5 * (e[a][1] - e[a][2]), mid + e[a][3]};
#pragma unroll
        for (int b = 0; b < 3; ++b) {
            VACC v = y[b];
            if (nonfinite(v, o))
                v = direct_sum(x, x_off, d, d_off, a, b, c, o, N, HX, WX, HD, WD);
            STORE_CHANNELS(dfilters, dfilters_off + ((a * 3 + b) * (long)CIN + c) * COUT + o,
                           v + (VACC)0, o);
        }
    }
}
