/* y[M, N] = x[M, K] W^T + b for float32 on x86-64 with AVX2 and FMA: LossLens's kernel for the few
   rows of a sentence (core/fast/panel.py builds it at first use and falls back to oneDNN without it).

   W is packed in panels of 8 outputs: panel j holds rows 8j..8j+7 of the plain [N, K] weight as
   [K][8], one contiguous stream (24 KB for K = 768), and the N % 8 last rows follow, row-major. A
   tile reads two neighbouring panels at once (16 outputs): two streams from memory per thread,
   which a CPU keeps more reads in flight for than one (docs/performance.md). Each output sums over k in order 0..K-1 with one FMA per
   step, the same way for any M, any row and any thread count: a sentence's logits never depend on
   either (a partial sum kept in y between k blocks is stored and reloaded exactly). With `gelu`
   set, each output goes through the GPT-2 GELU as it is stored (the feed-forward's first layer),
   which saves a pass over them in memory and a call per block; with `r`, a block's shortcut is
   added the same way. Where the CPU has AVX-512, a 16-wide tile (tile_wide) may take the rows
   past one AVX2 tile, with the same bits. */
#include <immintrin.h>
#include <omp.h>
#include <stddef.h>

#define KBLOCK 128 /* k per block for a sentence (6 < M <= 48): its part of the panels stays in L1 while
                      every 6-row tile reads it, so the stream from memory never pauses for the later
                      tiles. Many rows are compute-bound: whole panels there */
/* Floats prefetched ahead of each stream, beyond the hardware's own prefetch: less for one tile
   (up to 6 rows, the book batch), which reads its bytes fastest; more rows spend longer per byte. */
#define PREFETCH_ONE_TILE 256
#define PREFETCH_TILES 512
/* Intel's AVX-512 server CPUs: memory further away in time, so one tile prefetches further ahead. */
#define PREFETCH_ONE_TILE_INTEL 1024
/* Rows per block on the AVX-512 tile's path. With all M rows at once, each quad would read the whole
   input again, most of L2 for many rows; a block of 96 rows stays in L2 while every quad of the
   thread reads it. Each quad's weights are then read once per block: only for a weight of at most
   ROW_BLOCK_WEIGHT bytes (a block's layers), not the out_head, which would come from memory once
   per block. The bits are the same: each output's sum is the same tile's. */
#define ROW_BLOCK 96
#define ROW_BLOCK_WEIGHT (32L << 20)
static long ahead_one = PREFETCH_ONE_TILE;

__attribute__((constructor)) static void pick_prefetch(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_is("intel")) ahead_one = PREFETCH_ONE_TILE_INTEL;
}

typedef struct {
    const float *x, *w, *b, *r;
    float *y;
    long M, K, N, j0, j1;
    int gelu;
} job_t;

/* e^x and GPT-2's GELU on a vector of floats, written once for 8 lanes (AVX2: exp8, gelu8) and for
   16 (AVX-512: exp16, gelu16): the same operations lane for lane, so the same bits on either tile.
   P is the intrinsics' prefix, V and VI the float and int vectors, ROUND to the nearest integer,
   CAST the int vector's bits as floats.

   e^x as Cephes' expf: x = n ln2 + r (ln2 in two parts, so r is exact), e^r by its degree-7 series,
   times 2^n built in the exponent bits; within ~1 ulp. x is clamped to where 2^n stays a normal
   float: e^x saturates near 2e38 and 1e-38 instead of inf and 0.
   GELU, 0.5 v (1 + tanh(u)) with u = sqrt(2/pi) (v + 0.044715 v^3), written as the same function
   v / (1 + e^(-2u)): one exp and one division, no cancellation in 1 + tanh(u) for v < 0. */
#define VECTOR_MATH(LANES, V, VI, P, ROUND, CAST)                                                     \
    static inline V exp##LANES(V x) {                                                               \
        x = P##_min_ps(P##_max_ps(x, P##_set1_ps(-87.3f)), P##_set1_ps(88.3f));                     \
        const V n = ROUND(P##_mul_ps(x, P##_set1_ps(1.44269504088896341f)));                        \
        V r = P##_fnmadd_ps(n, P##_set1_ps(0.693359375f), x);                                       \
        r = P##_fnmadd_ps(n, P##_set1_ps(-2.12194440e-4f), r);                                      \
        V p = P##_set1_ps(1.9875691500e-4f);                                                        \
        p = P##_fmadd_ps(p, r, P##_set1_ps(1.3981999507e-3f));                                      \
        p = P##_fmadd_ps(p, r, P##_set1_ps(8.3334519073e-3f));                                      \
        p = P##_fmadd_ps(p, r, P##_set1_ps(4.1665795894e-2f));                                      \
        p = P##_fmadd_ps(p, r, P##_set1_ps(1.6666665459e-1f));                                      \
        p = P##_fmadd_ps(p, r, P##_set1_ps(5.0000001201e-1f));                                      \
        p = P##_fmadd_ps(p, P##_mul_ps(r, r), P##_add_ps(r, P##_set1_ps(1.0f)));                    \
        const VI two_n = P##_slli_epi32(P##_add_epi32(P##_cvtps_epi32(n), P##_set1_epi32(127)), 23); \
        return P##_mul_ps(p, CAST(two_n));                                                          \
    }                                                                                               \
    static inline V gelu##LANES(V v) {                                                              \
        const V v2 = P##_mul_ps(v, v);                                                              \
        const V minus_2u = P##_mul_ps(v, P##_fmadd_ps(v2, P##_set1_ps(-2.0f * 0.7978845608028654f * 0.044715f), \
                                                      P##_set1_ps(-2.0f * 0.7978845608028654f)));   \
        return P##_div_ps(v, P##_add_ps(P##_set1_ps(1.0f), exp##LANES(minus_2u)));                  \
    }
#define ROUND8(v) _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define ROUND16(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
VECTOR_MATH(8, __m256, __m256i, _mm256, ROUND8, _mm256_castsi256_ps)

static float gelu1(float v) { /* the same arithmetic for one float: lane 0 of gelu8 */
    return _mm256_cvtss_f32(gelu8(_mm256_set1_ps(v)));
}

/* GELU over a pair's (or a lone panel's) finished outputs, still in L1. Apart from tile(), whose
   loop needs 15 of the 16 ymm registers: inside its epilogue, the GELU's constants made the loop
   spill. */
static __attribute__((noinline)) void gelu_panel(float *y, long M, long N, int width) {
    for (long m = 0; m < M; m++, y += N)
        for (int i = 0; i < width; i += 8) _mm256_storeu_ps(y + i, gelu8(_mm256_loadu_ps(y + i)));
}

/* What follows a finished pair or quad, on its `width` outputs from column `col` of rows m0..m1-1
   while they are in L1: the GELU (the feed-forward's first layer) or the shortcut added after the
   bias, y = (x W^T + b) + r, exactly the sum that the book's x + shortcut makes afterwards. */
static void finish(const job_t *j, long col, int width, long m0, long m1) {
    if (j->gelu) gelu_panel(j->y + m0 * j->N + col, m1 - m0, j->N, width);
    if (j->r)
        for (long m = m0; m < m1; m++) {
            float *y = j->y + m * j->N + col;
            const float *r = j->r + m * j->N + col;
            for (int i = 0; i < width; i += 8)
                _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(r + i)));
        }
}

/* R rows (1..6) x 16 outputs (two panels of 8, side by side: two streams from memory) or 8 (one
   panel) over k0..k1-1, going on from the partial sums in y when k0 > 0:
   12 accumulators + 2 weight vectors + 1 broadcast = 15 ymm registers */
static inline __attribute__((always_inline)) void tile(const float *x, const float *w, const float *b,
                                                       float *y, long K, long N, int R, long k0, long k1,
                                                       long ahead, int two) {
    const float *w2 = w + 8 * K;
    __m256 a0[6], a1[6];
    for (int r = 0; r < R; r++) {
        a0[r] = k0 ? _mm256_loadu_ps(y + r * N) : _mm256_setzero_ps();
        a1[r] = two && k0 ? _mm256_loadu_ps(y + r * N + 8) : _mm256_setzero_ps(); /* set even unused */
    }
#define STEP(k)                                                                                  \
    do {                                                                                         \
        __m256 w0 = _mm256_loadu_ps(w + 8 * (k)), w1 = two ? _mm256_loadu_ps(w2 + 8 * (k)) : w0; \
        for (int r = 0; r < R; r++) {                                                            \
            __m256 v = _mm256_broadcast_ss(x + r * K + (k));                                     \
            a0[r] = _mm256_fmadd_ps(v, w0, a0[r]);                                               \
            if (two) a1[r] = _mm256_fmadd_ps(v, w1, a1[r]);                                      \
        }                                                                                        \
    } while (0)
    long k = k0;
    for (; k + 1 < k1; k += 2) { /* two steps per 64-byte line of each panel: one prefetch each */
        _mm_prefetch((const char *)(w + 8 * k + ahead), _MM_HINT_T0);
        if (two) _mm_prefetch((const char *)(w2 + 8 * k + ahead), _MM_HINT_T0);
        STEP(k);
        STEP(k + 1);
    }
    if (k < k1) STEP(k);
#undef STEP
    for (int r = 0; r < R; r++) {
        if (b && k1 == K) {
            a0[r] = _mm256_add_ps(a0[r], _mm256_loadu_ps(b));
            if (two) a1[r] = _mm256_add_ps(a1[r], _mm256_loadu_ps(b + 8));
        }
        _mm256_storeu_ps(y + r * N, a0[r]);
        if (two) _mm256_storeu_ps(y + r * N + 8, a1[r]);
    }
}

/* Outputs 16c..16c+15 (panels 2c and 2c+1) or, with two == 0, the 8 of panel 2c alone. */
static void run_pair(const job_t *j, long c, int two) {
    const long M = j->M, K = j->K, N = j->N;
    const float *w = j->w + c * 16 * K, *b = j->b ? j->b + 16 * c : NULL;
    const long step = M > 6 && M <= 48 ? KBLOCK : K, first_ahead = M <= 6 ? ahead_one : PREFETCH_TILES;
    /* The first tile takes 6 rows (it computes while the block comes from memory); the rest share
       the other rows evenly: 15 rows as 6 + 5 + 4, not 6 + 6 + 3. A tile of R rows keeps 2R sums
       going, and under 4 rows (8 sums) it waits on the FMA's latency, so the first tile stays
       whole. Except for 7 rows: 4 + 3, not 6 + 1, whose 1-row tile would wait on it */
    const long first = M == 7 ? 4 : M < 6 ? M : 6, later = M - first, tiles = (later + 5) / 6;
    for (long k0 = 0; k0 < K; k0 += step) {
        const long k1 = k0 + step < K ? k0 + step : K;
        for (long t = -1, m = 0; t < tiles; t++) { /* the block is read from memory once, then from L1 */
            const long rows = t < 0 ? first : later / tiles + (t < later % tiles);
            const float *x = j->x + m * K;
            float *y = j->y + m * N + 16 * c;
            /* The later tiles read the block from L1 and ask for the next one meanwhile */
            const long ahead = m ? 8 * step : first_ahead;
            m += rows;
            switch (rows) {
                case 6: tile(x, w, b, y, K, N, 6, k0, k1, ahead, two); break;
                case 5: tile(x, w, b, y, K, N, 5, k0, k1, ahead, two); break;
                case 4: tile(x, w, b, y, K, N, 4, k0, k1, ahead, two); break;
                case 3: tile(x, w, b, y, K, N, 3, k0, k1, ahead, two); break;
                case 2: tile(x, w, b, y, K, N, 2, k0, k1, ahead, two); break;
                default: tile(x, w, b, y, K, N, 1, k0, k1, ahead, two);
            }
        }
    }
    finish(j, 16 * c, two ? 16 : 8, 0, M);
}

/* Rows past one AVX2 tile on a CPU with AVX-512 (from wide_rows on): 16-wide FMAs do twice the work
   of AVX2's where the rows are compute-bound, and four streams are in flight where they are not.
   A tile is R rows (1..12) x 32 outputs (four panels, two zmm per row: 24 accumulators); each zmm
   is two 8-wide panel rows joined. Every output still takes one FMA per k in order 0..K-1, then the
   bias, exactly as tile() does: the same bits on either path, so a row's logits never depend on
   which one ran. Built with LOSSLENS_AVX512_EMULATED (tests/kernels/avx512_emulated.h), the same
   code runs on AVX2 through SIMDe's AVX-512 in AVX2: the tests check its bits on any x86 CPU. */
#ifndef LOSSLENS_AVX512_EMULATED
#pragma GCC push_options
#pragma GCC target("avx512f,prfchw")
#endif
static inline __attribute__((always_inline)) __m512 join(const float *lo, const float *hi) {
    const __m512d l = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(lo)));
    return _mm512_castpd_ps(_mm512_insertf64x4(l, _mm256_castps_pd(_mm256_loadu_ps(hi)), 1));
}

static inline __attribute__((always_inline)) void tile_wide(const float *x, const float *w, const float *b,
                                                            float *y, long K, long N, int R) {
    const float *p1 = w + 8 * K, *p2 = w + 16 * K, *p3 = w + 24 * K;
    __m512 a0[12], a1[12];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    for (long k = 0; k < K; k++) {
        if (!(k & 1)) {
            _mm_prefetch((const char *)(w + 8 * k + PREFETCH_TILES), _MM_HINT_T0);
            _mm_prefetch((const char *)(p1 + 8 * k + PREFETCH_TILES), _MM_HINT_T0);
            _mm_prefetch((const char *)(p2 + 8 * k + PREFETCH_TILES), _MM_HINT_T0);
            _mm_prefetch((const char *)(p3 + 8 * k + PREFETCH_TILES), _MM_HINT_T0);
        }
        const __m512 w0 = join(w + 8 * k, p1 + 8 * k), w1 = join(p2 + 8 * k, p3 + 8 * k);
        for (int r = 0; r < R; r++) {
            const __m512 v = _mm512_set1_ps(x[r * K + k]);
            a0[r] = _mm512_fmadd_ps(v, w0, a0[r]);
            a1[r] = _mm512_fmadd_ps(v, w1, a1[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        if (b) {
            a0[r] = _mm512_add_ps(a0[r], _mm512_loadu_ps(b));
            a1[r] = _mm512_add_ps(a1[r], _mm512_loadu_ps(b + 16));
        }
        _mm512_storeu_ps(y + r * N, a0[r]);
        _mm512_storeu_ps(y + r * N + 16, a1[r]);
    }
}

VECTOR_MATH(16, __m512, __m512i, _mm512, ROUND16, _mm512_castsi512_ps)

static void gelu_quad(float *y, long M, long N) { /* gelu_panel's 16-lane twin, for a quad */
    for (long m = 0; m < M; m++, y += N)
        for (int i = 0; i < 32; i += 16) _mm512_storeu_ps(y + i, gelu16(_mm512_loadu_ps(y + i)));
}

/* Outputs 32q..32q+31 (panels 4q..4q+3) for rows m0..M-1. */
static void run_quad(const job_t *j, long q, long m0, long M) {
    const long K = j->K, N = j->N;
    const float *w = j->w + q * 32 * K, *b = j->b ? j->b + 32 * q : NULL;
    for (long m = m0; m < M; m += 12) {
        const float *x = j->x + m * K;
        float *y = j->y + m * N + 32 * q;
        /* The next tile's outputs, asked for with intent to write while this one computes: its 12
           rows lie N floats apart (a batch's logits), and each store that missed would wait for
           its line at the tile's end. */
        for (long r = m + 12; r < M && r < m + 24; r++) {
            __builtin_prefetch(j->y + r * N + 32 * q, 1, 3);
            __builtin_prefetch(j->y + r * N + 32 * q + 31, 1, 3);
        }
        switch (M - m < 12 ? M - m : 12) {
#define CASE(R) \
    case R: tile_wide(x, w, b, y, K, N, R); break;
            CASE(12) CASE(11) CASE(10) CASE(9) CASE(8) CASE(7) CASE(6) CASE(5) CASE(4) CASE(3) CASE(2)
            default: tile_wide(x, w, b, y, K, N, 1);
#undef CASE
        }
    }
    if (j->gelu)
        gelu_quad(j->y + m0 * N + 32 * q, M - m0, N);
    else
        finish(j, 32 * q, 32, m0, M);
}
#ifndef LOSSLENS_AVX512_EMULATED
#pragma GCC pop_options
#endif

/* From how many rows the AVX-512 tile runs (0: never). Set by core/fast/panel.py where it measures faster. */
static long wide_rows = 0;

long losslens_wide_rows(void) { return wide_rows; }

/* 1 if this CPU runs the AVX-512 tile; then it runs from `rows` rows on (0 turns it off). */
int losslens_set_wide_rows(long rows) {
#ifdef LOSSLENS_AVX512_EMULATED
    const int avx512 = 1;
#else
    const int avx512 = __builtin_cpu_supports("avx512f");
#endif
    if (!avx512) {
        wide_rows = 0;
        return 0;
    }
    wide_rows = rows;
    return 1;
}

/* Splits the pairs of panels (or, from wide_rows rows on, the quads, block of rows by block) over
   `threads` OpenMP threads:
   torch's own team (the same libgomp, loaded once per process), so no thread competes with torch's
   workers while they wait for the next op. The panels left over (an odd last one, or up to three
   after the quads) and the N % 8 rows after the panels follow on this thread. */
void losslens_panel_linear(const float *x, const float *w, const float *b, const float *r, float *y, long M,
                           long K, long N, int threads, int gelu) {
    const int wide = wide_rows > 0 && M >= wide_rows;
    const long units = wide ? N / 32 : N / 16, panels = N / 8;
    const long block = N * K * 4 <= ROW_BLOCK_WEIGHT ? ROW_BLOCK : M;
    if (threads < 1) threads = 1;
    if (threads > units) threads = units > 0 ? (int)units : 1;
#pragma omp parallel num_threads(threads)
    {
        const long t = omp_get_thread_num(), T = omp_get_num_threads();
        job_t job = {x, w, b, r, y, M, K, N, units * t / T, units * (t + 1) / T, gelu};
        if (wide)
            for (long m0 = 0; m0 < M; m0 += block)
                for (long c = job.j0; c < job.j1; c++) run_quad(&job, c, m0, m0 + block < M ? m0 + block : M);
        else
            for (long c = job.j0; c < job.j1; c++) run_pair(&job, c, 1);
    }
    job_t rest = {x, w, b, r, y, M, K, N, 0, 0, gelu};
    for (long p = units * (wide ? 4 : 2); p < panels; p += 2) run_pair(&rest, p / 2, panels - p >= 2);
    const float *wt = w + panels * 8 * K; /* the N % 8 rows after the panels */
    for (long n = panels * 8; n < N; n++, wt += K)
        for (long m = 0; m < M; m++) {
            const float *xr = x + m * K;
            float s = 0.f;
            for (long k = 0; k < K; k++) s = __builtin_fmaf(xr[k], wt[k], s);
            s = b ? s + b[n] : s;
            s = r ? s + r[m * N + n] : s;
            y[m * N + n] = gelu ? gelu1(s) : s;
        }
}
