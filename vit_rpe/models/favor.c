/* Performer (FAVOR+) attention under a mask M [H, N, N], forward and backward, one head at a time.

   The numbers of MaskedFavorAttention (fused.py) for float32 on the CPU: per head, the features
   phi(q), phi(k), the kernel matrix phi(q) phi(k)^T, the masked and normalised product with v,
   and in the backward the gradients of q, k, v and the mask, all while the head's tensors sit in
   the L1 cache. In PyTorch each of those steps is a pass over the whole batch (docs/benchmarks.md).

   Built per shape by native.py: -DN=<tokens> -DD=<head dim> -DM=<features>, so every loop has a
   constant trip count and the small products keep their sums in vector registers. Layouts (all
   contiguous, row-major; BH = batch x heads, heads fastest):
     q, k, v, out, g, dq, dk, dv  [BH, N, D]
     wsT [D, MP], ws [M, DP]      the projection w [M, D] times D^-1/4, transposed or not, with
                                  zero columns up to a multiple of the vector width
     mask [H, N, N]; phi [2, BH, N, MP] (queries, keys); kernel [BH, N, N]; den [BH, N]
     dmask_items [BH, N, N]       each batch element's share of the mask's gradient, or NULL */

#include <math.h>
#include <stddef.h>

/* glibc has vector versions of expf (libmvec) but declares them only under -ffast-math */
float expf(float) __attribute__((simd("notinbranch")));

#define W 16 /* floats in a vector: one AVX-512 register, or two AVX2 ones */
typedef float vec __attribute__((vector_size(4 * W), aligned(4)));
#define PAD(x) (((x) + W - 1) / W * W)
#define MP PAD(M)
#define NP PAD(N)
#define DP PAD(D)
#define ALIGNED __attribute__((aligned(64)))

/* out[r][:] = sum over c < C of a[r * a_row + c * a_col] * b[c * WIDTH :][:WIDTH] for R rows:
   a small matrix product with its R x WIDTH sums in registers (WIDTH a multiple of W). */
#define PRODUCT(R, C, WIDTH, a, a_row, a_col, b, out)                                               \
    do {                                                                                            \
        vec acc_[R][(WIDTH) / W] = {0};                                                             \
        for (int c_ = 0; c_ < (C); c_++) {                                                          \
            _Pragma("GCC unroll 8") for (int r_ = 0; r_ < (R); r_++) {                              \
                float s_ = (a)[r_ * (a_row) + c_ * (a_col)];                                        \
                _Pragma("GCC unroll 8") for (int v_ = 0; v_ < (WIDTH) / W; v_++)                    \
                    acc_[r_][v_] += s_ * *(const vec *)((b) + c_ * (WIDTH) + v_ * W);              \
            }                                                                                       \
        }                                                                                           \
        for (int r_ = 0; r_ < (R); r_++)                                                            \
            for (int v_ = 0; v_ < (WIDTH) / W; v_++)                                                \
                *(vec *)((out) + r_ * (WIDTH) + v_ * W) = acc_[r_][v_];                             \
    } while (0)

/* Rows enough to keep the FMA units busy (about 8 independent sums) within 32 registers. */
#define BLOCK(WIDTH) ((WIDTH) / W >= 4 ? 2 : (WIDTH) / W >= 2 ? 4 : 8)

/* All `rows` rows of a times b [C, WIDTH] into out [rows, WIDTH], BLOCK rows at a time. */
#define PRODUCT_ROWS(rows, C, WIDTH, a, a_row, a_col, b, out)                                       \
    do {                                                                                            \
        int i_ = 0;                                                                                 \
        for (; i_ + BLOCK(WIDTH) <= (rows); i_ += BLOCK(WIDTH))                                     \
            PRODUCT(BLOCK(WIDTH), C, WIDTH, (a) + i_ * (a_row), a_row, a_col, b, (out) + i_ * (WIDTH)); \
        for (; i_ < (rows); i_++)                                                                   \
            PRODUCT(1, C, WIDTH, (a) + i_ * (a_row), a_row, a_col, b, (out) + i_ * (WIDTH));        \
    } while (0)

static float max_of(const float *x, int count) {
    float mx = x[0];
    for (int t = 1; t < count; t++) mx = x[t] > mx ? x[t] : mx;
    return mx;
}

/* phi [N, MP] of x [N, D]: exp(w.x' - |x'|^2 / 2 - log sqrt(M) - c) + e with x' = x / D^(1/4) and
   zero padding; the stabiliser c is the max of w.x' over each row (queries) or over the head (keys). */
static void features(const float *x, const float *wsT, int per_row, float e, float *phi) {
    float shift[N], head_max;
    PRODUCT_ROWS(N, D, MP, x, D, 1, wsT, phi);
    head_max = max_of(phi, M); /* no infinities under -ffast-math: start from the first row */
    for (int i = 0; i < N; i++) {
        float s = 0.f;
        for (int c = 0; c < D; c++) s += x[i * D + c] * x[i * D + c];
        shift[i] = s * (0.5f / sqrtf((float)D)) + 0.5f * logf((float)M);
        float mx = max_of(phi + i * MP, M);
        if (per_row)
            shift[i] += mx;
        else
            head_max = mx > head_max ? mx : head_max;
    }
    for (int i = 0; i < N; i++) {
        float *row = phi + i * MP, sh = per_row ? shift[i] : shift[i] + head_max;
        for (int j = 0; j < MP; j++) row[j] = expf(row[j] - sh) + e;
        for (int j = M; j < MP; j++) row[j] = 0.f;
    }
}

/* out = S v / max(S 1, eps) with S = M * phi(q) phi(k)^T; keeps phi, the kernel matrix and S 1. */
void favor_forward(int threads, int bh, int heads, const float *q, const float *k, const float *v,
                   const float *wsT, const float *mask, float eps, float *phi, float *kernel,
                   float *den, float *out) {
    const float e = eps / sqrtf((float)M);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int b = 0; b < bh; b++) {
        float pkT[MP * NP] ALIGNED = {0}, kr[N * NP] ALIGNED, s[N * NP] ALIGNED = {0};
        float vp[N * DP] ALIGNED = {0}, o[N * DP] ALIGNED;
        float *pq = phi + (size_t)b * N * MP, *pk = phi + ((size_t)bh + b) * N * MP;
        const float *mk = mask + (size_t)(b % heads) * N * N, *vb = v + (size_t)b * N * D;
        features(q + (size_t)b * N * D, wsT, 1, e, pq);
        features(k + (size_t)b * N * D, wsT, 0, e, pk);
        for (int l = 0; l < N; l++)
            for (int j = 0; j < M; j++) pkT[j * NP + l] = pk[l * MP + j];
        PRODUCT_ROWS(N, M, NP, pq, MP, 1, pkT, kr); /* phi(q) phi(k)^T */
        for (int i = 0; i < N; i++) {
            float sum = 0.f;
            for (int l = 0; l < N; l++) {
                kernel[(size_t)b * N * N + i * N + l] = kr[i * NP + l];
                s[i * NP + l] = kr[i * NP + l] * mk[i * N + l];
                sum += s[i * NP + l];
            }
            den[(size_t)b * N + i] = sum;
            for (int c = 0; c < D; c++) vp[i * DP + c] = vb[i * D + c];
        }
        PRODUCT_ROWS(N, N, DP, s, NP, 1, vp, o); /* S v */
        for (int i = 0; i < N; i++) {
            float sum = den[(size_t)b * N + i], inv = 1.f / (sum > eps ? sum : eps);
            for (int c = 0; c < D; c++) out[(size_t)b * N * D + i * D + c] = o[i * DP + c] * inv;
        }
    }
}

/* dx [N, D] = ge w' - rowsum(ge) x / sqrt(D) for ge = dL/dphi * (phi - e) [N, MP], w' = ws. */
static void input_grad(const float *ge, const float *ws, const float *x, float *dx) {
    float both[N * DP] ALIGNED;
    PRODUCT_ROWS(N, M, DP, ge, MP, 1, ws, both);
    for (int i = 0; i < N; i++) {
        float rs = 0.f;
        for (int j = 0; j < M; j++) rs += ge[i * MP + j];
        for (int c = 0; c < D; c++) dx[i * D + c] = both[i * DP + c] - rs / sqrtf((float)D) * x[i * D + c];
    }
}

/* With dN = g / den and dden = -rowsum(g * out) / den (0 where den was clamped):
   dS = dN v^T + dden, dv = S^T dN, dmask = dS * K per item, dK = dS * M, and through the
   features dq and dk (the stabilisers are constants to the gradient, as in fused.py). */
void favor_backward(int threads, int bh, int heads, const float *q, const float *k, const float *v,
                    const float *ws, const float *mask, float eps, const float *phi,
                    const float *kernel, const float *den, const float *out, const float *g,
                    float *dq, float *dk, float *dv, float *dmask_items) {
    const float e = eps / sqrtf((float)M);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int b = 0; b < bh; b++) {
        float dn[N * DP] ALIGNED = {0}, dd[N], vT[D * NP] ALIGNED = {0}, ds[N * NP] ALIGNED;
        float s[N * NP] ALIGNED = {0}, dK[N * N], dvp[N * DP] ALIGNED, ge[N * MP] ALIGNED;
        const float *pq = phi + (size_t)b * N * MP, *pk = phi + ((size_t)bh + b) * N * MP;
        const float *kr = kernel + (size_t)b * N * N, *mk = mask + (size_t)(b % heads) * N * N;
        const float *gb = g + (size_t)b * N * D, *ob = out + (size_t)b * N * D, *vb = v + (size_t)b * N * D;
        for (int i = 0; i < N; i++) {
            float sum = den[(size_t)b * N + i], inv = 1.f / (sum > eps ? sum : eps), dot = 0.f;
            for (int c = 0; c < D; c++) {
                dn[i * DP + c] = gb[i * D + c] * inv;
                dot += gb[i * D + c] * ob[i * D + c];
            }
            dd[i] = sum >= eps ? -dot * inv : 0.f;
            for (int c = 0; c < D; c++) vT[c * NP + i] = vb[i * D + c];
        }
        PRODUCT_ROWS(N, D, NP, dn, DP, 1, vT, ds); /* dN v^T */
        for (int i = 0; i < N; i++)
            for (int l = 0; l < N; l++) {
                float dsil = ds[i * NP + l] + dd[i], kil = kr[i * N + l];
                s[i * NP + l] = kil * mk[i * N + l];
                if (dmask_items) dmask_items[(size_t)b * N * N + i * N + l] = dsil * kil;
                dK[i * N + l] = dsil * mk[i * N + l];
            }
        PRODUCT_ROWS(N, N, DP, s, 1, NP, dn, dvp); /* S^T dN */
        for (int l = 0; l < N; l++)
            for (int c = 0; c < D; c++) dv[(size_t)b * N * D + l * D + c] = dvp[l * DP + c];
        PRODUCT_ROWS(N, N, MP, dK, N, 1, pk, ge); /* dK phi(k) */
        for (int t = 0; t < N * MP; t++) ge[t] *= pq[t] - e;
        input_grad(ge, ws, q + (size_t)b * N * D, dq + (size_t)b * N * D);
        PRODUCT_ROWS(N, N, MP, dK, 1, N, pq, ge); /* dK^T phi(q) */
        for (int t = 0; t < N * MP; t++) ge[t] *= pk[t] - e;
        input_grad(ge, ws, k + (size_t)b * N * D, dk + (size_t)b * N * D);
    }
}
