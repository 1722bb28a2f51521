// Decode attention over one segment of rc_jax's CPU decode-form cache (XLA FFI call).
//
//   rc_jax_decode_attention_write(q [N, M, D], keys [N, D, C], values [N, C, D],
//                                 valid [B, C] (pred), query_slots [B, S] (s32),
//                                 write_slots [N, W] (s32), new_k [N, W, D], new_v [N, W, D])
//     -> max m [N, M], sum l [N, M], weighted values o [N, M, D], keys, values  (all f32)
//
// first writes row n's W new keys / values at its slots write_slots[n, :] (a slot outside
// [0, C) is dropped; W may be 0), in place (the keys / values outputs alias the inputs),
// then attends. XLA:CPU writes a new key as a strided column of [N, D, C] in a separate
// op per layer and cache (1.5 ms of a 41 ms batch-8 SmolLM2 step); here a row's writes
// are a few cache lines touched just before the row is read.
//
// N = B * K cache rows (row n = b * K + kv head), M = G * S queries per row (query
// m = g * S + s, the layout of attention._group_queries). Query m of row n sees slot c iff
// valid[b, c] and c <= query_slots[b, s]. For each (n, m): m = max of the visible
// scores q.k / sqrt(D), l = sum exp(score - m), o = sum exp(score - m) v; a query that
// sees nothing gets (m, l, o) = (kMaskValue, 0, 0), what attention.decode_attention's
// skipped segments contribute (exact zeros once merged).
//
// Why a kernel: XLA:CPU computes this as two batched matmuls plus a softmax over the
// whole segment, ~10 small ops per layer, each of which reads or writes [N, M, C] or
// the cache in full; at batch 8 that cost 3x the time it takes to read the cache once
// (SmolLM2, 384-slot cache, benchmarks/decode_profile.py). Here each cache row is read
// once, and only up to its last visible slot: a row's cost follows its own length.
// A row's result depends only on its own inputs, so rows stay independent (the RC
// engine's continuous == lockstep identity).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kMaskValue = -0.7f * 3.4028234663852886e38f;  // attention._MASK_VALUE

#if defined(__AVX2__) && defined(__FMA__)
// exp(x) for 8 floats: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial
// (Cephes' expf coefficients, ~1 ulp), times 2^n built in the exponent bits.
inline __m256 Exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)),
                    _mm256_set1_ps(-87.3365447504019f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// scores[i, t0 .. t0+15] = q[i] . keys[:, t0 .. t0+15] for QM queries: 2 x QM accumulators
// in registers; each key row's 16 slots are loaded once for all QM queries.
template <int64_t QM>
inline void Scores16(const float* q, int64_t d, const float* keys, int64_t c, int64_t t0,
                     float* scores, int64_t ld) {
  __m256 acc[QM][2];
  for (int64_t i = 0; i < QM; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < d; ++k) {
    const float* kr = keys + k * c + t0;
    // D key rows are D concurrent streams, more than the hardware prefetcher follows:
    // fetch this row's slots two blocks ahead in software.
    _mm_prefetch(reinterpret_cast<const char*>(kr + 32), _MM_HINT_T0);
    const __m256 k0 = _mm256_loadu_ps(kr), k1 = _mm256_loadu_ps(kr + 8);
    for (int64_t i = 0; i < QM; ++i) {
      const __m256 qb = _mm256_broadcast_ss(q + i * d + k);
      acc[i][0] = _mm256_fmadd_ps(qb, k0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(qb, k1, acc[i][1]);
    }
  }
  for (int64_t i = 0; i < QM; ++i) {
    _mm256_storeu_ps(scores + i * ld + t0, acc[i][0]);
    _mm256_storeu_ps(scores + i * ld + t0 + 8, acc[i][1]);
  }
}

// o[i, k0 .. k0+31] = sum_t p[i, t] values[t, k0 .. k0+31] for QM queries over the slots
// with ok[t]: 4 x QM accumulators in registers; each value row's 32 floats loaded once.
template <int64_t QM>
inline void Values32(const float* p, int64_t ld, const float* values, int64_t d,
                     int64_t end, const bool* ok, int64_t k0, float* o) {
  __m256 acc[QM][4];
  for (int64_t i = 0; i < QM; ++i)
    for (int64_t j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t t = 0; t < end; ++t) {
    if (!ok[t]) continue;
    const float* v = values + t * d + k0;
    __m256 vv[4];
    for (int64_t j = 0; j < 4; ++j) vv[j] = _mm256_loadu_ps(v + 8 * j);
    for (int64_t i = 0; i < QM; ++i) {
      const __m256 pb = _mm256_broadcast_ss(p + i * ld + t);
      for (int64_t j = 0; j < 4; ++j) acc[i][j] = _mm256_fmadd_ps(pb, vv[j], acc[i][j]);
    }
  }
  for (int64_t i = 0; i < QM; ++i)
    for (int64_t j = 0; j < 4; ++j) _mm256_storeu_ps(o + i * d + k0 + 8 * j, acc[i][j]);
}

// Queries [i0, i0 + qm) (qm <= 3) of one row: Scores16 / Values32 with qm fixed.
template <int64_t QM>
inline void ScoresBlocks(const float* q, int64_t d, const float* keys, int64_t c,
                         int64_t end16, float* scores, int64_t ld) {
  for (int64_t t0 = 0; t0 < end16; t0 += 16) Scores16<QM>(q, d, keys, c, t0, scores, ld);
}
template <int64_t QM>
inline void ValuesBlocks(const float* p, int64_t ld, const float* values, int64_t d,
                         int64_t end, const bool* ok, int64_t d32, float* o) {
  for (int64_t k0 = 0; k0 < d32; k0 += 32) Values32<QM>(p, ld, values, d, end, ok, k0, o);
}
#endif

struct Job {
  const float* q;
  float *keys, *values;  // the cache outputs (aliasing the inputs): written, then read
  const bool* valid;
  const int32_t* slots;
  float *m_out, *l_out, *o_out;
  int64_t n, m, d, c, kv_heads, s;
  // Row n's w new entries go to write_slots[n, :] before the row is read.
  const int32_t* write_slots;
  const float *new_k, *new_v;
  int64_t w;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Write(int64_t row) const {
    for (int64_t j = 0; j < w; ++j) {
      const int64_t slot = write_slots[row * w + j];
      if (slot < 0 || slot >= c) continue;  // dropped (another segment's slot)
      const float* nk = new_k + (row * w + j) * d;
      float* kcol = keys + row * d * c + slot;
      for (int64_t k = 0; k < d; ++k) kcol[k * c] = nk[k];
      std::copy(new_v + (row * w + j) * d, new_v + (row * w + j + 1) * d,
                values + (row * c + slot) * d);
    }
  }

  // One cache row n: every query of the row against its visible slots.
  void Row(int64_t row, std::vector<float>& scores) const {
    Write(row);
    const int64_t b = row / kv_heads;
    const bool* ok = valid + b * c;
    // Slots [0, end) hold everything some query of this row sees.
    int64_t end = 0;
    for (int64_t j = 0; j < s; ++j)
      end = std::max<int64_t>(end, std::min<int64_t>(slots[b * s + j], c - 1) + 1);
    const float* qr = q + row * m * d;
    const float* kr = keys + row * d * c;
    const float* vr = values + row * c * d;
    float* mo = m_out + row * m;
    float* lo = l_out + row * m;
    float* oo = o_out + row * m * d;
    std::fill(oo, oo + m * d, 0.0f);
    scores.assign(m * std::max<int64_t>(end, 1), 0.0f);
    // scores[i, :end] = q[i] . keys[:, :end]: 16 slots x up to 3 queries per register
    // block, then the slots past the last whole block (and no SIMD: everything) one by one.
    int64_t done_t = 0;
#if defined(__AVX2__) && defined(__FMA__)
    done_t = end / 16 * 16;
    for (int64_t i0 = 0; i0 < m; i0 += 3) {
      float* si = scores.data() + i0 * end;
      switch (std::min<int64_t>(3, m - i0)) {
        case 1: ScoresBlocks<1>(qr + i0 * d, d, kr, c, done_t, si, end); break;
        case 2: ScoresBlocks<2>(qr + i0 * d, d, kr, c, done_t, si, end); break;
        default: ScoresBlocks<3>(qr + i0 * d, d, kr, c, done_t, si, end); break;
      }
    }
#endif
    for (int64_t k = 0; k < d; ++k) {
      const float* key = kr + k * c;
      for (int64_t i = 0; i < m; ++i) {
        const float qk = qr[i * d + k];
        float* si = scores.data() + i * end;
        for (int64_t t = done_t; t < end; ++t) si[t] += qk * key[t];
      }
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    for (int64_t i = 0; i < m; ++i) {
      const int64_t last = std::min<int64_t>(slots[b * s + i % s], c - 1);
      float* si = scores.data() + i * end;
      float top = kMaskValue;
      bool any = false;
      for (int64_t t = 0; t <= last; ++t) {
        if (!ok[t]) continue;
        si[t] *= scale;
        top = any ? std::max(top, si[t]) : si[t];
        any = true;
      }
      mo[i] = any ? top : kMaskValue;
      if (!any) {
        lo[i] = 0.0f;
        continue;
      }
      // si[t] <- exp(si[t] - top) where visible, 0 elsewhere (then p @ values).
      int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
      const __m256 top8 = _mm256_set1_ps(top);
      for (; t + 8 <= last + 1; t += 8)
        _mm256_storeu_ps(si + t, Exp8(_mm256_sub_ps(_mm256_loadu_ps(si + t), top8)));
#endif
      for (; t <= last; ++t) si[t] = std::exp(si[t] - top);
      float sum = 0.0f;
      for (t = 0; t <= last; ++t) {
        if (!ok[t]) {
          si[t] = 0.0f;
          continue;
        }
        sum += si[t];
      }
      lo[i] = sum;
      for (t = last + 1; t < end; ++t) si[t] = 0.0f;
    }
    // o[i] = sum_t p[i, t] v[t]: 32 dims x up to 3 queries per register block, then the
    // dims past the last whole block (no SIMD: all of them) one by one.
    int64_t done_k = 0;
#if defined(__AVX2__) && defined(__FMA__)
    done_k = d / 32 * 32;
    for (int64_t i0 = 0; i0 < m; i0 += 3) {
      const float* p = scores.data() + i0 * end;
      float* o = oo + i0 * d;
      switch (std::min<int64_t>(3, m - i0)) {
        case 1: ValuesBlocks<1>(p, end, vr, d, end, ok, done_k, o); break;
        case 2: ValuesBlocks<2>(p, end, vr, d, end, ok, done_k, o); break;
        default: ValuesBlocks<3>(p, end, vr, d, end, ok, done_k, o); break;
      }
    }
#endif
    if (done_k < d)
      for (int64_t t = 0; t < end; ++t) {
        if (!ok[t]) continue;
        const float* v = vr + t * d;
        for (int64_t i = 0; i < m; ++i) {
          const float p = scores[i * end + t];
          float* oi = oo + i * d;
          for (int64_t k = done_k; k < d; ++k) oi[k] += p * v[k];
        }
      }
  }

  void Work() {
    std::vector<float> scores;
    for (int64_t row = next.fetch_add(1); row < n; row = next.fetch_add(1)) {
      Row(row, scores);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error DecodeAttentionImpl(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> keys,
    ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::PRED> valid, ffi::Buffer<ffi::S32> slots,
    ffi::Buffer<ffi::S32> write_slots, ffi::Buffer<ffi::F32> new_k,
    ffi::Buffer<ffi::F32> new_v, ffi::ResultBuffer<ffi::F32> m_out,
    ffi::ResultBuffer<ffi::F32> l_out, ffi::ResultBuffer<ffi::F32> o_out,
    ffi::ResultBuffer<ffi::F32> keys_out, ffi::ResultBuffer<ffi::F32> values_out) {
  auto qd = q.dimensions(), kd = keys.dimensions(), vd = values.dimensions();
  auto md = valid.dimensions(), sd = slots.dimensions();
  auto wd = write_slots.dimensions(), nkd = new_k.dimensions(), nvd = new_v.dimensions();
  if (qd.size() != 3 || kd.size() != 3 || vd.size() != 3 || md.size() != 2 ||
      sd.size() != 2 || kd[0] != qd[0] || kd[1] != qd[2] || vd[0] != qd[0] ||
      vd[1] != kd[2] || vd[2] != qd[2] || md[1] != kd[2] || sd[0] != md[0] ||
      md[0] == 0 || qd[0] % md[0] != 0 || sd[1] == 0 || qd[1] % sd[1] != 0 ||
      wd.size() != 2 || nkd.size() != 3 || nvd.size() != 3 || wd[0] != qd[0] ||
      nkd[0] != qd[0] || nkd[1] != wd[1] || nkd[2] != qd[2] || nvd[0] != nkd[0] ||
      nvd[1] != nkd[1] || nvd[2] != nkd[2])
    return ffi::Error::InvalidArgument(
        "rc_jax_decode_attention_write: need q [B*K, G*S, D], keys [B*K, D, C], "
        "values [B*K, C, D], valid [B, C], query_slots [B, S], write_slots [B*K, W], "
        "new_k and new_v [B*K, W, D]");
  // The outputs alias the inputs (input_output_aliases), so this copy never runs under
  // rc_jax; it keeps the call correct if a caller does not alias them.
  float* k_out = keys_out->typed_data();
  float* v_out = values_out->typed_data();
  if (k_out != keys.typed_data()) std::copy_n(keys.typed_data(), keys.element_count(), k_out);
  if (v_out != values.typed_data())
    std::copy_n(values.typed_data(), values.element_count(), v_out);
  auto job = std::make_shared<Job>();
  job->q = q.typed_data();
  job->keys = k_out;
  job->values = v_out;
  job->valid = valid.typed_data();
  job->slots = slots.typed_data();
  job->m_out = m_out->typed_data();
  job->l_out = l_out->typed_data();
  job->o_out = o_out->typed_data();
  job->n = qd[0];
  job->m = qd[1];
  job->d = qd[2];
  job->c = kd[2];
  job->kv_heads = qd[0] / md[0];
  job->s = sd[1];
  job->write_slots = write_slots.typed_data();
  job->new_k = new_k.typed_data();
  job->new_v = new_v.typed_data();
  job->w = wd[1];
  if (job->n == 0) return ffi::Error::Success();
  // Rows are the units of work, taken from a shared counter by the calling thread and by
  // tasks on XLA's pool; the caller never waits for a task to start (see cpu_matmul.cc).
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1) - 1,
                                            job->n - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->Work(); });
  job->Work();
  while (job->done.load(std::memory_order_acquire) < job->n) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RcJaxDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
