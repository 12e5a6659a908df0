/* Fused conditional partial-sum convolution for the CPU (CGNet inference).
 *
 * One pass over output tiles does base partial sum -> gate compare -> conditional pass:
 * the remaining-channel sum of a tile (RH x RW output positions x TW output channels) is
 * computed only when at least one of its gates is on, while its input window is still in L1. A
 * direct convolution on the NHWC (channels-last) input: each tile first copies the input
 * window it reads (zeros in the padding, see fill_window), so no padded copy of the whole input
 * is made; each FMA multiplies one broadcast input value with a VW-wide vector of
 * output-channel weights; the NBT*R accumulators stay in registers, and each broadcast feeds
 * NBT FMAs.
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

/* Required constants: C_IN C_OUT KH KW SH SW PH PW DH DW H W HO WO P GROUPED VW NBT G R SPAN
 * POS_MAJOR.
 * SPAN: a tile holds several output chunks of a grouped base path (chunks narrower than a
 * vector). Base and remaining sums then run over all input channels with pre-masked weights
 * (w = W*M, wrest = W*(1-M)): twice the dense MACs, but full-width vectors, which beats
 * 4-lane vectors over the exact ranges on this CPU. Otherwise wrest is unused (NULL).
 * An output tile is RH x RW output positions (R = RH * RW, see below) x TW = NBT*VW channels
 * (NBT vectors of VW lanes): R*NBT independent accumulators in flight. */
#define CI (C_IN / P)
#define CO (C_OUT / P)
#define TW (NBT * VW)
#define NT (C_OUT / TW)

#ifndef EXACT_BASE
#define EXACT_BASE 0
#endif
#ifndef PREFIX
#define PREFIX 0
#endif
/* PREFIX (per-element builds; the "prefix" path, offered where the fused tiles below span
 * chunks or are narrower, kernels/cpu_fused.py): the whole conv at dense MACs in one pass,
 * the base sums taken on the way. The input chunks are summed in order with the
 * unmasked weights (w, plain packing), and after chunk k the lanes of output chunk k take
 * Yp = bias + (sum after chunk k - sum before it) (without GROUPED every lane takes chunk 0's).
 * Vectors may hold lanes of several chunks. Nothing is skipped (every remaining sum is
 * computed), so it is for gates that leave no tile all-off (per-element gates at any density):
 * there SPAN's masked base and remaining sums cost (C_IN + C_IN/P) FMAs, or 2 C_IN without
 * EXACT_BASE, per tap and position, PREFIX C_IN. The difference of two partial sums rounds at
 * the scale of the whole sum, not of Yp: decisions can differ from the direct sum only within
 * that rounding of the threshold. */

/* EXACT_BASE (SPAN tiles with C_IN == C_OUT, so chunk k of the outputs reads inputs of the same
 * indices): the base sum is computed at its exact MACs. The VW inputs a vector's chunks read
 * are one vector load; lane l needs input chunk_start(l) + q for q < CI, i.e. a constant
 * shuffle of that vector, times a packed weight (C_OUT/TW, KH, KW, CI, TW) whose lane l holds
 * W[o_l, chunk_start(o_l) + q]. CI FMAs per tap and position instead of C_IN. */

typedef float vec __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t ivec __attribute__((vector_size(VW * 4), aligned(4)));
typedef float vec_mem __attribute__((vector_size(VW * 4), aligned(4), may_alias));

/* One unaligned vector load / store. Not memcpy: with GCC's default 256-bit preference on
 * AVX-512 targets a 64-byte memcpy became two ymm moves through a stack slot, then one zmm
 * reload (a store-forwarding stall on every output update of the remaining-sum loop). */
static inline vec vload(const float *p) { return *(const vec_mem *)p; }
static inline void vstore(float *p, vec v) { *(vec_mem *)p = v; }

/* Output tiles are RH x RW rectangles of output positions (R = RH * RW, in row-major order
 * j = jh * RW + jw). Before a tile's sums run, the input window they read (WR rows x WC columns
 * x C_IN, zeros where it lies in the padding or past the map) is copied into one contiguous
 * buffer, one memcpy per row: every FMA then reads its input at a compile-time offset from the
 * buffer. Until 2026-12-05 tiles were R consecutive positions whose per-tap addresses were
 * recomputed, bounds-checked and reloaded per position; on 16-32-channel layers that address
 * work, not the FMAs, bounded the loop (16->16 @28, base pass at p = 4: ~25 % of the FMA rate). */
#ifndef RH
#define RH 1
#endif
#define RW (R / RH)
#define THN ((HO + RH - 1) / RH)
#define TWN ((WO + RW - 1) / RW)
/* The window: WR x WC input positions. Per-element builds: one tile's. Block-gate builds: one
 * whole gate block's (its tile rows and columns rounded up to whole tiles), filled once per
 * block and read by every tile of it, for the base and the remaining sums: a tile at (sh, sw)
 * inside the block starts at tile_at(buf, sh, sw). */
#ifdef BH
#define WR ((((BH + RH - 1) / RH) * RH - 1) * SH + (KH - 1) * DH + 1)
#define WC ((((BW + RW - 1) / RW) * RW - 1) * SW + (KW - 1) * DW + 1)
#else
#define WR ((RH - 1) * SH + (KH - 1) * DH + 1)
#define WC ((RW - 1) * SW + (KW - 1) * DW + 1)
#endif

typedef struct {
    float buf[WR * WC * C_IN] __attribute__((aligned(64)));
} window;

/* Copy the input window (WR x WC input positions x C_IN) whose first output position is
 * (img, oh0, ow0) into wn. */
static inline void fill_window(const float *x, window *wn, long long img, int oh0, int ow0) {
    const int ih0 = oh0 * SH - PH, iw0 = ow0 * SW - PW;
    const int lo = iw0 < 0 ? (-iw0 < WC ? -iw0 : WC) : 0;   /* buffer columns before the map */
    const int hi = W - iw0 < WC ? (W - iw0 > lo ? W - iw0 : lo) : WC;   /* ... and from here on after it */
    for (int r = 0; r < WR; r++) {
        float *dst = wn->buf + r * WC * C_IN;
        const int ih = ih0 + r;
        if ((unsigned)ih >= (unsigned)H || hi == lo) {
            memset(dst, 0, sizeof(float) * WC * C_IN);
            continue;
        }
        const float *src = x + ((img * H + ih) * W + iw0 + lo) * (long long)C_IN;  /* column lo */
        if (lo == 0 && hi == WC) {          /* interior: a fixed-size copy the compiler inlines */
            memcpy(dst, src, sizeof(float) * WC * C_IN);
            continue;
        }
        if (lo) memset(dst, 0, sizeof(float) * lo * C_IN);
        memcpy(dst + lo * C_IN, src, sizeof(float) * (hi - lo) * C_IN);
        if (hi < WC) memset(dst + hi * C_IN, 0, sizeof(float) * (WC - hi) * C_IN);
    }
}

/* The input of tap (kh, kw) of position j of the tile starting at xw is at
 * tap(xw, kh, kw)[POFF(j)]: one pointer per tap and compile-time offsets per position. (An
 * array of per-position pointers
 * let GCC keep one induction variable per position in loops over a non-unrolled channel
 * range: 14 index registers, spilled and reloaded inside the FMA loop.) */
#define POFF(j) ((((j) / RW) * SH * WC + ((j) % RW) * SW) * C_IN)
static inline const float *tap(const float *xw, int kh, int kw) {
    return xw + (kh * DH * WC + kw * DW) * C_IN;
}
/* The first input of the tile at output offset (sh, sw) from the window's origin. */
static inline const float *tile_at(const window *wn, int sh, int sw) {
    return wn->buf + (sh * SH * WC + sw * SW) * C_IN;
}

/* Flat output index (n, HO, WO order) of each position of the tile at (img, oh0, ow0), or -1
 * where the position lies outside the map or beyond the row/column limits lh, lw (a block's
 * clipped extent, relative to the tile origin). */
static inline void positions(long long img, int oh0, int ow0, int lh, int lw, long long pos[R]) {
    for (int j = 0; j < R; j++) {
        const int jh = j / RW, jw = j % RW;
        pos[j] = (jh < lh && jw < lw && oh0 + jh < HO && ow0 + jw < WO)
                     ? (img * HO + oh0 + jh) * WO + ow0 + jw : -1;
    }
}

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

/* CU: unroll of the channel loop below (kernels/cpu_fused.py picks it per target and tile). One
 * pass of the loop is R*NBT FMAs plus a counter, two pointer steps and a branch; on Intel cores
 * those integer ops issue to the same two ports as 256-bit FMAs, so unrolling 4x took
 * ResNet-18's AVX2 layers from 0.87-1.00 to 0.95-1.07 of oneDNN (SPR, 2 threads, batch 8).
 * With AVX-512's 28-accumulator tiles it made GCC spill (ResNet-18: 0.62-0.88 instead of
 * 1.03-1.28 on six of its seven layers). */
#define PRAGMA_(x) _Pragma(#x)
#define UNROLL_(n) PRAGMA_(GCC unroll n)   /* one level more, so that CU expands first */
#if defined(CU) && CU > 1
#define CHANNEL_UNROLL UNROLL_(CU)
#else   /* no pragma at all: "unroll 1" would also stop GCC peeling short constant-trip loops */
#define CHANNEL_UNROLL
#endif

/* acc[b][j] += sum over taps and channels c0..c1 of x[position j] * w[block b]: per channel NBT
 * weight vectors, then per position one broadcast feeding NBT FMAs (R*NBT accumulators + NBT
 * weights + 1 broadcast fit the 16 ymm of AVX2 at 6x2). */
static inline void accum(vec acc[NBT][R], const float *xw, const float *wt,
                         int c0, int c1, int nj) {
    for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++) {
            const float *xt = tap(xw, kh, kw);
            const float *wp = wt + (kh * KW + kw) * C_IN * TW;
            CHANNEL_UNROLL
            for (int c = c0; c < c1; c++) {
                vec w[NBT];
                _Pragma("GCC unroll 4")
                for (int b = 0; b < NBT; b++) w[b] = *(const vec *)(wp + c * TW + b * VW);
                _Pragma("GCC unroll 16")
                for (int j = 0; j < nj; j++) {
                    const float xv = xt[POFF(j) + c];
                    _Pragma("GCC unroll 4")
                    for (int b = 0; b < NBT; b++) acc[b][j] += xv * w[b];
                }
            }
        }
}

static inline void accum_base(vec acc[NBT][R], const float *xw, const float *wb,
                              int ot, int nj) {
    for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++) {
            const float *xt = tap(xw, kh, kw);
            const float *wp = wb + (kh * KW + kw) * CI * TW;
            for (int b = 0; b < NBT; b++)
                _Pragma("GCC unroll 16")
                for (int j = 0; j < nj; j++) {
                    vec xv;
                    xv = vload(xt + POFF(j) + ot * TW + b * VW);
                    _Pragma("GCC unroll 16")
                    for (int q = 0; q < CI; q++) {
                        ivec idx;
                        for (int l = 0; l < VW; l++) idx[l] = (l / CO) * CO + q;
                        const vec w = *(const vec *)(wp + q * TW + b * VW);
                        acc[b][j] += __builtin_shuffle(xv, idx) * w;
                    }
                }
        }
}

/* r = the remaining partial sum of the tile: its two input-channel ranges (channel_ranges). */
static inline void rest_sum(vec r[NBT][R], const float *xw, const float *wr,
                            const int rest[4], int nj) {
    for (int b = 0; b < NBT; b++)
        for (int j = 0; j < nj; j++) r[b][j] = (vec){0};
    accum(r, xw, wr, rest[0], rest[1], nj);
    accum(r, xw, wr, rest[2], rest[3], nj);
}

/* SPAN base sum without EXACT_BASE: a vector holds VW/CO whole output chunks, whose base inputs
 * are one contiguous range of SL = VW/CO*CI channels, so vector b loops over its own range
 * (the masked weights zero the other chunks' lanes) instead of all C_IN: half the base FMAs
 * of 16-channel layers at p = 4. The vectors of a tile read different channels, so each
 * position's broadcast feeds one FMA. */
#define SL ((VW / (CO < VW ? CO : VW)) * CI)
static inline void accum_span_base(vec acc[NBT][R], const float *xw,
                                   const float *wt, int ot, int nj) {
    int c0[NBT];
    for (int b = 0; b < NBT; b++) c0[b] = ((ot * TW + b * VW) / CO) * CI;
    for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++) {
            const float *xt = tap(xw, kh, kw);
            const float *wp = wt + (kh * KW + kw) * C_IN * TW;
            for (int q = 0; q < SL; q++) {
                vec w[NBT];
                _Pragma("GCC unroll 4")
                for (int b = 0; b < NBT; b++) w[b] = *(const vec *)(wp + (c0[b] + q) * TW + b * VW);
                _Pragma("GCC unroll 16")
                for (int j = 0; j < nj; j++)
                    _Pragma("GCC unroll 4")
                    for (int b = 0; b < NBT; b++) acc[b][j] += xt[POFF(j) + c0[b] + q] * w[b];
            }
        }
}

#if PREFIX
/* acc = the whole conv (bias included), yp = Yp, of the tile at xw, channel tile ot. After input
 * chunk k, acc = bias + S_k; a lane of output chunk c needs bias + S_c - S_(c-1), so yp starts
 * at bias (0 for chunk 0's lanes) and after chunk k takes one FMA, yp += acc * coef_k, with
 * coef_k = +1 on chunk k's lanes (their sum is complete) and -1 on chunk k+1's (theirs starts
 * now). Without GROUPED every lane is chunk 0's: one FMA after chunk 0. (Until 2026-12-05 a
 * copy of the previous sums, a subtraction, an add and a blend per position and chunk: 4 ops
 * and R more live vectors for this one.) */
static inline void prefix_sums(vec acc[NBT][R], vec yp[NBT][R], const float *xw, const float *wt,
                               int ot, const float *bias, int nj) {
    for (int b = 0; b < NBT; b++) {
        const vec bv = bias ? vload(bias + ot * TW + b * VW) : (vec){0};
        ivec rest;   /* the lanes of chunks after the first */
        for (int l = 0; l < VW; l++) rest[l] = (GROUPED && (ot * TW + b * VW + l) / CO > 0) ? -1 : 0;
        const vec y0 = (vec)((ivec)bv & rest);
        for (int j = 0; j < R; j++) {
            acc[b][j] = bv;
            yp[b][j] = y0;
        }
    }
    for (int k = 0; k < P; k++) {
        accum(acc, xw, wt, k * CI, (k + 1) * CI, nj);
        if (!GROUPED && k > 0) continue;
        for (int b = 0; b < NBT; b++) {
            vec coef;
            int any = 0;
            for (int l = 0; l < VW; l++) {
                const int c = GROUPED ? (ot * TW + b * VW + l) / CO : 0;
                coef[l] = (float)((c == k) - (c == k + 1));
                any |= coef[l] != 0.f;
            }
            if (!any) continue;   /* a vector inside one wide chunk: only its own two boundaries */
            for (int j = 0; j < nj; j++) yp[b][j] += acc[b][j] * coef;
        }
    }
}
#endif

/* acc = Yp (bias + base partial sum) of the tile whose input starts at xw, channel tile ot. */
static inline void base_sum(vec acc[NBT][R], const float *xw, const float *wt, int ot,
                            const float *bias, int nj) {
    int base[2], rest[4];
    channel_ranges(ot, base, rest);
    for (int b = 0; b < NBT; b++) {
        vec bv = {0};
        if (bias) bv = vload(bias + ot * TW + b * VW);
        for (int j = 0; j < nj; j++) acc[b][j] = bv;
    }
    if (EXACT_BASE) accum_base(acc, xw, wt, ot, nj);
    else if (SPAN) accum_span_base(acc, xw, wt, ot, nj);
    else accum(acc, xw, wt, base[0], base[1], nj);
}

/* One tile (input from xw, flat output index pos[j] of position j, -1 where it is not stored;
 * sums computed for its first nj positions, pos[j] = -1 beyond) x TW channels starting at
 * channel ot*TW. With full (the whole conv, computed elsewhere, e.g. by oneDNN) the output
 * selects full where the gate is on and Yp elsewhere, and no remaining sum is computed.
 * Returns 1 when its conditional pass ran (always with PREFIX). */
static inline int tile(const float *xw, const long long pos[R], const float *wt,
                       const float *wr, int ot, const float *bias, const float *tau, const float *isg,
                       float *out, uint8_t *gate, const float *full, int nj) {
    int base[2], rest[4];
    channel_ranges(ot, base, rest);
    const int c0 = ot * TW;
    vec acc[NBT][R];
    ivec any = {0};
    /* PREFIX code is compiled out, not just dead, in the other builds: as dead code it made GCC
     * optimise the fused loops worse (16->16 @32, batch 64, 2 threads: 2.9 vs 1.9 ms). */
#if PREFIX
    vec yp[NBT][R];
    prefix_sums(acc, yp, xw, wt, ot, bias, nj);   /* acc = the whole conv */
#define YP(b, j) yp[b][j]
#else
    base_sum(acc, xw, wt, ot, bias, nj);
#define YP(b, j) acc[b][j]
#endif
    /* Yp goes to out now and the gate is recomputed from it after the conditional pass, so
     * neither Yp nor the masks hold registers while the remaining sum accumulates. */
    for (int b = 0; b < NBT; b++) {
        const vec tv = vload(tau + c0 + b * VW), iv = vload(isg + c0 + b * VW);
        _Pragma("GCC unroll 16")
        for (int j = 0; j < R; j++) {
            if (pos[j] < 0) continue;
            const long long o = pos[j] * C_OUT + c0 + b * VW;
            vec y = YP(b, j);
            const ivec on = gate_of(y, tv, iv);
            any |= on;
            if (PREFIX || full) {
                const vec f = PREFIX ? acc[b][j] : vload(full + o);
                y = (vec)(((ivec)f & on) | ((ivec)y & ~on));
            }
            vstore(out + o, y);
            if (gate)
                for (int l = 0; l < VW; l++) gate[o + l] = on[l] ? 1 : 0;
        }
    }
#undef YP
    int active = 0;
    for (int l = 0; l < VW; l++) active |= any[l];
    if (PREFIX) return 1;
    if (full || !active || P == 1) return 0;
    vec r[NBT][R];
    rest_sum(r, xw, wr, rest, nj);
    for (int b = 0; b < NBT; b++) {
        const vec tv = vload(tau + c0 + b * VW), iv = vload(isg + c0 + b * VW);
        _Pragma("GCC unroll 16")
        for (int j = 0; j < R; j++) {
            if (pos[j] < 0) continue;
            float *o = out + pos[j] * C_OUT + c0 + b * VW;
            const vec y = vload(o);
            vstore(o, y + (vec)((ivec)r[b][j] & gate_of(y, tv, iv)));
        }
    }
    return 1;
}

/* Packed weights of channel tile ot: base (w) and remaining (w, or wrest when SPAN) sums. */
static inline const float *base_weights(const float *w, int ot) {
    return w + (long long)ot * KH * KW * (EXACT_BASE ? CI : C_IN) * TW;
}
static inline const float *rest_weights(const float *w, const float *wrest, int ot) {
    return SPAN ? wrest + (long long)ot * KH * KW * C_IN * TW : w + (long long)ot * KH * KW * C_IN * TW;
}

#ifndef BH  /* the per-element kernel; block-gate builds compile only the block functions */
/* Position tile t (THN x TWN tiles per image, row-major): fill its window and positions. */
static inline void load_tile(const float *x, long long t, window *wn, long long pos[R]) {
    const long long img = t / (THN * TWN);
    const int rt = (int)(t - img * (THN * TWN));
    const int oh0 = (rt / TWN) * RH, ow0 = (rt % TWN) * RW;
    fill_window(x, wn, img, oh0, ow0);
    positions(img, oh0, ow0, RH, RW, pos);
}

/* Rows of the last tile row of the map when RH does not divide HO (7-row maps in 2-row tiles:
 * 1): those tiles run as MLRH-row tiles (their own unrolled copy of the loops) instead of
 * computing rows past the map and dropping them (1/8 of a 7-row map's FMAs). */
#define MLRH (HO % RH)
static inline int last_row_tile(long long t) {
    return MLRH && (int)((t % (THN * TWN)) / TWN) == THN - 1;
}

/* tile() for position tile t: at its full size, or as an MLRH-row tile in the last tile row. */
static inline int run_tile(const float *xw, long long t, const long long pos[R], const float *wt,
                           const float *wr, int ot, const float *bias, const float *tau,
                           const float *isg, float *out, uint8_t *gate, const float *full) {
    if (last_row_tile(t))
        return tile(xw, pos, wt, wr, ot, bias, tau, isg, out, gate, full, MLRH * RW);
    return tile(xw, pos, wt, wr, ot, bias, tau, isg, out, gate, full, R);
}

/* x: NHWC (n, H, W, C_IN); w (and wrest when SPAN): packed (C_OUT/TW, KH, KW, C_IN, TW); bias,
 * tau, isg: (C_OUT); out: NHWC (n, HO, WO, C_OUT); gate: NHWC uint8 or NULL; full: NULL, or the
 * whole conv in out's layout to select from (see tile). Returns the number of tiles (RH x RW
 * positions, clipped at the map's edge, x TW channels) whose conditional pass ran. */
long long gated_conv(const float *x, const float *w, const float *wrest, const float *bias,
                     const float *tau, const float *isg, float *out, uint8_t *gate,
                     const float *full, int n, int nthreads) {
    const long long tiles = (long long)n * THN * TWN;
    long long ran = 0;
    /* POS_MAJOR (weights small enough to stay in L2): each position tile fills its window once
     * and runs all its channel tiles, so the input is read from memory once. Otherwise each
     * thread takes whole output-channel tiles (static split of ot-major order), so its share of
     * the weights stays in its own L2 while the input streams past, once per channel tile. */
    if (POS_MAJOR) {
        #pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+:ran)
        for (long long t = 0; t < tiles; t++) {
            window wn;
            long long pos[R];
            load_tile(x, t, &wn, pos);
            for (int ot = 0; ot < NT; ot++)
                ran += run_tile(wn.buf, t, pos, base_weights(w, ot), rest_weights(w, wrest, ot), ot,
                                bias, tau, isg, out, gate, full);
        }
    } else {
        #pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+:ran)
        for (long long u = 0; u < NT * tiles; u++) {
            const int ot = (int)(u / tiles);
            window wn;
            long long pos[R];
            load_tile(x, u % tiles, &wn, pos);
            ran += run_tile(wn.buf, u % tiles, pos, base_weights(w, ot), rest_weights(w, wrest, ot),
                            ot, bias, tau, isg, out, gate, full);
        }
    }
    return ran;
}
#endif

/* ---- block gates (gate tile BH x BW positions x G' channels, one decision per block) -----
 * The decision needs the mean score of a whole block, which spans rows, so it cannot be taken
 * tile by tile as above. Block gates run in two passes: gated_conv with every gate off (or
 * oneDNN) writes Yp, block_decide averages it per block and lists, per block position and
 * channel tile, the lanes whose block is on; block_rest adds the remaining partial sum to
 * exactly those
 * (kernels/cpu_fused.py:run_blocks). Gate groups narrower than a channel tile share it: the
 * tile's remaining sum is computed once and added under the lane mask. */
/* Compiled only into block-gate builds (cpu_fused.py passes BH, BW, BG): they double the
 * compile time, which every new layer geometry pays once. */
#ifdef BH
#ifndef BG
#define BG 1
#endif
/* Rows of the last tile of a whole block when RH does not divide BH (7-row blocks in 2-row
 * tiles: 1). That tile runs as a LRH-row tile (its own unrolled copy of the loops) instead of
 * an RH-row tile with the rows past the block computed and dropped: 1/8 of the FMAs of a 7x7
 * block. Positions past the last row keep pos[j] = -1, so their accumulators are never read. */
#define LRH (BH % RH)

/* The remaining sum of channel tile ot over the block at (img, oh0, ow0) (bh x bw outputs,
 * clipped at the map's edge; its input window wn filled), added to out where lanes are on. */
static inline void block_rest_sum(const window *wn, const float *wr, int ot, long long img,
                                  int oh0, int ow0, int bh, int bw, const ivec lanes[NBT], float *out) {
    int base[2], rest[4];
    channel_ranges(ot, base, rest);
    for (int sh = 0; sh < bh; sh += RH)
        for (int sw = 0; sw < bw; sw += RW) {
            long long pos[R];
            positions(img, oh0 + sh, ow0 + sw, bh - sh, bw - sw, pos);
            vec r[NBT][R];
            if (LRH && bh - sh == LRH) rest_sum(r, tile_at(wn, sh, sw), wr, rest, LRH * RW);
            else rest_sum(r, tile_at(wn, sh, sw), wr, rest, R);
            _Pragma("GCC unroll 16")
            for (int j = 0; j < R; j++) {
                if (pos[j] < 0) continue;
                float *o = out + pos[j] * C_OUT + ot * TW;
                for (int b = 0; b < NBT; b++) {
                    vstore(o + b * VW, vload(o + b * VW) + (vec)((ivec)r[b][j] & lanes[b]));
                }
            }
        }
}

/* x, w, wrest: as gated_conv; out: NHWC Yp, updated in place; items: (k, 5) int32 rows
 * (image, channel tile, first row, first column, lane mask: bit b*VW+l for lane l of vector b)
 * of the (block position, channel tile) pairs with a block on. */
void block_rest(const float *x, const float *w, const float *wrest, float *out,
                const int32_t *items, long long k, int nthreads) {
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (long long u = 0; u < k; u++) {
        const int32_t *it = items + 5 * u;
        const int img = it[0], ot = it[1], oh0 = it[2], ow0 = it[3];
        const uint32_t bits = (uint32_t)it[4];
        ivec lanes[NBT];
        for (int b = 0; b < NBT; b++)
            for (int l = 0; l < VW; l++) lanes[b][l] = (bits >> (b * VW + l)) & 1u ? -1 : 0;
        const int bh = HO - oh0 < BH ? HO - oh0 : BH, bw = WO - ow0 < BW ? WO - ow0 : BW;
        window wn;
        fill_window(x, &wn, img, oh0, ow0);
        block_rest_sum(&wn, rest_weights(w, wrest, ot), ot, img, oh0, ow0, bh, bw, lanes, out);
    }
}

#define HB ((HO + BH - 1) / BH)
#define WB ((WO + BW - 1) / BW)

/* Block gates in one pass per block, while its input is in cache: the block's input window is
 * filled once, then Yp of every tile of the block (written to out), the block's per-channel
 * sums of Yp taken from the registers, the decisions, then the remaining sum of the channel
 * tiles with a block on, all reading that window. (Each tile filling its own window, for the
 * base and again for the remaining sum, copied each input ~4x: 16->16 @28, 7x7 blocks.)
 * Separate passes
 * (gated_conv with every gate off, block_decide, block_rest) re-read Yp and the input from
 * memory: 16->16 @28, batch 128, 1 thread, every block off: 2.0 ms against 1.6 ms here.
 * on: (n, HB, WB, C_OUT/BG) uint8, decided as block_decide does. Returns the number
 * of (block, gate group) decisions that are on. */
long long block_conv(const float *x, const float *w, const float *wrest, const float *bias,
                     const float *tau, const float *isg, float *out, uint8_t *on, int n,
                     int nthreads) {
    const long long blocks = (long long)n * HB * WB;
    long long ran = 0;
    #pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+:ran)
    for (long long u = 0; u < blocks; u++) {
        const long long img = u / (HB * WB);
        const int bi = (int)(u - img * (HB * WB));
        const int oh0 = (bi / WB) * BH, ow0 = (bi % WB) * BW;
        const int bh = HO - oh0 < BH ? HO - oh0 : BH, bw = WO - ow0 < BW ? WO - ow0 : BW;
        float sums[C_OUT] __attribute__((aligned(64)));
        window wn;
        fill_window(x, &wn, img, oh0, ow0);
        for (int ot = 0; ot < NT; ot++) {
            vec s[NBT];
            for (int b = 0; b < NBT; b++) s[b] = (vec){0};
            for (int sh = 0; sh < bh; sh += RH)
                for (int sw = 0; sw < bw; sw += RW) {
                    long long pos[R];
                    positions(img, oh0 + sh, ow0 + sw, bh - sh, bw - sw, pos);
                    vec acc[NBT][R];
                    if (LRH && bh - sh == LRH)
                        base_sum(acc, tile_at(&wn, sh, sw), base_weights(w, ot), ot, bias, LRH * RW);
                    else
                        base_sum(acc, tile_at(&wn, sh, sw), base_weights(w, ot), ot, bias, R);
                    _Pragma("GCC unroll 16")
                    for (int j = 0; j < R; j++) {
                        if (pos[j] < 0) continue;
                        for (int b = 0; b < NBT; b++) {
                            s[b] += acc[b][j];
                            vstore(out + pos[j] * C_OUT + ot * TW + b * VW, acc[b][j]);
                        }
                    }
                }
            for (int b = 0; b < NBT; b++) vstore(sums + ot * TW + b * VW, s[b]);
        }
        const float cnt = (float)(bh * bw);
        uint8_t *ob = on + u * (C_OUT / BG);
        for (int g = 0; g < C_OUT / BG; g++) {
            float a = 0.f;
            for (int c = g * BG; c < (g + 1) * BG; c++) a += (sums[c] / cnt - tau[c]) * isg[c];
            ob[g] = a / BG > 0.f;
            ran += ob[g];
        }
        for (int ot = 0; ot < NT; ot++) {
            ivec lanes[NBT];
            int any = 0;
            for (int b = 0; b < NBT; b++)
                for (int l = 0; l < VW; l++) {
                    lanes[b][l] = ob[(ot * TW + b * VW + l) / BG] ? -1 : 0;
                    any |= lanes[b][l];
                }
            if (any && P > 1)
                block_rest_sum(&wn, rest_weights(w, wrest, ot), ot, img, oh0, ow0, bh, bw, lanes, out);
        }
    }
    return ran;
}


/* The block decisions from Yp and the work list for block_rest, in one streaming read of Yp.
 * y: NHWC Yp (n, HO, WO, C_OUT); on: (n, HB, WB, C_OUT/BG) uint8, 1 where the block's mean over
 * its (edge-clipped) positions and BG channels of (Yp - tau) * inv_sigma is > 0; bits: scratch
 * (n*HB*WB*NT) int32; items: room for n*HB*WB*NT rows of 5 int32 (block_rest's format), filled
 * in (image, block row, block column, channel tile) order. Returns the number of items. */
long long block_decide(const float *y, const float *tau, const float *isg, uint8_t *on,
                       int32_t *bits, int32_t *items, int n, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (long long u = 0; u < (long long)n * HB; u++) {
        const long long img = u / HB;
        const int bh = (int)(u % HB);
        float s[WB * C_OUT];
        memset(s, 0, sizeof s);
        const int oh1 = (bh + 1) * BH < HO ? (bh + 1) * BH : HO;
        for (int oh = bh * BH; oh < oh1; oh++) {
            const float *row = y + ((img * HO + oh) * WO) * (long long)C_OUT;
            for (int ow = 0; ow < WO; ow++) {
                float *sb = s + (ow / BW) * C_OUT;
                const float *p = row + (long long)ow * C_OUT;
                for (int c = 0; c < C_OUT; c++) sb[c] += p[c];
            }
        }
        for (int bw = 0; bw < WB; bw++) {
            const int cw = WO - bw * BW < BW ? WO - bw * BW : BW;
            const float cnt = (float)((oh1 - bh * BH) * cw);
            uint8_t *ob = on + (u * WB + bw) * (C_OUT / BG);
            for (int g = 0; g < C_OUT / BG; g++) {
                float acc = 0.f;
                for (int c = g * BG; c < (g + 1) * BG; c++)
                    acc += (s[bw * C_OUT + c] / cnt - tau[c]) * isg[c];
                ob[g] = acc / BG > 0.f;
            }
            for (int ot = 0; ot < NT; ot++) {
                uint32_t b = 0;
                for (int l = 0; l < TW; l++) b |= (uint32_t)ob[(ot * TW + l) / BG] << l;
                bits[(u * WB + bw) * NT + ot] = (int32_t)b;
            }
        }
    }
    long long k = 0;
    for (long long i = 0; i < (long long)n * HB * WB * NT; i++) {
        if (!bits[i]) continue;
        const long long blk = i / NT;
        int32_t *it = items + 5 * k++;
        it[0] = (int32_t)(blk / (HB * WB));
        it[1] = (int32_t)(i % NT);
        it[2] = (int32_t)((blk / WB) % HB) * BH;
        it[3] = (int32_t)(blk % WB) * BW;
        it[4] = bits[i];
    }
    return k;
}
#endif  /* BH */
