/* Cut one square crop out of decoded RGB pixels and resize it: Pillow's bilinear, bit for bit.
 *
 * trapkit's crops are `Image.resize(size, BILINEAR, box=...)` on the decoded
 * rectangle of a camera-trap photo. Through Pillow that costs a copy of the
 * whole rectangle into a Pillow image (4 bytes a pixel there) and two scalar
 * passes. This reads the packed RGB rows where they lie; with AVX2 the
 * horizontal pass does two taps of all three channels per instruction and
 * the vertical pass runs over whole rows, 8 products at a time. The arithmetic
 * is Pillow's (Resample.c): double-precision filter weights from a
 * single-precision box, rounded to 22-bit fixed point, a horizontal pass into
 * 8-bit rows, then a vertical pass; so the pixels are Pillow's exactly.
 *
 * resize(pixels, width, height, left, top, right, bottom, size, simd=True) -> bytes
 *   pixels: height rows of width RGB pixels; (left, top, right, bottom) the
 *   box in those pixels (floats, inside the image); size: the output side;
 *   simd=False forces the portable passes (tests compare both).
 *   Returns size * size * 3 bytes of RGB.
 * Pillow's `reducing_gap` pre-shrink is not done here: callers send boxes
 * that it would not shrink (narrower than 2 * gap * size).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

#define PRECISION_BITS (32 - 8 - 2)
#define HALF (1 << (PRECISION_BITS - 1))

static inline uint8_t clip8(int32_t v)
{
    v >>= PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

static inline double bilinear(double x)
{
    if (x < 0.0)
        x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: for output
 * position i, taps bounds[2i] .. bounds[2i] + bounds[2i+1] - 1 of the input
 * with fixed-point weights kk[i * ksize ..]. Returns ksize, or 0 on no memory. */
static int weights(int in_size, float in0, float in1, int out_size, int **bounds_out, int32_t **kk_out)
{
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale;  /* the bilinear filter's support is 1 */
    int ksize = (int)ceil(support) * 2 + 1;
    double *pre = malloc((size_t)ksize * sizeof(double));
    int32_t *kk = calloc((size_t)out_size * ksize, sizeof(int32_t));
    int *bounds = malloc((size_t)out_size * 2 * sizeof(int));
    if (!pre || !kk || !bounds) {
        free(pre), free(kk), free(bounds);
        return 0;
    }
    for (int i = 0; i < out_size; i++) {
        double center = in0 + (i + 0.5) * scale, total = 0.0, ss = 1.0 / filterscale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0)
            lo = 0;
        if (hi > in_size)
            hi = in_size;
        int n = hi - lo;
        for (int x = 0; x < n; x++)
            total += pre[x] = bilinear((x + lo - center + 0.5) * ss);
        for (int x = 0; x < n; x++) {
            double w = total != 0.0 ? pre[x] / total : pre[x];
            kk[i * ksize + x] = (int32_t)(w < 0 ? -0.5 + w * (1 << PRECISION_BITS)
                                                : 0.5 + w * (1 << PRECISION_BITS));
        }
        bounds[2 * i] = lo;
        bounds[2 * i + 1] = n;
    }
    free(pre);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

/* rows x width RGB -> rows x size RGB. */
static void horizontal(const uint8_t *in, size_t stride, int rows, uint8_t *out, int size,
                       const int *bounds, const int32_t *kk, int ksize)
{
    for (int y = 0; y < rows; y++) {
        const uint8_t *row = in + y * stride;
        uint8_t *o = out + (size_t)y * size * 3;
        for (int i = 0; i < size; i++) {
            const uint8_t *p = row + (size_t)bounds[2 * i] * 3;
            const int32_t *k = kk + (size_t)i * ksize;
            int32_t r = HALF, g = HALF, b = HALF;
            for (int x = 0; x < bounds[2 * i + 1]; x++, p += 3) {
                r += p[0] * k[x];
                g += p[1] * k[x];
                b += p[2] * k[x];
            }
            o[3 * i] = clip8(r);
            o[3 * i + 1] = clip8(g);
            o[3 * i + 2] = clip8(b);
        }
    }
}


#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_PATH 1
#include <immintrin.h>

/* The horizontal pass, two taps of all three channels per instruction.
 *
 * Each 22-bit weight k is split as k = kh * 2048 + kl (both < 2^15), so that
 * pixel * weight sums fit _mm256_madd_epi16's 16-bit products: the low
 * 128-bit lane sums pixel * kh, the high lane pixel * kl, for taps (t, t+1) of
 * R, G and B; HALF + (sum_h << 11) + sum_l is then Pillow's sum, exactly. */
__attribute__((target("avx2")))
static int horizontal_avx2(const uint8_t *in, size_t stride, int rows, uint8_t *out, int size,
                           const int *bounds, const int32_t *kk, int ksize)
{
    int pairs = (ksize + 1) / 2;
    int x0 = bounds[0], x1 = bounds[2 * size - 2] + bounds[2 * size - 1];  /* columns read */
    size_t span = (size_t)(x1 - x0) * 3;
    /* One row at a time in a zero-padded copy, so the 16-byte loads of the last taps stay inside. */
    uint8_t *row = calloc(span + (size_t)ksize * 3 + 32, 1);
    int16_t *coef = aligned_alloc(32, (size_t)size * pairs * 32);
    if (!row || !coef) {
        free(row), free(coef);
        return 0;
    }
    for (int i = 0; i < size; i++) {
        for (int q = 0; q < pairs; q++) {
            int16_t *c = coef + ((size_t)i * pairs + q) * 16;
            int32_t k0 = kk[i * ksize + 2 * q], k1 = 2 * q + 1 < ksize ? kk[i * ksize + 2 * q + 1] : 0;
            for (int ch = 0; ch < 3; ch++) {
                c[2 * ch] = (int16_t)(k0 >> 11), c[2 * ch + 1] = (int16_t)(k1 >> 11);
                c[8 + 2 * ch] = (int16_t)(k0 & 2047), c[8 + 2 * ch + 1] = (int16_t)(k1 & 2047);
            }
            c[6] = c[7] = c[14] = c[15] = 0;
        }
    }
    /* bytes R0 G0 B0 R1 G1 B1 -> 16-bit (R0, R1), (G0, G1), (B0, B1), 0, in both lanes */
    const __m256i pick = _mm256_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,
                                          0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
    const __m128i half = _mm_set1_epi32(HALF);
    for (int y = 0; y < rows; y++) {
        memcpy(row, in + y * stride + (size_t)x0 * 3, span);
        uint8_t *o = out + (size_t)y * size * 3;
        for (int i = 0; i < size; i++) {
            const uint8_t *p = row + (size_t)(bounds[2 * i] - x0) * 3;
            const __m256i *c = (const __m256i *)(coef + (size_t)i * pairs * 16);
            __m256i acc = _mm256_setzero_si256();
            for (int q = 0; q < pairs; q++, p += 6) {
                __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_shuffle_epi8(v, pick), _mm256_load_si256(c + q)));
            }
            __m128i sum = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(_mm256_castsi256_si128(acc), 11),
                                                      _mm256_extracti128_si256(acc, 1)), half);
            sum = _mm_srai_epi32(sum, PRECISION_BITS);
            sum = _mm_packus_epi16(_mm_packus_epi32(sum, sum), sum);  /* clip to 0..255, as clip8 */
            uint32_t rgb = (uint32_t)_mm_cvtsi128_si32(sum);
            o[3 * i] = (uint8_t)rgb, o[3 * i + 1] = (uint8_t)(rgb >> 8), o[3 * i + 2] = (uint8_t)(rgb >> 16);
        }
    }
    free(row), free(coef);
    return 1;
}
#endif

/* Whole rows at a time: the inner loops run over contiguous bytes and vectorise. */
static ALWAYS_INLINE void vertical(
    const uint8_t *in, int size, uint8_t *out, const int *bounds, const int32_t *kk, int ksize, int32_t *acc)
{
    int n = size * 3;
    for (int j = 0; j < size; j++) {
        for (int i = 0; i < n; i++)
            acc[i] = HALF;
        const int32_t *k = kk + (size_t)j * ksize;
        for (int y = 0; y < bounds[2 * j + 1]; y++) {
            const uint8_t *row = in + (size_t)(bounds[2 * j] + y) * n;
            int32_t w = k[y];
            for (int i = 0; i < n; i++)
                acc[i] += row[i] * w;
        }
        for (int i = 0; i < n; i++)
            out[(size_t)j * n + i] = clip8(acc[i]);
    }
}

#ifdef HAVE_AVX2_PATH
/* The same loops, compiled for 8 lanes of 32-bit products. */
__attribute__((target("avx2")))
static void vertical_avx2(const uint8_t *in, int size, uint8_t *out, const int *bounds, const int32_t *kk,
                          int ksize, int32_t *acc)
{
    vertical(in, size, out, bounds, kk, ksize, acc);
}
#endif

static PyObject *resize(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer pixels;
    int width, height, size;
    float box[4];
    int simd = 1;
    if (!PyArg_ParseTuple(args, "y*iiffffi|p", &pixels, &width, &height, &box[0], &box[1], &box[2], &box[3], &size,
                          &simd))
        return NULL;
    if (width < 1 || height < 1 || size < 1 || pixels.len < (Py_ssize_t)width * height * 3
        || !(box[0] >= 0 && box[1] >= 0 && box[2] <= width && box[3] <= height
             && box[0] < box[2] && box[1] < box[3])) {
        PyBuffer_Release(&pixels);
        PyErr_SetString(PyExc_ValueError,
                        "the box must lie inside a width x height RGB image and the size be positive");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size * size * 3);
    if (!result) {
        PyBuffer_Release(&pixels);
        return NULL;
    }
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
#ifdef HAVE_AVX2_PATH
    int avx2 = simd && __builtin_cpu_supports("avx2");
#else
    (void)simd;
#endif
    const uint8_t *in = pixels.buf;
    int *xb = NULL, *yb = NULL;
    int32_t *xk = NULL, *yk = NULL;
    uint8_t *tmp = NULL;
    int32_t *acc = NULL;
    int ok = 0;

    Py_BEGIN_ALLOW_THREADS
    int xks = weights(width, box[0], box[2], size, &xb, &xk);
    int yks = weights(height, box[1], box[3], size, &yb, &yk);
    if (xks && yks) {
        /* As Pillow: a pass runs unless the box already is that axis, whole and at size. */
        int need_h = size != width || box[0] != 0 || box[2] != size;
        int need_v = size != height || box[1] != 0 || box[3] != size;
        int first = yb[0], last = yb[2 * size - 2] + yb[2 * size - 1];  /* input rows the vertical pass reads */
        if (!need_v)
            first = 0, last = height;
        tmp = malloc((size_t)(last - first) * size * 3);
        acc = malloc((size_t)size * 3 * sizeof(int32_t));  /* one output row's sums */
        if (tmp && acc) {
            const uint8_t *rows = in + (size_t)first * width * 3;
            if (need_h) {
                int done = 0;
#ifdef HAVE_AVX2_PATH
                if (avx2)
                    done = horizontal_avx2(rows, (size_t)width * 3, last - first, tmp, size, xb, xk, xks);
#endif
                if (!done)
                    horizontal(rows, (size_t)width * 3, last - first, tmp, size, xb, xk, xks);
            } else {
                memcpy(tmp, rows, (size_t)(last - first) * width * 3);
            }
            if (need_v) {
                for (int j = 0; j < size; j++)
                    yb[2 * j] -= first;
#ifdef HAVE_AVX2_PATH
                if (avx2)
                    vertical_avx2(tmp, size, out, yb, yk, yks, acc);
                else
#endif
                    vertical(tmp, size, out, yb, yk, yks, acc);
            } else {
                memcpy(out, tmp, (size_t)size * size * 3);
            }
            ok = 1;
        }
    }
    free(xb), free(xk), free(yb), free(yk), free(tmp), free(acc);
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&pixels);
    if (!ok) {
        Py_DECREF(result);
        return PyErr_NoMemory();
    }
    return result;
}

static PyMethodDef methods[] = {
    {"resize", resize, METH_VARARGS,
     "resize(pixels, width, height, left, top, right, bottom, size, simd=True) -> bytes:\n"
     "Pillow's bilinear crop resize of packed RGB"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_resample",
    "Pillow's bilinear resize of a box of packed RGB pixels, exact, without Pillow's copy.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__resample(void)
{
    return PyModule_Create(&module);
}
