// Weight-only int8 matrix-vector products for XLA:CPU (an XLA FFI custom call).
//
//   y[n, o] = scale[o] * sum_i x[n, i] * values[o, i]
//
// x: f32 [N, I]; values: s8 [O, I] (rc_jax's decode layout, [out, in]); scale: f32 [O];
// y: f32 [N, O]. Each int8 weight is read once per call and widened to float in
// registers, so a decode step streams 1 byte per weight. XLA:CPU's own ops cannot do
// that: its dot is a library call on materialized float operands, so int8 either becomes
// a hoisted float copy (4 bytes per weight read per step) or a conversion pass per step.
//
// Work is split into blocks of output channels, taken from a shared atomic counter by
// the calling thread and by tasks scheduled on XLA's intra-op thread pool. The caller
// never waits for a task to *start*: if the pool is busy it takes every block itself, and
// a task that starts late finds no block left (the shared state outlives the call).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Blocks of output channels per thread: each thread streams a few long contiguous
// stretches of the weight (what the hardware prefetcher follows best), with enough
// blocks that a thread starting late still finds work.
constexpr int64_t kBlocksPerThread = 2;
// Software prefetch distance, in register blocks of channels (measured: 1-2 best; the
// hardware prefetcher alone left the 2-core Xeon at ~11 GB/s from DRAM, 19-21 with it).
constexpr int64_t kPrefetchBlocks = 1;

#if defined(__AVX2__) && defined(__FMA__)
inline float HorizontalSum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
#endif

// A register block: y[r, o] = x[r, :] . w[o, :] for R activation rows and O consecutive
// output channels (template parameters, so the R x O accumulators stay in registers).
// Each 8 int8 weights are widened once and used by R rows; each 8 activations are loaded
// once and used by O channels. The R x O accumulators are independent FMA chains: one
// chain alone waits ~4 cycles per step, which at batch 1 would cap the kernel far below
// memory bandwidth. y is written with row stride `ldy`, after the per-channel scale.
template <int64_t R, int64_t O>
inline void Block(const float* x, const int8_t* w, const float* scale, int64_t in,
                  float* y, int64_t ldy) {
  float acc_s[R][O] = {};
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[R][O];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = 0; o < O; ++o) acc[r][o] = _mm256_setzero_ps();
  // The next channels' weights follow these O rows in memory: prefetch them as this
  // block is swept (2 x 32 bytes per 8 columns), so the stream from DRAM never waits
  // on the hardware prefetcher (which stops at 4 KB page boundaries).
  const char* ahead = reinterpret_cast<const char*>(w) + kPrefetchBlocks * O * in;
  for (; i + 8 <= in; i += 8) {
    _mm_prefetch(ahead + O * i, _MM_HINT_T0);
    _mm_prefetch(ahead + O * i + 64, _MM_HINT_T0);
    __m256 wf[O];
    for (int64_t o = 0; o < O; ++o)
      wf[o] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + o * in + i))));
    for (int64_t r = 0; r < R; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * in + i);
      for (int64_t o = 0; o < O; ++o) acc[r][o] = _mm256_fmadd_ps(xv, wf[o], acc[r][o]);
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = 0; o < O; ++o) acc_s[r][o] = HorizontalSum(acc[r][o]);
#endif
  for (; i < in; ++i)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < O; ++o)
        acc_s[r][o] += x[r * in + i] * static_cast<float>(w[o * in + i]);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = 0; o < O; ++o) y[r * ldy + o] = acc_s[r][o] * scale[o];
}

// Rows [0, R) of x against output channels [o0, o1): blocks of O channels, then one by one.
template <int64_t R, int64_t O>
inline void Channels(const float* x, const int8_t* values, const float* scale, int64_t in,
                     int64_t out, int64_t o0, int64_t o1, float* y) {
  int64_t o = o0;
  for (; o + O <= o1; o += O) Block<R, O>(x, values + o * in, scale + o, in, y + o, out);
  for (; o < o1; ++o) Block<R, 1>(x, values + o * in, scale + o, in, y + o, out);
}

struct Job {
  const float* x;
  const int8_t* values;
  const float* scale;
  float* y;
  int64_t n, in, out, block;
  int64_t num_blocks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  // Take blocks of output channels until none are left; each block runs every row of x,
  // four at a time (register blocks of 1x4, 2x4, 3x2 or 4x2 rows x channels).
  void Work() {
    for (int64_t b = next.fetch_add(1); b < num_blocks; b = next.fetch_add(1)) {
      const int64_t o0 = b * block, o1 = std::min(out, o0 + block);
      for (int64_t r0 = 0; r0 < n; r0 += 4) {
        const float* xr = x + r0 * in;
        float* yr = y + r0 * out;
        switch (std::min<int64_t>(4, n - r0)) {
          case 1: Channels<1, 4>(xr, values, scale, in, out, o0, o1, yr); break;
          case 2: Channels<2, 4>(xr, values, scale, in, out, o0, o1, yr); break;
          case 3: Channels<3, 2>(xr, values, scale, in, out, o0, o1, yr); break;
          default: Channels<4, 2>(xr, values, scale, in, out, o0, o1, yr); break;
        }
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::S8> values, ffi::Buffer<ffi::F32> scale,
                          ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = values.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || scale.dimensions().size() != 1)
    return ffi::Error::InvalidArgument("int8_matmul: x must be [N, I], values [O, I], scale [O]");
  const int64_t n = xd[0], in = xd[1], out = wd[0];
  if (wd[1] != in || scale.dimensions()[0] != out)
    return ffi::Error::InvalidArgument("int8_matmul: shapes of x, values and scale disagree");
  auto job = std::make_shared<Job>();
  job->x = x.typed_data();
  job->values = values.typed_data();
  job->scale = scale.typed_data();
  job->y = y->typed_data();
  job->n = n;
  job->in = in;
  job->out = out;
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  job->block = (out + threads * kBlocksPerThread - 1) / (threads * kBlocksPerThread);
  job->block = (job->block + 3) / 4 * 4;  // whole register blocks of 4 (or 2) channels
  job->num_blocks = (out + job->block - 1) / job->block;
  const int64_t helpers = std::min<int64_t>(threads - 1, job->num_blocks - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->Work(); });
  job->Work();
  // Blocks taken by helpers may still be running: wait for them (never for a task that
  // has not started; it would find no block left).
  while (job->done.load(std::memory_order_acquire) < job->num_blocks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RcJaxInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
