/* Fused conditional partial-sum convolution for the CPU (CGNet inference).
 *
 * One pass over output tiles does base partial sum -> gate compare -> conditional pass:
 * the remaining-channel sum of a tile (R output positions along a row x TW output channels)
 * is computed only when at least one of its gates is on, while its input rows are still in
 * L1. A direct convolution on a padded NHWC input: each FMA multiplies one broadcast input
 * value with a VW-wide vector of output-channel weights; the NBT*R accumulators stay in
 * registers, and each broadcast feeds NBT FMAs.
 *
 * Compiled per layer geometry (kernels/cpu_fused.py passes every size as -D constants), so all
 * strides are compile-time constants and the loops over positions unroll into registers.
 *
 * Semantics are kernels/reference.py's: Yp = base sum + bias; d = Yp > tau (G == 1) or
 * mean over the G channels of (Yp - tau) * inv_sigma > 0; out = Yp + d * rest.
 */
#include <stdint.h>
#include <string.h>

#ifndef C_IN
#error "compile through kernels/cpu_fused.py: the geometry comes as -D constants"
#endif

/* Required constants: C_IN C_OUT KH KW SH SW DH DW HP WP HO WO P GROUPED VW NBT G R RT SPAN.
 * SPAN: a tile holds several output chunks of a grouped base path (chunks narrower than a
 * vector). Base and remaining sums then run over all input channels with pre-masked weights
 * (w = W*M, wrest = W*(1-M)): twice the dense MACs, but full-width vectors, which beats
 * 4-lane vectors over the exact ranges on this CPU. Otherwise wrest is unused (NULL).
 * An output tile is R positions x TW = NBT*VW channels (NBT vectors of VW lanes). */
#define CI (C_IN / P)
#define CO (C_OUT / P)
#define TW (NBT * VW)
#define NT (C_OUT / TW)
#define NTW ((WO - RT) / R + 1)          /* tiles per output row; the last one has RT columns */

#ifndef EXACT_BASE
#define EXACT_BASE 0
#endif
/* EXACT_BASE (SPAN tiles with C_IN == C_OUT, so chunk k of the outputs reads inputs of the same
 * indices): the base sum is computed at its exact MACs. The VW inputs a vector's chunks read
 * are one vector load; lane l needs input chunk_start(l) + q for q < CI, i.e. a constant
 * shuffle of that vector, times a packed weight (C_OUT/TW, KH, KW, CI, TW) whose lane l holds
 * W[o_l, chunk_start(o_l) + q]. CI FMAs per tap and position instead of C_IN. */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

typedef float vec __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t ivec __attribute__((vector_size(VW * 4), aligned(4)));

/* Input-channel ranges of output tile ot's base and remaining sums. */
static inline void channel_ranges(int ot, int base[2], int rest[4]) {
    if (SPAN) { base[0] = 0; base[1] = C_IN; rest[0] = rest[1] = 0; rest[2] = 0; rest[3] = C_IN; return; }
    if (P == 1) { base[0] = 0; base[1] = C_IN; rest[0] = rest[1] = rest[2] = rest[3] = 0; return; }
    int chunk = GROUPED ? (ot * TW) / CO : 0;
    base[0] = chunk * CI; base[1] = base[0] + CI;
    rest[0] = 0; rest[1] = base[0]; rest[2] = base[1]; rest[3] = C_IN;
}

/* acc[b][j] += sum over taps and channels c0..c1 of x[position j] * w[block b]: per channel one
 * weight vector per block and one broadcast input per position, NBT*RR FMAs. */
#define DEFINE_TILE_(RR)                                                                       \
static inline void accum_##RR(vec acc[NBT][RR], const float *xb, const float *wt, int c0,     \
                              int c1) {                                                        \
    for (int kh = 0; kh < KH; kh++)                                                            \
        for (int kw = 0; kw < KW; kw++) {                                                      \
            const float *xp = xb + (kh * DH * WP + kw * DW) * C_IN;                            \
            const float *wp = wt + (kh * KW + kw) * C_IN * TW;                                 \
            for (int c = c0; c < c1; c++) {                                                    \
                _Pragma("GCC unroll 4")                                                        \
                for (int b = 0; b < NBT; b++) {                                                \
                    const vec w = *(const vec *)(wp + c * TW + b * VW);                         \
                    _Pragma("GCC unroll 16")                                                   \
                    for (int j = 0; j < RR; j++) acc[b][j] += xp[j * SW * C_IN + c] * w;       \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
}                                                                                              \
static inline void accum_base_##RR(vec acc[NBT][RR], const float *xb, const float *wb, int ot) { \
    for (int kh = 0; kh < KH; kh++)                                                            \
        for (int kw = 0; kw < KW; kw++) {                                                      \
            const float *xp = xb + (kh * DH * WP + kw * DW) * C_IN + ot * TW;                  \
            const float *wp = wb + (kh * KW + kw) * CI * TW;                                   \
            for (int b = 0; b < NBT; b++)                                                      \
                _Pragma("GCC unroll 16")                                                       \
                for (int j = 0; j < RR; j++) {                                                 \
                    vec xv;                                                                    \
                    memcpy(&xv, xp + j * SW * C_IN + b * VW, sizeof xv);                       \
                    _Pragma("GCC unroll 16")                                                   \
                    for (int q = 0; q < CI; q++) {                                             \
                        ivec idx;                                                              \
                        for (int l = 0; l < VW; l++) idx[l] = (l / CO) * CO + q;               \
                        const vec w = *(const vec *)(wp + q * TW + b * VW);                    \
                        acc[b][j] += __builtin_shuffle(xv, idx) * w;                           \
                    }                                                                          \
                }                                                                              \
        }                                                                                      \
}                                                                                              \
/* One tile of RR positions x TW channels; returns 1 when its conditional pass ran. */         \
static inline int tile_##RR(const float *xb, const float *wt, const float *wr, int ot,         \
                            const float *bias,                                                 \
                            const float *tau, const float *isg, float *out, uint8_t *gate) {   \
    int base[2], rest[4];                                                                      \
    channel_ranges(ot, base, rest);                                                            \
    vec acc[NBT][RR];                                                                          \
    ivec on[NBT][RR];                                                                          \
    ivec any = {0};                                                                            \
    for (int b = 0; b < NBT; b++) {                                                            \
        vec bv = {0};                                                                          \
        if (bias) memcpy(&bv, bias + b * VW, sizeof bv);                                       \
        for (int j = 0; j < RR; j++) acc[b][j] = bv;                                           \
    }                                                                                          \
    if (EXACT_BASE) accum_base_##RR(acc, xb, wt, ot);                                          \
    else accum_##RR(acc, xb, wt, base[0], base[1]);                                            \
    for (int b = 0; b < NBT; b++) {                                                            \
        vec tv, iv;                                                                            \
        memcpy(&tv, tau + b * VW, sizeof tv);                                                  \
        memcpy(&iv, isg + b * VW, sizeof iv);                                                  \
        for (int j = 0; j < RR; j++) {                                                         \
            if (G == 1) {                                                                      \
                on[b][j] = acc[b][j] > tv;                                                     \
            } else {                                                                           \
                vec s = (acc[b][j] - tv) * iv;                                                 \
                for (int g0 = 0; g0 < VW; g0 += G) {                                           \
                    float sum = 0.f;                                                           \
                    for (int l = 0; l < G; l++) sum += s[g0 + l];                              \
                    int32_t d = (sum / G) > 0.f ? -1 : 0;                                      \
                    for (int l = 0; l < G; l++) on[b][j][g0 + l] = d;                          \
                }                                                                              \
            }                                                                                  \
            any |= on[b][j];                                                                   \
        }                                                                                      \
    }                                                                                          \
    int active = 0;                                                                            \
    for (int l = 0; l < VW; l++) active |= any[l];                                             \
    if (active && P > 1) {                                                                     \
        vec r[NBT][RR];                                                                        \
        for (int b = 0; b < NBT; b++)                                                          \
            for (int j = 0; j < RR; j++) r[b][j] = (vec){0};                                   \
        accum_##RR(r, xb, wr, rest[0], rest[1]);                                               \
        accum_##RR(r, xb, wr, rest[2], rest[3]);                                               \
        for (int b = 0; b < NBT; b++)                                                          \
            for (int j = 0; j < RR; j++) acc[b][j] += (vec)((ivec)r[b][j] & on[b][j]);         \
    }                                                                                          \
    for (int j = 0; j < RR; j++)                                                               \
        for (int b = 0; b < NBT; b++) {                                                        \
            memcpy(out + j * C_OUT + b * VW, &acc[b][j], sizeof acc[b][j]);                    \
            if (gate)                                                                          \
                for (int l = 0; l < VW; l++) gate[j * C_OUT + b * VW + l] = on[b][j][l] ? 1 : 0; \
        }                                                                                      \
    return active && P > 1;                                                                    \
}

#define DEFINE_TILE(RR) DEFINE_TILE_(RR)
DEFINE_TILE(R)
#if RT != R
DEFINE_TILE(RT)
#endif

/* Output tile ot at position tile t (row-major over n*HO rows of NTW tiles). */
static inline int do_tile(const float *x, const float *w, const float *wrest, const float *bias,
                          const float *tau,
                          const float *isg, float *out, uint8_t *gate, int ot, long long t) {
    const long long row = t / NTW;
    const int tw = (int)(t % NTW);
    const int img = (int)(row / HO), oh = (int)(row % HO), ow0 = tw * R;
    const float *xb = x + (((long long)img * HP + oh * SH) * WP + ow0 * SW) * C_IN;
    const long long o = (row * WO + ow0) * C_OUT + ot * TW;
    const float *wt = w + (long long)ot * KH * KW * (EXACT_BASE ? CI : C_IN) * TW;
    const float *wr = SPAN ? wrest + (long long)ot * KH * KW * C_IN * TW : wt;
    const float *bt = bias ? bias + ot * TW : 0;
    uint8_t *gt = gate ? gate + o : 0;
#if RT != R
    if (tw == NTW - 1) return CAT(tile_, RT)(xb, wt, wr, ot, bt, tau + ot * TW, isg + ot * TW, out + o, gt);
#endif
    return CAT(tile_, R)(xb, wt, wr, ot, bt, tau + ot * TW, isg + ot * TW, out + o, gt);
}

/* x: padded NHWC (n, HP, WP, C_IN); w (and wrest when SPAN): packed (C_OUT/TW, KH, KW, C_IN, TW); bias, tau, isg:
 * (C_OUT); out: NHWC (n, HO, WO, C_OUT); gate: NHWC uint8 or NULL. Returns the number of tiles
 * (R or RT positions x TW channels) whose conditional pass ran. */
long long gated_conv(const float *x, const float *w, const float *wrest, const float *bias,
                     const float *tau, const float *isg, float *out, uint8_t *gate, int n,
                     int nthreads) {
    const long long rows = (long long)n * HO;
    long long ran = 0;
    /* Each thread takes whole output-channel tiles (static split of ot-major order), so its
     * share of the weights stays in its own L2 while the input streams past; measured faster
     * than position-major orders on every ResNet-18 layer shape here (2 threads). */
    #pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+:ran)
    for (long long u = 0; u < NT * rows * NTW; u++)
        ran += do_tile(x, w, wrest, bias, tau, isg, out, gate, (int)(u / (rows * NTW)), u % (rows * NTW));
    return ran;
}
