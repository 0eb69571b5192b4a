// SPDX-License-Identifier: Apache-2.0
//
// Transposed atrous (dilated) 2-D convolution, stride 1, TF semantics: the
// same sum as atrous_conv2d_transpose in atrous_conv2d_transpose.cl,
//
//   out[n, p, q, c] = sum_{a, b, o} value[n, p + PAD_TOP - a*RATE_H, q + PAD_LEFT - b*RATE_W, o]
//                                   * wt[a, b, o, c]
//
// over the taps whose input pixel lies inside value, laid out for GPUs: a
// work-group stages what its work-items share in __local memory. wt is the
// packed [KH, KW, CIN, COUTP] weights of that file's repack_filters (built
// with the same options, FORWARD_FILTERS included); value and out are NHWC,
// C-contiguous from an element offset.
//
// A work-group of LC x LX x LY work-items (local axes 0, 1, 2) covers LC * BC
// output channels x LX * BW output columns x LY output rows of one image.
// Work-item (lc, lx, ly) sums BC channels (one vector) of the BW pixels
// q = q0 + lx + px * LX of row p0 + ly: pixels LX apart, so neighbouring
// work-items touch neighbouring pixels (coalesced loads and stores).
//
// For each tap row a, the taps b come in stages of ST (1 or KW) columns, and
// the input channels in chunks of OC. Per stage and chunk the work-group
// copies to __local, with barriers around:
//   vin  LY rows x SPAN columns x OC channels (OCS apart) of value: the columns that the
//        stage's ST taps read for the group's LX * BW pixels, each tap's
//        window RATE_W further left than the previous one (ACC, so float16
//        is converted once, at staging);
//   vok  whether each of vin's pixels lies inside value;
//   wl   ST taps x OC channels x LC vectors of BC weights.
// Positions outside value are staged as 0, and a work-item adds a tap's
// term only where its own input pixel lies inside value: never 0 * w, which
// is NaN for an Inf or NaN weight. The forward conv (FORWARD_FILTERS) reads
// TF's zero padding there, whose terms are added at the end (see there). A stage or tap row that no pixel of the
// group can reach is left out by the whole group: the loops over them start
// and end at bounds computed for the group beforehand, so every work-item
// meets the same barriers (PoCL 3.1 hangs or computes garbage when a
// `continue`, even a uniform one, skips a barrier in these loops).
//
// Build options (-D): those of atrous_conv2d_transpose.cl (T, ACC, BW, BC,
// CIN, COUT, COUTP, KH, KW, RATE_H, RATE_W, PAD_TOP, PAD_LEFT as long
// literals, FORWARD_FILTERS; WIDE_INPUTS is not supported: GPUs convert
// halves as they load them), and
//   LX, LY, LC  the work-group's shape: columns, rows, channel slices
//   OC          input channels staged at a time (1 <= OC <= CIN)
//   OCS         vin's stride between pixels: OC, or OC + 1 where OC is even,
//               so that neighbouring work-items' reads of one channel fall in
//               different banks of a GPU's local memory (a stride of 16 words
//               put the 16 pixels of a row in 2 of 32 banks)
//   ST          taps b staged at a time: 1 or KW
// atrous_cl.local_tile chooses OC and ST so that vin, vok and wl fit in its
// local-memory budget. Rows and columns are 64-bit, as in the other file.

#ifdef WIDE_INPUTS
#error "atrous_conv2d_transpose_local.cl takes T inputs; WIDE_INPUTS is for the CPU kernel"
#endif

#define TW (LX * BW)                          // output columns per work-group
#define SPAN (TW + (ST - 1) * RATE_W)         // input columns staged per stage
#define CB (LC * BC)                          // output channels per work-group
#define GROUP (LC * LX * LY)                  // work-items per work-group
#define NSTAGES (KW / ST)
// repack_filters' notes after the weights: per tap, sum over the input channels
// of w - w (0, or NaN where some weight is Inf or NaN), COUTP channels a tap.
#define FINITE ((long)KH * KW * CIN * COUTP)
#ifndef OCS
#define OCS OC
#endif

// floor(x / y) and ceil(x / y) for y > 0 (OpenCL's / truncates).
static long floor_div(const long x, const long y) { return x >= 0 ? x / y : -((-x + y - 1) / y); }
static long ceil_div(const long x, const long y) { return -floor_div(-x, y); }

__kernel __attribute__((reqd_work_group_size(LC, LX, LY)))
void atrous_conv2d_transpose_local(
    __global const T *restrict value, const long value_off,
    __global const T *restrict wt,
    __global T *restrict out, const long out_off,
    const int H, const int W, const int OH, const int OW)
{
    __local ACC vin[LY * SPAN * OCS];
    __local uchar vok[LY * SPAN];  // whether vin's pixel lies inside value
    __local VACC wl[ST * OC * LC];

    const int lc = (int)get_local_id(0);
    const int lx = (int)get_local_id(1);
    const int ly = (int)get_local_id(2);
    const int lid = (ly * LX + lx) * LC + lc;  // any order works; this one is axis 0 fastest

    const int cg = (int)get_group_id(0) * CB;  // the group's first output channel
    const int c0 = cg + lc * BC;               // this work-item's
    const long q0 = (long)get_group_id(1) * TW;
    const long row_groups = (OH + LY - 1) / LY;
    const long n = (long)get_group_id(2) / row_groups;
    const long p0 = ((long)get_group_id(2) - n * row_groups) * LY;
    const long p = p0 + ly;

    VACC acc[BW];
#pragma unroll
    for (int px = 0; px < BW; ++px)
        acc[px] = (VACC)0;

    // The tap rows that reach value for some row of the group: input row
    // i0 = p0 + PAD_TOP - a * RATE_H of its first row has i0 < H and i0 + LY > 0.
    const long a_begin = max(0L, floor_div(p0 + PAD_TOP - H, RATE_H) + 1);
    const long a_end = min((long)KH, ceil_div(p0 + PAD_TOP + LY, RATE_H));
    // The stages whose window reaches value: its leftmost column
    // j0 = q0 + PAD_LEFT - b_last * RATE_W has j0 < W and j0 + SPAN > 0.
    const long b_last_lo = floor_div(q0 + PAD_LEFT - W, RATE_W) + 1;
    const long b_last_hi = ceil_div(q0 + PAD_LEFT + SPAN, RATE_W) - 1;
    const long s_begin = max(0L, ceil_div(b_last_lo - (ST - 1), ST));
    const long s_end = min((long)NSTAGES, floor_div(b_last_hi - (ST - 1), ST) + 1);

    for (long a = a_begin; a < a_end; ++a) {
        const long i0 = p0 + PAD_TOP - a * RATE_H;  // input row of the group's first row
        for (long s = s_begin; s < s_end; ++s) {
            const long b_last = s * ST + ST - 1;
            // Input column of staged column 0: the last tap's window lies leftmost.
            const long j0 = q0 + PAD_LEFT - b_last * RATE_W;
            for (int o0 = 0; o0 < CIN; o0 += OC) {
                barrier(CLK_LOCAL_MEM_FENCE);  // the previous chunk's reads are done
                for (int k = lid; k < LY * SPAN * OC; k += GROUP) {
                    // Remainders as x - (x / y) * y: a % next to a / makes
                    // LLVM emit a freeze, which Oclgrind's checker cannot run.
                    const int k_o = k / OC;
                    const int o = k - k_o * OC;
                    const int row = k_o / SPAN;
                    const int col = k_o - row * SPAN;
                    const long ii = i0 + row;
                    const long jj = j0 + col;
                    const bool inside = ii >= 0 && ii < H && jj >= 0 && jj < W;
                    ACC v = (ACC)0;
                    if (inside && o0 + o < CIN)
                        v = (ACC)LOAD(value, value_off + ((n * H + ii) * W + jj) * CIN + o0 + o);
                    vin[k_o * OCS + o] = v;
                    if (o == 0)
                        vok[k_o] = inside;
                }
                for (int k = lid; k < ST * OC * LC; k += GROUP) {
                    const int k_s = k / LC;
                    const int slice = k - k_s * LC;
                    const int t = k_s / OC;
                    const int o = k_s - t * OC;
                    const long b = s * ST + t;
                    const int c = cg + slice * BC;
                    VACC w = (VACC)0;
                    if (c < COUTP && o0 + o < CIN)
                        w = LOADV_ALIGNED(wt, ((a * KW + b) * CIN + o0 + o) * COUTP + c);
                    wl[k] = w;
                }
                barrier(CLK_LOCAL_MEM_FENCE);
                for (int t = 0; t < ST; ++t) {
                    const long b = s * ST + t;
                    // Staged column of pixel q for tap b: q - q0 + (b_last - b) * RATE_W.
                    const int shift = (int)((b_last - b) * RATE_W);
                    const int at = ly * SPAN + lx + shift;
                    // Read from local memory, not computed from ly: PoCL 3.1
                    // unswitched the loops on a row test computed here (loop
                    // invariant, but not uniform), and the whole group then
                    // took work-item 0's branch.
                    bool inside[BW];
#pragma unroll
                    for (int px = 0; px < BW; ++px)
                        inside[px] = vok[at + px * LX];
                    __local const ACC *v = vin + (long)at * OCS;
                    for (int o = 0; o < OC; ++o) {
                        const VACC w = wl[(t * OC + o) * LC + lc];
#pragma unroll
                        for (int px = 0; px < BW; ++px) {
                            const VACC sum = acc[px] + v[px * LX * OCS + o] * w;
                            acc[px] = inside[px] ? sum : acc[px];
                        }
                    }
                }
            }
        }
    }

    if (p >= OH || c0 >= COUT)
        return;  // after the last barrier: a partial work-group's spare work-items
#ifdef FORWARD_FILTERS
    // The forward conv reads TF's zero padding at every tap whose input lies
    // outside value and adds sum_o 0 * w[tap, o]: 0, or NaN where one of those
    // weights is Inf or NaN, which is exactly the tap's note at FINITE. Where
    // every note of these channels is 0, nothing changes, and nothing is read.
    VACC notes = (VACC)0;
    for (long tap = 0; tap < KH * KW; ++tap)
        notes += LOADV_ALIGNED(wt, FINITE + tap * COUTP + c0);
#if BC == 1
    const ACC noted = notes;
#else
    union { VACC v; ACC s[BC]; } lanes = {notes};
    ACC noted = 0;
#pragma unroll
    for (int cc = 0; cc < BC; ++cc)
        noted += lanes.s[cc];
#endif
    if (noted != (ACC)0)
        for (long a = 0; a < KH; ++a) {
            const long i = p + PAD_TOP - a * RATE_H;
            for (long b = 0; b < KW; ++b) {
                const VACC note = LOADV_ALIGNED(wt, FINITE + (a * KW + b) * COUTP + c0);
#pragma unroll
                for (int px = 0; px < BW; ++px) {
                    const long j = q0 + lx + px * LX + PAD_LEFT - b * RATE_W;
                    if (!(i >= 0 && i < H && j >= 0 && j < W))
                        acc[px] += note;
                }
            }
        }
#endif
    const long base = out_off + ((n * OH + p) * OW + q0 + lx) * (long)COUT + c0;
    for (int px = 0; px < BW; ++px) {
        if (q0 + lx + px * LX >= OW)
            break;
        STORE_CHANNELS(out, base + (long)px * LX * COUT, acc[px], c0);
    }
}
