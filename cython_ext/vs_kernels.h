/* Inner kernels of the qlp_ray vector search: block scoring and top-k heaps.
 *
 * Scoring kernels fill out[q * ld + r] with the inner product of query q and row r
 * of a block, for float32, float16 (IEEE half stored as uint16) and int8 rows.
 * AVX-512 paths are used when the compiler targets AVX-512F (-march=native on a
 * machine that has it); otherwise portable scalar loops (auto-vectorised by -O3).
 * Heaps keep the k best (score desc, index asc) items: the root is the worst one.
 */
#ifndef QLP_VS_KERNELS_H
#define QLP_VS_KERNELS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------- half -> float */
static inline float vs_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while ((man & 0x400u) == 0) { man <<= 1; exp--; }
            man &= 0x3FFu;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#if defined(__AVX512F__)
static inline __mmask16 vs_tail_mask(int64_t rem) {
    return rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1u);
}
static inline __m512 vs_load_f32(const float *p, int64_t rem) {
    return _mm512_maskz_loadu_ps(vs_tail_mask(rem), p);
}
static inline __m512 vs_load_f16(const uint16_t *p, int64_t rem) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(vs_tail_mask(rem), p));
}
static inline __m512 vs_load_i8(const int8_t *p, int64_t rem) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(vs_tail_mask(rem), p)));
}
#endif

/* Block scoring: for each row, 4 queries at a time (4 independent accumulators), and
 * a 1-query kernel unrolled over 4 chunks for the remainder, so FMA latency never binds. */
#if defined(__AVX512F__)
#define VS_DEFINE_BLOCK(NAME, T, LOADV, SCALAR)                                          \
    static void NAME(const float *Q, int64_t nq, const T *X, int64_t nrows, int64_t d,  \
                     float *out, int64_t ld) {                                          \
        int64_t q0 = 0;                                                                 \
        for (; q0 + 4 <= nq; q0 += 4) {                                                 \
            const float *q_0 = Q + q0 * d, *q_1 = q_0 + d, *q_2 = q_1 + d, *q_3 = q_2 + d; \
            for (int64_t r = 0; r < nrows; r++) {                                       \
                const T *row = X + r * d;                                               \
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;             \
                for (int64_t j = 0; j < d; j += 16) {                                   \
                    __m512 x = LOADV(row + j, d - j);                                   \
                    a0 = _mm512_fmadd_ps(vs_load_f32(q_0 + j, d - j), x, a0);           \
                    a1 = _mm512_fmadd_ps(vs_load_f32(q_1 + j, d - j), x, a1);           \
                    a2 = _mm512_fmadd_ps(vs_load_f32(q_2 + j, d - j), x, a2);           \
                    a3 = _mm512_fmadd_ps(vs_load_f32(q_3 + j, d - j), x, a3);           \
                }                                                                       \
                out[q0 * ld + r] = _mm512_reduce_add_ps(a0);                            \
                out[(q0 + 1) * ld + r] = _mm512_reduce_add_ps(a1);                      \
                out[(q0 + 2) * ld + r] = _mm512_reduce_add_ps(a2);                      \
                out[(q0 + 3) * ld + r] = _mm512_reduce_add_ps(a3);                      \
            }                                                                           \
        }                                                                               \
        for (; q0 < nq; q0++) {                                                         \
            const float *qq = Q + q0 * d;                                               \
            for (int64_t r = 0; r < nrows; r++) {                                       \
                const T *row = X + r * d;                                               \
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;             \
                int64_t j = 0;                                                          \
                for (; j + 64 <= d; j += 64) {                                          \
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qq + j), LOADV(row + j, 16), a0); \
                    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qq + j + 16),                  \
                                         LOADV(row + j + 16, 16), a1);                  \
                    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(qq + j + 32),                  \
                                         LOADV(row + j + 32, 16), a2);                  \
                    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(qq + j + 48),                  \
                                         LOADV(row + j + 48, 16), a3);                  \
                }                                                                       \
                for (; j < d; j += 16)                                                  \
                    a0 = _mm512_fmadd_ps(vs_load_f32(qq + j, d - j), LOADV(row + j, d - j), a0); \
                a0 = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));       \
                out[q0 * ld + r] = _mm512_reduce_add_ps(a0);                            \
            }                                                                           \
        }                                                                               \
    }
#else
#define VS_DEFINE_BLOCK(NAME, T, LOADV, SCALAR)                                          \
    static void NAME(const float *Q, int64_t nq, const T *X, int64_t nrows, int64_t d,  \
                     float *out, int64_t ld) {                                          \
        for (int64_t q = 0; q < nq; q++) {                                              \
            const float *qq = Q + q * d;                                                \
            for (int64_t r = 0; r < nrows; r++) {                                       \
                const T *row = X + r * d;                                               \
                float a = 0.f;                                                          \
                for (int64_t j = 0; j < d; j++) a += qq[j] * SCALAR(row[j]);            \
                out[q * ld + r] = a;                                                    \
            }                                                                           \
        }                                                                               \
    }
#endif

#define VS_ID(x) ((float)(x))
VS_DEFINE_BLOCK(vs_block_f32, float, vs_load_f32, VS_ID)
VS_DEFINE_BLOCK(vs_block_f16, uint16_t, vs_load_f16, vs_half_to_float)
VS_DEFINE_BLOCK(vs_block_i8, int8_t, vs_load_i8, VS_ID)

/* Dequantise rows into a float32 buffer (before a BLAS matmul on big batches). */
static void vs_dequant_f16(const uint16_t *X, int64_t count, float *out) {
#if defined(__AVX512F__)
    for (int64_t j = 0; j < count; j += 16)
        _mm512_mask_storeu_ps(out + j, vs_tail_mask(count - j), vs_load_f16(X + j, count - j));
#else
    for (int64_t j = 0; j < count; j++) out[j] = vs_half_to_float(X[j]);
#endif
}

static void vs_dequant_i8(const int8_t *X, int64_t count, float *out) {
    for (int64_t j = 0; j < count; j++) out[j] = (float)X[j];
}

/* ------------------------------------------------------------------- heaps */
static inline int vs_better(float s1, int64_t i1, float s2, int64_t i2) {
    return s1 > s2 || (s1 == s2 && i1 < i2);
}

static inline void vs_heap_push(float *hs, int64_t *hi, int64_t k, int64_t *size, float s,
                                int64_t idx) {
    int64_t pos;
    if (*size < k) { /* sift up */
        pos = (*size)++;
        while (pos > 0) {
            int64_t parent = (pos - 1) >> 1;
            if (!vs_better(hs[parent], hi[parent], s, idx)) break;
            hs[pos] = hs[parent];
            hi[pos] = hi[parent];
            pos = parent;
        }
        hs[pos] = s;
        hi[pos] = idx;
        return;
    }
    if (!vs_better(s, idx, hs[0], hi[0])) return;
    pos = 0; /* replace the worst item and sift down */
    for (;;) {
        int64_t c = 2 * pos + 1;
        if (c >= k) break;
        if (c + 1 < k && vs_better(hs[c], hi[c], hs[c + 1], hi[c + 1])) c++;
        if (!vs_better(s, idx, hs[c], hi[c])) break;
        hs[pos] = hs[c];
        hi[pos] = hi[c];
        pos = c;
    }
    hs[pos] = s;
    hi[pos] = idx;
}

/* Push one block of scores (row indices row0..row0+n-1), scaled per row if given. */
static inline void vs_select(const float *scores, int64_t n, int64_t row0,
                             const float *row_scale, float *hs, int64_t *hi, int64_t k,
                             int64_t *size) {
    for (int64_t r = 0; r < n; r++) {
        float s = row_scale ? scores[r] * row_scale[row0 + r] : scores[r];
        if (*size == k && s < hs[0]) continue; /* fast reject */
        vs_heap_push(hs, hi, k, size, s, row0 + r);
    }
}

typedef struct {
    float s;
    int64_t i;
} vs_item;

static int vs_cmp_items(const void *a, const void *b) {
    const vs_item *x = (const vs_item *)a, *y = (const vs_item *)b;
    if (vs_better(x->s, x->i, y->s, y->i)) return -1;
    if (vs_better(y->s, y->i, x->s, x->i)) return 1;
    return 0;
}

/* Sort a heap of `size` items best-first into out_s/out_i (which have room for `size`). */
static int vs_sort_heap(const float *hs, const int64_t *hi, int64_t size, float *out_s,
                        int64_t *out_i) {
    vs_item *items = (vs_item *)malloc((size_t)(size > 0 ? size : 1) * sizeof(vs_item));
    if (!items) return -1;
    for (int64_t j = 0; j < size; j++) { items[j].s = hs[j]; items[j].i = hi[j]; }
    qsort(items, (size_t)size, sizeof(vs_item), vs_cmp_items);
    for (int64_t j = 0; j < size; j++) { out_s[j] = items[j].s; out_i[j] = items[j].i; }
    free(items);
    return 0;
}

#endif /* QLP_VS_KERNELS_H */
