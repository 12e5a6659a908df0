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

/* Required constants: C_IN C_OUT KH KW SH SW DH DW HP WP HO WO P GROUPED VW NBT G R SPAN
 * POS_MAJOR.
 * SPAN: a tile holds several output chunks of a grouped base path (chunks narrower than a
 * vector). Base and remaining sums then run over all input channels with pre-masked weights
 * (w = W*M, wrest = W*(1-M)): twice the dense MACs, but full-width vectors, which beats
 * 4-lane vectors over the exact ranges on this CPU. Otherwise wrest is unused (NULL).
 * An output tile is R consecutive output positions (in N*HO*WO order, so a tile may span
 * rows and images) x TW = NBT*VW channels (NBT vectors of VW lanes). Every tile but the last
 * holds R positions, so every tile keeps R*NBT independent accumulators in flight (row tiles
 * left 3-4 positions at the end of 7- and 14-wide rows: 6-8 FMA chains on AVX2, whose FMA
 * latency needs about 10 to stay busy). */
#define CI (C_IN / P)
#define CO (C_OUT / P)
#define TW (NBT * VW)
#define NT (C_OUT / TW)

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

/* The gate of one vector of base sums y: all-ones lanes where on (G == 1: y > tau; else the
 * mean over each group of G lanes of (y - tau) * inv_sigma > 0). */
static inline ivec gate_of(vec y, vec tv, vec iv) {
    if (G == 1) return y > tv;
    const vec s = (y - tv) * iv;
    ivec on;
    for (int g0 = 0; g0 < VW; g0 += G) {
        float sum = 0.f;
        for (int l = 0; l < G; l++) sum += s[g0 + l];
        const int32_t d = (sum / G) > 0.f ? -1 : 0;
        for (int l = 0; l < G; l++) on[g0 + l] = d;
    }
    return on;
}

/* acc[b][j] += sum over taps and channels c0..c1 of x[position j] * w[block b]: per channel one
 * weight vector per block and one broadcast input per position, NBT*RR FMAs. */
#define DEFINE_TILE_(RR)                                                                       \
static inline void accum_##RR(vec acc[NBT][RR], const float *const xs[RR], const float *wt,   \
                              int c0, int c1) {                                                \
    for (int kh = 0; kh < KH; kh++)                                                            \
        for (int kw = 0; kw < KW; kw++) {                                                      \
            const int tap = (kh * DH * WP + kw * DW) * C_IN;                                   \
            const float *wp = wt + (kh * KW + kw) * C_IN * TW;                                 \
            for (int c = c0; c < c1; c++) {                                                    \
                /* NBT weight vectors, then per position one broadcast feeding NBT FMAs: */    \
                /* RR*NBT accumulators + NBT weights + 1 broadcast fit 16 ymm at 6x2. */       \
                vec w[NBT];                                                                    \
                _Pragma("GCC unroll 4")                                                        \
                for (int b = 0; b < NBT; b++) w[b] = *(const vec *)(wp + c * TW + b * VW);     \
                _Pragma("GCC unroll 16")                                                       \
                for (int j = 0; j < RR; j++) {                                                 \
                    const float xv = xs[j][tap + c];                                           \
                    _Pragma("GCC unroll 4")                                                    \
                    for (int b = 0; b < NBT; b++) acc[b][j] += xv * w[b];                      \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
}                                                                                              \
static inline void accum_base_##RR(vec acc[NBT][RR], const float *const xs[RR], const float *wb, \
                                   int ot) {                                                   \
    for (int kh = 0; kh < KH; kh++)                                                            \
        for (int kw = 0; kw < KW; kw++) {                                                      \
            const int tap = (kh * DH * WP + kw * DW) * C_IN + ot * TW;                         \
            const float *wp = wb + (kh * KW + kw) * CI * TW;                                   \
            for (int b = 0; b < NBT; b++)                                                      \
                _Pragma("GCC unroll 16")                                                       \
                for (int j = 0; j < RR; j++) {                                                 \
                    vec xv;                                                                    \
                    memcpy(&xv, xs[j] + tap + b * VW, sizeof xv);                              \
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
/* One tile of RR positions (input windows xs[j]) x TW channels, of which the first nv are     \
 * real (the others repeat the last real one and are not stored); returns 1 when its          \
 * conditional pass ran. */                                                                    \
static inline int tile_##RR(const float *const xs[RR], int nv, const float *wt,                \
                            const float *wr, int ot, const float *bias,                        \
                            const float *tau, const float *isg, float *out, uint8_t *gate) {   \
    int base[2], rest[4];                                                                      \
    channel_ranges(ot, base, rest);                                                            \
    vec acc[NBT][RR];                                                                          \
    ivec any = {0};                                                                            \
    for (int b = 0; b < NBT; b++) {                                                            \
        vec bv = {0};                                                                          \
        if (bias) memcpy(&bv, bias + b * VW, sizeof bv);                                       \
        for (int j = 0; j < RR; j++) acc[b][j] = bv;                                           \
    }                                                                                          \
    if (EXACT_BASE) accum_base_##RR(acc, xs, wt, ot);                                          \
    else accum_##RR(acc, xs, wt, base[0], base[1]);                                            \
    /* Yp goes to out now and the gate is recomputed from it after the conditional pass, so    \
     * neither Yp nor the masks hold registers while the remaining sum accumulates. */         \
    for (int b = 0; b < NBT; b++) {                                                            \
        vec tv, iv;                                                                            \
        memcpy(&tv, tau + b * VW, sizeof tv);                                                  \
        memcpy(&iv, isg + b * VW, sizeof iv);                                                  \
        for (int j = 0; j < RR; j++) {                                                         \
            const ivec on = gate_of(acc[b][j], tv, iv);                                        \
            any |= on;                                                                         \
            if (j >= nv) continue;                                                             \
            memcpy(out + j * C_OUT + b * VW, &acc[b][j], sizeof acc[b][j]);                    \
            if (gate)                                                                          \
                for (int l = 0; l < VW; l++) gate[j * C_OUT + b * VW + l] = on[l] ? 1 : 0;     \
        }                                                                                      \
    }                                                                                          \
    int active = 0;                                                                            \
    for (int l = 0; l < VW; l++) active |= any[l];                                             \
    if (active && P > 1) {                                                                     \
        vec r[NBT][RR];                                                                        \
        for (int b = 0; b < NBT; b++)                                                          \
            for (int j = 0; j < RR; j++) r[b][j] = (vec){0};                                   \
        accum_##RR(r, xs, wr, rest[0], rest[1]);                                               \
        accum_##RR(r, xs, wr, rest[2], rest[3]);                                               \
        for (int b = 0; b < NBT; b++) {                                                        \
            vec tv, iv;                                                                        \
            memcpy(&tv, tau + b * VW, sizeof tv);                                              \
            memcpy(&iv, isg + b * VW, sizeof iv);                                              \
            for (int j = 0; j < nv; j++) {                                                     \
                vec y;                                                                         \
                memcpy(&y, out + j * C_OUT + b * VW, sizeof y);                                \
                y += (vec)((ivec)r[b][j] & gate_of(y, tv, iv));                                \
                memcpy(out + j * C_OUT + b * VW, &y, sizeof y);                                \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    return active && P > 1;                                                                    \
}

#define DEFINE_TILE(RR) DEFINE_TILE_(RR)
DEFINE_TILE(R)

/* Output tile ot at position tile t: flat output positions t*R .. t*R+R-1 of m in all. */
static inline int do_tile(const float *x, const float *w, const float *wrest, const float *bias,
                          const float *tau, const float *isg, float *out, uint8_t *gate, int ot,
                          long long t, long long m) {
    const long long p0 = t * R;
    const int nv = (int)(m - p0 < R ? m - p0 : R);
    const float *xs[R];
    for (int j = 0; j < R; j++) {
        const long long p = p0 + (j < nv ? j : nv - 1);
        const long long img = p / (HO * WO);
        const int r = (int)(p - img * (HO * WO)), oh = r / WO, ow = r % WO;
        xs[j] = x + ((img * HP + oh * SH) * WP + (long long)ow * SW) * C_IN;
    }
    const long long o = p0 * C_OUT + ot * TW;
    const float *wt = w + (long long)ot * KH * KW * (EXACT_BASE ? CI : C_IN) * TW;
    const float *wr = SPAN ? wrest + (long long)ot * KH * KW * C_IN * TW : wt;
    const float *bt = bias ? bias + ot * TW : 0;
    uint8_t *gt = gate ? gate + o : 0;
    return CAT(tile_, R)(xs, nv, wt, wr, ot, bt, tau + ot * TW, isg + ot * TW, out + o, gt);
}

/* x: padded NHWC (n, HP, WP, C_IN); w (and wrest when SPAN): packed (C_OUT/TW, KH, KW, C_IN, TW); bias, tau, isg:
 * (C_OUT); out: NHWC (n, HO, WO, C_OUT); gate: NHWC uint8 or NULL. Returns the number of tiles
 * (R positions, fewer in the last, x TW channels) whose conditional pass ran. */
long long gated_conv(const float *x, const float *w, const float *wrest, const float *bias,
                     const float *tau, const float *isg, float *out, uint8_t *gate, int n,
                     int nthreads) {
    const long long m = (long long)n * HO * WO, tiles = (m + R - 1) / R;
    long long ran = 0;
    /* POS_MAJOR (weights small enough to stay in L2): each position tile runs all its channel
     * tiles in turn, so the input is read from memory once. Otherwise each thread takes whole
     * output-channel tiles (static split of ot-major order), so its share of the weights stays
     * in its own L2 while the input streams past, once per channel tile. */
    #pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+:ran)
    for (long long u = 0; u < NT * tiles; u++)
        ran += POS_MAJOR ? do_tile(x, w, wrest, bias, tau, isg, out, gate, (int)(u % NT), u / NT, m)
                         : do_tile(x, w, wrest, bias, tau, isg, out, gate, (int)(u / tiles), u % tiles, m);
    return ran;
}

/* ---- block gates (gate tile BH x BW positions x BG channels, one decision per block) ------
 * The decision needs the mean score of a whole block, which spans rows, so it cannot be taken
 * tile by tile as above. Block gates run in two passes: gated_conv with every gate off writes
 * Yp, the caller averages it per block and lists the blocks that are on, and block_rest adds
 * the remaining partial sum to exactly those blocks (kernels/cpu_fused.py:run_blocks). */
#ifndef BH
#define BH 1
#define BW 1
#define BG TW
#endif
#define BCT (BG / TW)                     /* channel tiles per block */

/* out[pos_j] += remaining partial sum of channel tile ot, at the positions of xs/os. */
static inline void rest_tile(const float *const xs[R], float *const os[R], int nv,
                             const float *wr, int ot) {
    int base[2], rest[4];
    channel_ranges(ot, base, rest);
    vec r[NBT][R];
    for (int b = 0; b < NBT; b++)
        for (int j = 0; j < R; j++) r[b][j] = (vec){0};
    CAT(accum_, R)(r, xs, wr, rest[0], rest[1]);
    CAT(accum_, R)(r, xs, wr, rest[2], rest[3]);
    for (int j = 0; j < nv; j++)
        for (int b = 0; b < NBT; b++) {
            vec y;
            memcpy(&y, os[j] + b * VW, sizeof y);
            y += r[b][j];
            memcpy(os[j] + b * VW, &y, sizeof y);
        }
}

/* x: padded NHWC input, w/wrest: gated_conv's packed weights, out: NHWC Yp (updated in place);
 * blocks: (k, 4) int32 rows (image, first channel, first row, first column) of the blocks that
 * are on, BG a multiple of TW. A block's positions (clipped at the map's edge) run in flat
 * groups of R, so a 7x7 block is 8 full tiles of 6 and one of 1, not 7 row tiles of 6 and 1. */
void block_rest(const float *x, const float *w, const float *wrest, float *out,
                const int32_t *blocks, long long k, int nthreads) {
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (long long u = 0; u < k * BCT; u++) {
        const int32_t *blk = blocks + 4 * (u / BCT);
        const int img = blk[0], oh0 = blk[2], ow0 = blk[3];
        const int ot = blk[1] / TW + (int)(u % BCT);
        const int bh = HO - oh0 < BH ? HO - oh0 : BH, bw = WO - ow0 < BW ? WO - ow0 : BW;
        const int npos = bh * bw;
        const float *wr = (SPAN ? wrest : w) + (long long)ot * KH * KW * C_IN * TW;
        for (int q0 = 0; q0 < npos; q0 += R) {
            const int nv = npos - q0 < R ? npos - q0 : R;
            const float *xs[R];
            float *os[R];
            for (int j = 0; j < R; j++) {
                const int q = q0 + (j < nv ? j : nv - 1);
                const int oh = oh0 + q / bw, ow = ow0 + q % bw;
                xs[j] = x + (((long long)img * HP + oh * SH) * WP + (long long)ow * SW) * C_IN;
                os[j] = out + (((long long)img * HO + oh) * WO + ow) * C_OUT + ot * TW;
            }
            rest_tile(xs, os, nv, wr, ot);
        }
    }
}
