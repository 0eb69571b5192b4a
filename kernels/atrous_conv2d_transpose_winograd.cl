// SPDX-License-Identifier: Apache-2.0
//
// Transposed atrous (dilated) 2-D convolution, stride 1, TF semantics, by
// Winograd's minimal filtering F(2x2, 3x3) on the phase sub-grids: the same
// sum as kernels/atrous_conv2d_transpose.cl,
//
//   out[n, p, q, c] = sum_{a, b, o} value[n, p + PAD_TOP - a*RATE_H, q + PAD_LEFT - b*RATE_W, o]
//                                   * filters[a, b, c, o]
//
// over the taps whose input pixel lies inside value, with 16 multiplies per
// input and output channel for every 2x2 outputs where that kernel takes 36
// (3x3 filters). Larger filters are split into SH x SW filters of 3x3 (the
// taps flipped and zero-padded to 3 SH x 3 SW), whose products add up in the
// same sums: 5x5 takes 4 x 16 = 64 multiplies per 2x2 outputs for 100.
//
// The output pixels of one phase, p = ph + RATE_H * i, read the input rows
// ph + PAD_TOP + RATE_H * (i - a) only: an undilated 3x3 correlation on that
// sub-grid with the taps flipped, g[k][l] = filters[KH - 1 - k, KW - 1 - l]. A
// block of 2x2 such outputs (RATE apart) and a 3x3 part of g, rows 3 sy ..
// 3 sy + 2 and columns 3 sx .. 3 sx + 2, read a 4x4 block of inputs d, rows p0
// + PAD_TOP - (KH - 1 - 3 sy - m) * RATE_H, and add A^T [(G g G^T) . (B^T d B)] A.
//
// repack_filters writes U = G g G^T as wt[COUTP / WB][16][SH * SW][CIN][WB],
// blocks of WB = BC * GV output channels (a register tile's; output channels
// innermost, zero-padded to COUTP, a multiple of WB), so the products of one
// tile read their U in one run (in one row of COUTP channels, B's products
// took 10.6-10.9 ms on Intel's runtime, in blocks 7.4-7.5), and, after it,
// the filters themselves as wt[COUTP / WB][KH * KW][CIN][WB] for the fallback below.
//
// One work-item per work-group (CPUs: a work-group runs on one core) computes
// TB blocks along a row of one phase, for COUT_GROUP output channels (every
// one, or a group of them where all of U would not stay in the last-level
// cache: the work-groups of one group run one after another, so its part of
// U does; see atrous_cl.tiles.winograd_cout_group):
//   1. the input transform V = B^T d B of its TB blocks, every part of the
//      filters and input channel, into local memory, vl[16][TB][SH * SW *
//      CC] (adds only, BC channels at a time);
//   2. per BC * GV output channels, 16 products M[k] = V[k] U[k] (a register
//      tile of TB blocks x GV vectors of BC channels: GV + TB loads feed
//      TB * GV multiply-adds, as in the direct kernel's tile) into ml;
//   3. the output transform Y = A^T M A and the store.
// With CC = CINP, steps 1-3 as written, 2 and 3 per register tile (ml holds
// one tile's products). With CC < CINP, the input channels come in chunks of
// CC: steps 1 and 2 per chunk, the products of every register tile of the
// group adding up in ml (ml[16][TB][COUT_GROUP]), then 3: where all of V
// would not fit the device's local memory (atrous_cl.tiles.winograd_split;
// chunks that did not have to be were slower).
// V and M stay in local memory (a core's L1 and L2), so none of the
// transforms' traffic reaches main memory: the textbook split through
// global memory lost to the direct kernel (docs/performance.md).
//
// Non-finite values: Winograd spreads a non-finite input or weight over its
// block (Inf - Inf = NaN), and a non-finite weight times a zero read for an
// input outside value gives NaN where the op adds no term. So an output
// whose Winograd value is not finite is recomputed by the direct sum, over
// the same terms the direct kernel adds, in its order. That is exact: a
// non-finite term of the direct sum (a non-finite input, or a non-finite
// weight times an input inside value) always gives a non-finite Winograd
// value, since each input an output reads has a non-zero coefficient in a
// row of B^T d B that its row of A^T sums (rows 0-2 for the first output of
// a pair, reading d0-d2; rows 1-3 for the second, reading d1-d3), each weight
// a non-zero one in the rows of G g G^T it meets, and IEEE adds and
// multiplies never turn a non-finite operand finite (Inf * 0 and Inf - Inf
// are NaN). An intermediate that overflows is Inf, so its outputs take the
// fallback too; so does a non-finite input under a padding tap of a split
// filter (zero times it). Each output's Winograd value reads only the inputs
// in its own window (the rows above), never a neighbour's.
//
// Accuracy: float32 relative errors like the direct sum's on the tests'
// data (docs/performance.md). Its rounding error is bounded by the inputs
// and weights of the whole window, including taps whose weight is zero,
// where the direct sum's counts only the terms it adds: an input many
// orders of magnitude above its neighbours, under a zero tap, may cost the
// neighbours' outputs their low digits. ATROUS_CL_WINOGRAD=0 turns it off
// (atrous_cl.tiles.winograd_enabled).
//
// Build options (-D):
//   T, ACC      storage and accumulation types (float/float, double/double,
//               half/float); USE_HALF, USE_FP64 as in prelude
//   BC          channels per vector (8 or 16); GV vectors per register tile
//   TB          2x2 blocks per work-group
//   CC          input channels per chunk, a multiple of BC (default CINP: one
//               chunk; the last chunk may be short)
//   COUT_GROUP  output channels per work-group, a multiple of BC * GV (the
//               last group may be short: COUTP need not be a multiple)
//   KH, KW      the filters' size; SH, SW = ceil(KH / 3), ceil(KW / 3)
//   CIN, COUT, COUTP, CINP (CIN rounded up to BC), RATE_H, RATE_W, PAD_TOP,
//   PAD_LEFT    as in the direct kernel (rates and pads long literals)
//   FORWARD_FILTERS                 as in the direct kernel
//   LIVE_A0, LIVE_A1, LIVE_B0, LIVE_B1
//               the taps (rows a, columns b, first and last) that land inside
//               value for some output pixel; LIVE_A0 > LIVE_A1 where none does
//   RB          input channels a repack_filters work-item transforms: 2, 4, 8 or 16,
//               or 1 to write straight to wt (atrous_cl.launch.winograd_repack_run)
// Spatial sizes stay run-time arguments; offsets are 64-bit.

// The type and vector macros (LOAD, STORE_CHANNELS, VACC, ...) come from prelude.cl.

// BC channels of value from any element, as ACC. Halves are converted here, in
// the input transform, which loads each input 4 times per output channel
// tile's 16 * CIN products; the direct kernel converts per multiply-add, which
// is why it takes float16 widened by a pass of its own on CPUs.
#ifdef USE_HALF
#define LOADV_VALUE(p, i) CAT(vload_half, BC)(0, (p) + (i))
#elif defined(__clang__)
typedef VACC __attribute__((aligned(sizeof(ACC)))) wino_unaligned;
#define LOADV_VALUE(p, i) (*(__global const wino_unaligned *)((p) + (i)))
#else
#define LOADV_VALUE(p, i) CAT(vload, BC)(0, (p) + (i))
#endif
#define LOADV_LOCAL(p, i) CAT(vload, BC)(0, (p) + (i))
#define STOREV_LOCAL(p, i, v) CAT(vstore, BC)((v), 0, (p) + (i))

#define PARTS (SH * SW)
#ifndef CC
#define CC CINP
#endif
#define KP (PARTS * CC)  // a row of vl: every part's input channels of a chunk
#if CC < CINP
#define MS COUT_GROUP  // a row of ml: the group's products, kept from chunk to chunk
#define ML_COL(cb) ((cb) - c_begin)  // where the register tile from cb starts in a row
#else
#define MS (BC * GV)  // a row of ml: one register tile's products
#define ML_COL(cb) 0
#endif
#define DIRECT_AT (16L * PARTS * CIN * COUTP)
#define WB (BC * GV)  // output channels of a block of U (see repack_filters)
// Where U of output channel c0, a multiple of WB, starts: (c0 / WB) * 16 * PARTS * CIN * WB.
#define U_BLOCK(c0) ((long)(c0) * 16 * PARTS * CIN)
// Where the fallback's copy of the filters for output channel c0, a multiple of WB, starts.
#define COPY_BLOCK(c0) (DIRECT_AT + (long)(c0) * KH * KW * CIN)

// wt[c / WB][k][part][o][c % WB] = (G g G^T)[k] of one 3x3 part of the flipped filters
// for output channel c and input channel o, then wt[DIRECT_AT + ((c / WB) * KH * KW + tap)
// * CIN * WB + o * WB + c % WB] = filters[tap, c, o]; 0 for COUT <= c < COUTP. With
// FORWARD_FILTERS the filters are the forward atrous_conv2d's, [KH, KW, CIN, COUT],
// read with the taps flipped, as the direct kernel's repack_filters does. Global size
// (ceil(CIN / RB), COUTP / WB): a run of RB input channels (the last may be short) of a
// block. A work-item loads each tap's RB weights of an output channel at once (the op's
// filters; the forward op's, whose output channels are innermost, BC lanes at once),
// transforms them BC channels at a time (the same operations on each lane as one channel
// alone, so the same results), and writes each of its 16 * PARTS + KH * KW rows of wt,
// RB * WB elements one after another, from private memory (with RB = 1, where a run's
// rows would not fit there, each vector as it is computed). Work-items of one input
// channel and BC output channels each (loads a filter row apart, 4 KiB at 1024 input
// channels; 25 stores a third of 96 bytes each, in 25 places) took 2.8-3.3x as long:
// 1x33x33 1024->256 3x3, 6.7 against 2.0 ms on PyPI's PoCL, 6.0 against 2.2 on Intel's
// runtime (docs/performance.md).
#if RB > 1
#define RUN CAT(ACC, RB)
#ifdef USE_HALF
#define LOAD_RUN(p) CAT(vload_half, RB)(0, (p))
#elif defined(__clang__)
typedef RUN __attribute__((aligned(sizeof(ACC)))) run_unaligned;
#define LOAD_RUN(p) (*(__global const run_unaligned *)(p))
#else
#define LOAD_RUN(p) CAT(vload, RB)(0, (p))
#endif
#endif
#define ROWS (16 * PARTS + KH * KW)  // rows of wt a work-item writes: U's, then the copy's
// With RB = 1 (filters too large for a run's rows in private memory, or one input
// channel) a work-item writes each vector straight to wt, and loads lane by lane.
#if RB > 1
#define PUT_U(i, x) (rows[i][oo * GV + g] = (x))
#define PUT_COPY(tap, x) (rows[16 * PARTS + (tap)][oo * GV + g] = (x))
#else  // vstoren: a plain vector store of a union's vector, read after its lanes were
       // written, showed Oclgrind's uninitialised-value checker a poison value
#define PUT_U(i, x) STOREV_ACC(wt, U_BLOCK(c0) + ((long)(i) * CIN + o0) * WB + g * BC, (x))
#define PUT_COPY(tap, x) \
    STOREV_ACC(wt, COPY_BLOCK(c0) + ((long)(tap) * CIN + o0) * WB + g * BC, (x))
#endif
__kernel void repack_filters(__global const T *restrict filters, const long filters_off,
                             __global ACC *restrict wt)
{
    const int o0 = (int)get_global_id(0) * RB;
    const int in_run = min(RB, CIN - o0);  // input channels in this run
    const int c0 = (int)get_global_id(1) * WB;
#if RB > 1
    VACC rows[ROWS][RB * GV];
#endif
    for (int g = 0; g < GV; ++g) {
        const int c = c0 + g * BC;  // the vector's first channel
#if RB > 1 && !defined(FORWARD_FILTERS)
        // pre[tap][l].s[q] = the weight of tap, channel c + l and input channel o0 + q:
        // the op's filters hold input channels innermost, RB of them in one load.
        union { RUN v; ACC s[RB]; } pre[KH * KW][BC];
        for (int tap = 0; tap < KH * KW; ++tap)
            for (int l = 0; l < BC; ++l) {
                if (c + l < COUT && in_run == RB) {
                    pre[tap][l].v = LOAD_RUN(filters + filters_off + FILTER_AT(tap, c + l, o0));
                } else {
                    for (int q = 0; q < RB; ++q)
                        pre[tap][l].s[q] = c + l < COUT && q < in_run
                            ? (ACC)LOAD(filters, filters_off + FILTER_AT(tap, c + l, o0 + q)) : (ACC)0;
                }
            }
#endif
        for (int oo = 0; oo < in_run; ++oo) {
            VACC gp[3 * SH][3 * SW];  // the flipped taps, zero-padded
#pragma unroll
            for (int k = 0; k < 3 * SH; ++k)
#pragma unroll
                for (int l = 0; l < 3 * SW; ++l)
                    gp[k][l] = (VACC)0;
            // Two loops, no tap / KW and tap % KW: clang pairs those through an LLVM
            // 'freeze', which Oclgrind's uninitialised-value checker cannot run.
#pragma unroll
            for (int a = 0; a < KH; ++a)
#pragma unroll
                for (int b = 0; b < KW; ++b) {
                    const int tap = a * KW + b;
                    union { VACC v; ACC s[BC]; } w;
#ifdef FORWARD_FILTERS  // the forward op's filters hold output channels innermost
                    if (c + BC <= COUT)
                        w.v = LOADV_UNALIGNED(filters, filters_off + FILTER_AT(tap, c, o0 + oo));
                    else
                        LOAD_FILTER_LANES(w, filters, filters_off, tap, c, o0 + oo);
#elif RB > 1
#pragma unroll
                    for (int l = 0; l < BC; ++l)
                        w.s[l] = pre[tap][l].s[oo];
#else
                    LOAD_FILTER_LANES(w, filters, filters_off, tap, c, o0);
#endif
                    PUT_COPY(tap, w.v);
                    // A tap that lands inside value for no output pixel adds no term
                    // (0 * w with FORWARD_FILTERS, NaN for a non-finite w, which stays
                    // and sends its outputs to the fallback): left out of the transform.
                    const bool live = a >= LIVE_A0 && a <= LIVE_A1 && b >= LIVE_B0 && b <= LIVE_B1;
#ifdef FORWARD_FILTERS
                    // Lane by lane: a non-finite weight stays in its own channel's transform.
                    union { VACC v; ACC s[BC]; } kept;
                    for (int l = 0; l < BC; ++l)
                        kept.s[l] = live || !isfinite(w.s[l]) ? w.s[l] : (ACC)0;
                    gp[KH - 1 - a][KW - 1 - b] = kept.v;  // flipped: the sub-grid correlation's taps
#else
                    gp[KH - 1 - a][KW - 1 - b] = live ? w.v : (VACC)0;
#endif
                }
#pragma unroll
            for (int sy = 0; sy < SH; ++sy)
#pragma unroll
                for (int sx = 0; sx < SW; ++sx) {
                    // G g, then (G g) G^T for the part g; G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
                    VACC gg[4][3];
#pragma unroll
                    for (int l = 0; l < 3; ++l) {
                        const VACC g0 = gp[3 * sy][3 * sx + l], g1 = gp[3 * sy + 1][3 * sx + l],
                                   g2 = gp[3 * sy + 2][3 * sx + l];
                        gg[0][l] = g0;
                        gg[1][l] = (ACC)0.5 * (g0 + g1 + g2);
                        gg[2][l] = (ACC)0.5 * (g0 - g1 + g2);
                        gg[3][l] = g2;
                    }
                    const int part = sy * SW + sx;
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const VACC r[4] = {gg[k][0], (ACC)0.5 * (gg[k][0] + gg[k][1] + gg[k][2]),
                                           (ACC)0.5 * (gg[k][0] - gg[k][1] + gg[k][2]), gg[k][2]};
#pragma unroll
                        for (int l = 0; l < 4; ++l)
                            PUT_U((k * 4 + l) * PARTS + part, r[l]);
                    }
                }
        }
    }
#if RB > 1
    // Row i of U starts at U_BLOCK(c0) + i * CIN * WB, of the copy at COPY_BLOCK(c0) + i *
    // CIN * WB: this run's part of each, in vectors (aligned: WB and every row's start
    // are multiples of BC).
    __global VACC *u = (__global VACC *)(wt + U_BLOCK(c0) + (long)o0 * WB);
    __global VACC *copy = (__global VACC *)(wt + COPY_BLOCK(c0) + (long)o0 * WB);
    for (int i = 0; i < 16 * PARTS; ++i)
        for (int v = 0; v < in_run * GV; ++v)
            u[(long)i * CIN * GV + v] = rows[i][v];
    for (int tap = 0; tap < KH * KW; ++tap)
        for (int v = 0; v < in_run * GV; ++v)
            copy[(long)tap * CIN * GV + v] = rows[16 * PARTS + tap][v];
#endif
}

#define NONFINITE(v) any(isinf(v) | isnan(v))

// The direct kernel's sum for output pixel (n, p, q), channels c .. c + BC,
// in its order (tap rows, input channels, tap columns): the fallback. Its
// row loop mirrors the direct kernel's phase tiles on purpose (the same terms,
// the same order), which keeps the fallback's results those of that kernel.
VACC direct_sum(__global const T *restrict value, const long value_off,
                __global const ACC *restrict wt, const long n, const long p, const long q,
                const int c, const int H, const int W)
{
    // The copy of channel c's block of WB (repack_filters), at c's place in it.
    __global const ACC *w = wt + COPY_BLOCK(c - c % WB) + c % WB;
    VACC acc = (VACC)0;
    for (int a = 0; a < KH; ++a) {
        const long i = p + PAD_TOP - a * RATE_H;
        const bool row_inside = i >= 0 && i < H;
#ifndef FORWARD_FILTERS
        if (!row_inside)
            continue;
#endif
        for (int o = 0; o < CIN; ++o)
            for (int b = 0; b < KW; ++b) {
                const long j = q + PAD_LEFT - b * RATE_W;
                const VACC wv = LOADV_ACC_ALIGNED(w, (((long)a * KW + b) * CIN + o) * WB);
                if (row_inside && j >= 0 && j < W)
                    acc += (ACC)LOAD(value, value_off + ((n * H + i) * W + j) * CIN + o) * wv;
#ifdef FORWARD_FILTERS
                else
                    acc += (ACC)0 * wv;  // TF's zero padding times the weight
#endif
            }
    }
    return acc;
}

// M[k] = V[k] U[k] for the GV vectors of output channels from cb over input channels
// o_lo .. o_hi (vl holds V from o_lo) into m (rows of MS channels, the register
// tile's from m[0]), or added to what m holds with add: a macro, not a function, for
// the kernel's one-chunk path keeps the code it had (as functions, A took 1.05-1.06 of
// the time before on PyPI's PoCL, C 1.03-1.06 on Intel's runtime).
#define WINOGRAD_PRODUCTS(m, cb, o_lo, o_hi, add)                                              \
    for (int k = 0; k < 16; ++k) {                                                             \
        VACC acc[TB][GV];                                                                      \
        _Pragma("unroll") for (int t = 0; t < TB; ++t)                                         \
            _Pragma("unroll") for (int g = 0; g < GV; ++g)                                     \
                acc[t][g] = (add) ? LOADV_LOCAL(m, (k * TB + t) * MS + g * BC) : (VACC)0;      \
        for (int part = 0; part < PARTS; ++part) {                                             \
            __global const ACC *uk = wt + U_BLOCK(cb) + ((long)k * PARTS + part) * CIN * WB;   \
            __local const ACC *vk = vl + k * TB * KP + part * CC;                              \
            for (int o = (o_lo); o < (o_hi); ++o) {                                            \
                VACC w[GV];                                                                    \
                _Pragma("unroll") for (int g = 0; g < GV; ++g)                                 \
                    w[g] = LOADV_ACC_ALIGNED(uk, (long)o * WB + g * BC);                       \
                _Pragma("unroll") for (int t = 0; t < TB; ++t) {                               \
                    const ACC x = vk[t * KP + o - (o_lo)];                                     \
                    _Pragma("unroll") for (int g = 0; g < GV; ++g)                             \
                        acc[t][g] += x * w[g];                                                 \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        _Pragma("unroll") for (int t = 0; t < TB; ++t)                                         \
            _Pragma("unroll") for (int g = 0; g < GV; ++g)                                     \
                STOREV_LOCAL(m, (k * TB + t) * MS + g * BC, acc[t][g]);                        \
    }

// Global size (1, PHASES_W * ceil(BLOCKS_W / TB), GROUPS * N * PHASES_H *
// BLOCKS_H), local size (1, 1, 1); PHASES = min(RATE, O) per axis, BLOCKS =
// ceil(ceil(O / RATE) / 2) per axis (phase 0's, the most any phase has),
// GROUPS = ceil(COUTP / COUT_GROUP). Axis 1 counts the phases fastest, then
// the work-groups of one phase along the row; axis 2 likewise for rows of
// blocks, per image, per group of output channels (slowest).
__kernel void winograd_transpose(
    __global const T *restrict value, const long value_off,
    __global const ACC *restrict wt,
    __global T *restrict out, const long out_off,
    const int H, const int W, const int OH, const int OW)
{
    __local ACC vl[16 * TB * KP];
    __local ACC ml[16 * TB * MS];

    // Remainders written out (see the direct kernel).
    const long phases_w = min(RATE_W, (long)OW);
    const long col_item = (long)get_global_id(1) / phases_w;
    const long q0 = (long)get_global_id(1) - col_item * phases_w + col_item * 2 * TB * RATE_W;
    const long phases_h = min(RATE_H, (long)OH);
    const long row_items = phases_h * ((((OH + RATE_H - 1) / RATE_H) + 1) / 2);
#if COUT_GROUP < COUTP
    const long group_items = (long)get_global_size(2) / ((COUTP + COUT_GROUP - 1) / COUT_GROUP);
    const int group = (int)((long)get_global_id(2) / group_items);
    const long item = (long)get_global_id(2) - group * group_items;
    const int c_begin = group * COUT_GROUP;
    const int c_end = min(c_begin + COUT_GROUP, COUTP);
#else  // one group: the loop over output channels keeps its constant trip count
    const long item = (long)get_global_id(2);
    const int c_begin = 0;
    const int c_end = COUTP;
#endif
    const long n = item / row_items;
    const long row_item = item - n * row_items;
    const long row_block = row_item / phases_h;
    const long p0 = row_item - row_block * phases_h + row_block * 2 * RATE_H;

    // Input channels in chunks of CC (all of them at once where CC = CINP: where
    // all of V fits the local memory), the products of every chunk adding up in
    // ml, transformed out after the last.
#if CC < CINP
    for (int o0 = 0; o0 < CINP; o0 += CC) {
        const int o_end = min(o0 + CC, CINP);
#else  // one chunk: the loops over input channels keep their constant trip counts
    {
        const int o0 = 0, o_end = CINP;
#endif
        // 1. V = B^T d B for every block, part and input channel of the chunk.
        // d[m][m'] is the input at row p0 + PAD_TOP - (KH - 1 - 3 sy - m) * RATE_H,
        // column q0 + (2 t + m' - (KW - 1 - 3 sx)) * RATE_W + PAD_LEFT for block t
        // and part (sy, sx); 0 outside value (the fallback repairs what a zero
        // times a non-finite weight does). Input channels past CIN are 0.
        for (int part = 0; part < PARTS; ++part)
        for (int t = 0; t < TB; ++t) {
            const int sy = part / SW;
            const int sx = part - sy * SW;
            long at[16];
            bool in[16];
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const long i = p0 + PAD_TOP - (KH - 1 - 3 * sy - m) * RATE_H;
#pragma unroll
                for (int mm = 0; mm < 4; ++mm) {
                    const long j = q0 + (2 * t + mm - (KW - 1 - 3 * sx)) * RATE_W + PAD_LEFT;
                    in[m * 4 + mm] = i >= 0 && i < H && j >= 0 && j < W;
                    at[m * 4 + mm] = value_off + ((n * H + i) * W + j) * CIN;
                }
            }
            for (int o = o0; o < o_end; o += BC) {
                VACC d[16];
                if (o + BC <= CIN) {
#pragma unroll
                    for (int k = 0; k < 16; ++k)
                        d[k] = in[k] ? LOADV_VALUE(value, at[k] + o) : (VACC)0;
                } else {  // the last, ragged vector of input channels
#pragma unroll
                    for (int k = 0; k < 16; ++k) {
                        union { VACC v; ACC s[BC]; } lanes;
                        for (int l = 0; l < BC; ++l)
                            lanes.s[l] = in[k] && o + l < CIN ? (ACC)LOAD(value, at[k] + o + l)
                                                              : (ACC)0;
                        d[k] = lanes.v;
                    }
                }
                // B^T d, on columns (prelude.cl).
                VACC e[16];
                WINOGRAD_BT_COLUMNS(e, d);
                // (B^T d) B, on rows.
                __local ACC *to = vl + t * KP + part * CC + o - o0;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    STOREV_LOCAL(to, (k * 4 + 0) * TB * KP, e[k * 4 + 0] - e[k * 4 + 2]);
                    STOREV_LOCAL(to, (k * 4 + 1) * TB * KP, e[k * 4 + 1] + e[k * 4 + 2]);
                    STOREV_LOCAL(to, (k * 4 + 2) * TB * KP, e[k * 4 + 2] - e[k * 4 + 1]);
                    STOREV_LOCAL(to, (k * 4 + 3) * TB * KP, e[k * 4 + 1] - e[k * 4 + 3]);
                }
            }
        }

#if CC < CINP
        // 2. M[k] = V[k] U[k] over the chunk, added to the earlier chunks' in ml, for
        // every register tile of the group.
        for (int cb = c_begin; cb < c_end; cb += WB)
            WINOGRAD_PRODUCTS(ml + ML_COL(cb), cb, o0, min(o_end, CIN), o0 > 0)
#endif
    }

    for (int cb = c_begin; cb < c_end; cb += WB) {
        __local const ACC *m = ml + ML_COL(cb);
#if CC >= CINP
        // 2. M[k] = V[k] U[k] for GV vectors of output channels from cb.
        WINOGRAD_PRODUCTS(ml, cb, 0, CIN, false)
#endif

        // 3. Y = A^T M A, A^T = [1 1 1 0; 0 1 -1 -1], stored (rows, columns and
        // channels past the output skipped), with the fallback.
        for (int t = 0; t < TB; ++t) {
            if (q0 + 2 * t * RATE_W >= OW)
                break;
            for (int g = 0; g < GV; ++g) {
                const int c = cb + g * BC;
                if (c >= COUT)
                    break;
                VACC mk[16];
#pragma unroll
                for (int k = 0; k < 16; ++k)
                    mk[k] = LOADV_LOCAL(m, (k * TB + t) * MS + g * BC);
                VACC s[8];  // A^T M: 2 x 4
#pragma unroll
                for (int l = 0; l < 4; ++l) {
                    s[l] = mk[l] + mk[4 + l] + mk[8 + l];
                    s[4 + l] = mk[4 + l] - mk[8 + l] - mk[12 + l];
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const long p = p0 + r * RATE_H;
                    if (p >= OH)
                        break;
                    const VACC y[2] = {s[r * 4] + s[r * 4 + 1] + s[r * 4 + 2],
                                       s[r * 4 + 1] - s[r * 4 + 2] - s[r * 4 + 3]};
#pragma unroll
                    for (int x = 0; x < 2; ++x) {
                        const long q = q0 + (2 * t + x) * RATE_W;
                        if (q >= OW)
                            break;
                        VACC yx = y[x];
                        if (NONFINITE(yx))
                            yx = direct_sum(value, value_off, wt, n, p, q, c, H, W);
                        STORE_CHANNELS(out, out_off + ((n * OH + p) * OW + q) * (long)COUT + c, yx, c);
                    }
                }
            }
        }
    }
}
