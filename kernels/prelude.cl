// SPDX-License-Identifier: Apache-2.0
// Prepended to every kernel file by atrous_cl.runtime.program_source, which
// follows it with a #line 1 so build logs name the kernel file's own lines.
//
// Storage and vector access for the build options every kernel takes:
//   T, ACC     storage and accumulation types: float/float, double/double or
//              half/float (half is storage only, via vload_half/vstore_half,
//              so it needs no cl_khr_fp16); USE_HALF / USE_FP64 accordingly
//   BC         channels per vector, 1, 2, 4, 8 or 16
// LOAD/STORE move one T as ACC; LOADV/STOREV a vector of BC (VACC);
// STOREV_ACC stores a VACC into an ACC buffer (partial sums);
// STOREV_ACC_ALIGNED into one of our own at a multiple of BC, a plain store,
// which PoCL 3.0 compiles inline where it calls a function for vstoreN.
// Vector loads from buffers of our own, at an index that is a multiple of BC
// (so aligned to the vector), are plain vector loads, which PoCL 3.0 compiles
// inline where it calls a function for vloadN: LOADV_ACC_ALIGNED from an ACC
// buffer, LOADV_ALIGNED from a T one. LOADV_UNALIGNED is LOADV at any
// element-aligned index: under clang (PoCL, Intel, Oclgrind) a load through a
// vector type aligned like its element, also compiled inline (a call per load
// made PoCL spill the whole register tile around it); LOADV_ACC_UNALIGNED the
// same from an ACC buffer (float16 widened to float32).
//
// widen, the one kernel here: float16 widened to float32 in a pass of its own
// before a CPU kernel's inner loop (see atrous_cl.launch.widens_inputs).

#ifdef USE_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#ifdef USE_HALF
#define LOAD(p, i) vload_half((i), (p))
#define STORE(p, i, v) vstore_half((v), (i), (p))
#else
#define LOAD(p, i) ((p)[i])
#define STORE(p, i, v) ((p)[i] = (v))
#endif

#if BC == 1
#define VACC ACC
#define LOADV_ACC_ALIGNED(p, i) ((p)[i])
#define LOADV(p, i) LOAD(p, i)
#define LOADV_ALIGNED(p, i) LOAD(p, i)
#define LOADV_UNALIGNED(p, i) LOAD(p, i)
#define LOADV_ACC_UNALIGNED(p, i) ((p)[i])
#define STOREV(p, i, v) STORE(p, i, v)
#define STOREV_ACC(p, i, v) ((p)[i] = (v))
#define STOREV_ACC_ALIGNED(p, i, v) ((p)[i] = (v))
#else
#define VACC CAT(ACC, BC)
#define LOADV_ACC_ALIGNED(p, i) (*(__global const VACC *)((p) + (i)))
#ifdef __clang__
typedef VACC __attribute__((aligned(sizeof(ACC)))) vacc_unaligned;
#define LOADV_ACC_UNALIGNED(p, i) (*(__global const vacc_unaligned *)((p) + (i)))
#else
#define LOADV_ACC_UNALIGNED(p, i) CAT(vload, BC)(0, (p) + (i))
#endif
#ifdef USE_HALF
#define LOADV(p, i) CAT(vload_half, BC)(0, (p) + (i))
#define LOADV_ALIGNED(p, i) LOADV(p, i)
#define LOADV_UNALIGNED(p, i) LOADV(p, i)
#define STOREV(p, i, v) CAT(vstore_half, BC)((v), 0, (p) + (i))
#else
#define LOADV(p, i) CAT(vload, BC)(0, (p) + (i))
#define LOADV_ALIGNED(p, i) LOADV_ACC_ALIGNED(p, i)  // T is ACC here
#define LOADV_UNALIGNED(p, i) LOADV_ACC_UNALIGNED(p, i)
#define STOREV(p, i, v) CAT(vstore, BC)((v), 0, (p) + (i))
#endif
#define STOREV_ACC(p, i, v) CAT(vstore, BC)((v), 0, (p) + (i))
#define STOREV_ACC_ALIGNED(p, i, v) (*(__global VACC *)((p) + (i)) = (v))
#endif

// dst[at + k] = value's lane k for the output channels first + k below COUT: all BC
// lanes at once, or one by one in the last channel tile of a COUT that BC
// does not divide.
#define STORE_CHANNELS(dst, at, value, first)                                  \
    do {                                                                        \
        if ((first) + BC <= COUT) {                                             \
            STOREV(dst, at, value);                                             \
        } else {                                                                \
            union { VACC vec; ACC s[BC]; } lanes_ = {value};                    \
            for (int cc_ = 0; (first) + cc_ < COUT; ++cc_)                      \
                STORE(dst, (at) + cc_, lanes_.s[cc_]);                          \
        }                                                                       \
    } while (0)

// lanes.s[k] = the weight of tap `tap` (a * KW + b), output channel first + k and
// input channel o, for the BC lanes (0 from COUT on): from the op's filters, [KH,
// KW, COUT, CIN], or with FORWARD_FILTERS the forward atrous_conv2d's, [KH, KW,
// CIN, COUT], with the taps flipped. Both kernel files' repack_filters read them so.
#ifdef FORWARD_FILTERS
#define FILTER_AT(tap, c, o) (((KH * KW - 1L - (tap)) * CIN + (o)) * COUT + (c))
#else
#define FILTER_AT(tap, c, o) (((long)(tap) * COUT + (c)) * CIN + (o))
#endif
#define LOAD_FILTER_LANES(lanes, filters, off, tap, first, o)                   \
    _Pragma("unroll") for (int l_ = 0; l_ < BC; ++l_)                           \
        (lanes).s[l_] = (first) + l_ < COUT                                     \
                            ? (ACC)LOAD(filters, (off) + FILTER_AT(tap, (first) + l_, o)) \
                            : (ACC)0

// Winograd F(2x2, 3x3)'s input transform on the columns of a 4x4 block d (row-major,
// any element type): e = B^T d, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. The rows'
// half, (B^T d) B, is each kernel's own (where its results go). For both Winograd files.
#define WINOGRAD_BT_COLUMNS(e, d)                                               \
    _Pragma("unroll") for (int l_ = 0; l_ < 4; ++l_) {                          \
        (e)[0 * 4 + l_] = (d)[0 * 4 + l_] - (d)[2 * 4 + l_];                    \
        (e)[1 * 4 + l_] = (d)[1 * 4 + l_] + (d)[2 * 4 + l_];                    \
        (e)[2 * 4 + l_] = (d)[2 * 4 + l_] - (d)[1 * 4 + l_];                    \
        (e)[3 * 4 + l_] = (d)[1 * 4 + l_] - (d)[3 * 4 + l_];                    \
    }

// wide[i] = x[x_off + i] in ACC for i < n, WIDEN_BY elements a work-item (one
// each ran PyPI's PoCL and Intel's runtime at a fifth of a copy's speed). Global
// size: ceil(n / WIDEN_BY) (atrous_cl.launch.WIDEN_BY, the same number).
#define WIDEN_BY 8
__kernel void widen(__global const T *restrict x, const long x_off, __global ACC *restrict wide,
                    const long n)
{
    const long i = get_global_id(0) * WIDEN_BY;
    if (i + WIDEN_BY <= n) {
#ifdef USE_HALF
        vstore8(vload_half8(0, x + x_off + i), 0, wide + i);
#else
#pragma unroll
        for (int k = 0; k < WIDEN_BY; ++k)
            wide[i + k] = (ACC)LOAD(x, x_off + i + k);
#endif
    } else {
        for (long k = i; k < n; ++k)
            wide[k] = (ACC)LOAD(x, x_off + k);
    }
}
