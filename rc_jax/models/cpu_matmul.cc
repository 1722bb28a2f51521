// Decode-sized matrix products for XLA:CPU (XLA FFI custom calls).
//
//   rc_jax_f32_matmul:  y[n, o] = sum_i x[n, i] * w[o, i]
//   rc_jax_int8_matmul: y[n, o] = scale[o] * sum_i x[n, i] * values[o, i]
//
// x: f32 [N, I] with few rows (decode: one per sequence); the weight in rc_jax's decode
// layout [out, in] (f32, or s8 values with an f32 scale [O]); y: f32 [N, O].
//
// A decode step is a stream of weight bytes, and what these kernels add over XLA:CPU's own
// dot is how they stream: each weight row is read once for all N activation rows, and the
// next channels are prefetched in software while this block is computed. XLA's dot
// starts every matrix cold and leaves the stream to the hardware prefetcher, which stops
// at 4 KB page boundaries (SmolLM2's projections: 21.7 GB/s through XLA's dots vs ~30
// here, on the 2-core Xeon). For int8, XLA:CPU has no dot that reads s8 at all: it
// converts to a float copy first. Here each int8 weight is widened in registers, so a
// decode step streams 1 byte per weight.
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
// Software prefetch distance, in tiles of 4 channels (measured: 1-2 best; the
// hardware prefetcher alone left int8 at ~11 GB/s from DRAM on the 2-core Xeon, 19-21
// with it).
constexpr int64_t kPrefetchBlocks = 1;

#if defined(__AVX2__) && defined(__FMA__)
inline float HorizontalSum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// 8 consecutive weights as 8 floats (int8: widened in registers).
inline __m256 Load8(const float* w) { return _mm256_loadu_ps(w); }
inline __m256 Load8(const int8_t* w) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}
#endif

#if defined(__AVX512F__)
// 16 consecutive weights as 16 floats.
inline __m512 Load16(const float* w) { return _mm512_loadu_ps(w); }
inline __m512 Load16(const int8_t* w) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
}
// 3-4 rows x 4 channels = 16 accumulators: fits AVX-512's 32 registers, not AVX2's 16.
constexpr int64_t kChannelsWide = 4;
#else
constexpr int64_t kChannelsWide = 2;
#endif

// A register block: y[r, o] = x[r, :] . w[o, :] (times scale[o] when given) for R
// activation rows and O consecutive output channels (template parameters, so the R x O
// accumulators stay in registers). Each 8 weights are loaded once and used by R rows;
// each 8 activations are loaded once and used by O channels. The R x O accumulators are
// independent FMA chains: one chain alone waits ~4 cycles per step, which at batch 1 would
// cap the kernel far below memory bandwidth. y is written with row stride `ldy`.
template <int64_t R, int64_t O, typename W>
inline void Block(const float* x, const W* w, const float* scale, int64_t in, float* y,
                  int64_t ldy) {
  float acc_s[R][O] = {};
  int64_t i = 0;
#if defined(__AVX512F__)
  // Three or more rows: 16 columns per step where the CPU has AVX-512 (half the loads and
  // FMAs per weight; SmolLM2's matmuls at 8 rows 7% faster in f32, 16% in int8, on the
  // 2-core Xeon). Rows 1-2 stay on the 8-wide loop below, which streams as fast (they
  // wait on memory, not on arithmetic). The 8-wide loop takes any remainder.
  if constexpr (R >= 3) {
    __m512 acc16[R][O];
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < O; ++o) acc16[r][o] = _mm512_setzero_ps();
    const char* ahead = reinterpret_cast<const char*>(w + kPrefetchBlocks * 4 * in);
    constexpr int64_t span = 4 * 16 * static_cast<int64_t>(sizeof(W));
    for (; i + 16 <= in; i += 16) {
      const char* at = ahead + 4 * i * static_cast<int64_t>(sizeof(W));
      for (int64_t p = 0; p < span + 64; p += 64) _mm_prefetch(at + p, _MM_HINT_T0);
      __m512 wf[O];
      for (int64_t o = 0; o < O; ++o) wf[o] = Load16(w + o * in + i);
      for (int64_t r = 0; r < R; ++r) {
        const __m512 xv = _mm512_loadu_ps(x + r * in + i);
        for (int64_t o = 0; o < O; ++o) acc16[r][o] = _mm512_fmadd_ps(xv, wf[o], acc16[r][o]);
      }
    }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < O; ++o) acc_s[r][o] = _mm512_reduce_add_ps(acc16[r][o]);
  }
#endif
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[R][O];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = 0; o < O; ++o) acc[r][o] = _mm256_setzero_ps();
  // The next tile's 4 channels follow in memory: prefetch them as this block is swept
  // (their 4 x 8 weights of a step, plus one line, per 8 columns).
  const char* ahead = reinterpret_cast<const char*>(w + kPrefetchBlocks * 4 * in);
  constexpr int64_t span = 4 * 8 * static_cast<int64_t>(sizeof(W));
  for (; i + 8 <= in; i += 8) {
    const char* at = ahead + 4 * i * static_cast<int64_t>(sizeof(W));
    for (int64_t p = 0; p < span + 64; p += 64) _mm_prefetch(at + p, _MM_HINT_T0);
    __m256 wf[O];
    for (int64_t o = 0; o < O; ++o) wf[o] = Load8(w + o * in + i);
    for (int64_t r = 0; r < R; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * in + i);
      for (int64_t o = 0; o < O; ++o) acc[r][o] = _mm256_fmadd_ps(xv, wf[o], acc[r][o]);
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = 0; o < O; ++o) acc_s[r][o] += HorizontalSum(acc[r][o]);
#endif
  for (; i < in; ++i)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < O; ++o)
        acc_s[r][o] += x[r * in + i] * static_cast<float>(w[o * in + i]);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = 0; o < O; ++o)
      y[r * ldy + o] = scale == nullptr ? acc_s[r][o] : acc_s[r][o] * scale[o];
}

// Rows [0, R) of x against the `oc` <= 4 output channels from o: one register block of
// 4 channels (1-2 rows; 3-4 rows with AVX-512) or two of 2 (3-4 rows with AVX2), or
// channel by channel at the end.
template <int64_t R, typename W>
inline void Tile(const float* x, const W* w, const float* scale, int64_t in, int64_t out,
                 int64_t o, int64_t oc, float* y) {
  constexpr int64_t O = R <= 2 ? 4 : kChannelsWide;
  int64_t c = 0;
  if (oc == 4)
    for (; c < 4; c += O)
      Block<R, O>(x, w + (o + c) * in, scale ? scale + o + c : nullptr, in, y + o + c, out);
  for (; c < oc; ++c)
    Block<R, 1>(x, w + (o + c) * in, scale ? scale + o + c : nullptr, in, y + o + c, out);
}

template <typename W>
struct Job {
  const float* x;
  const W* w;
  const float* scale;  // nullptr: no per-channel scale
  float* y;
  int64_t n, in, out, block, num_blocks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  // Take blocks of output channels until none are left. Within a block, 4 channels at a
  // time against every row of x, four rows at a time: the 4 channels' weights stay in
  // L1 while all row tiles use them, so each weight comes from memory once.
  void Work() {
    for (int64_t b = next.fetch_add(1); b < num_blocks; b = next.fetch_add(1)) {
      const int64_t o1 = std::min(out, (b + 1) * block);
      for (int64_t o = b * block; o < o1; o += 4) {
        const int64_t oc = std::min<int64_t>(4, o1 - o);
        for (int64_t r0 = 0; r0 < n; r0 += 4) {
          const float* xr = x + r0 * in;
          float* yr = y + r0 * out;
          switch (std::min<int64_t>(4, n - r0)) {
            case 1: Tile<1>(xr, w, scale, in, out, o, oc, yr); break;
            case 2: Tile<2>(xr, w, scale, in, out, o, oc, yr); break;
            case 3: Tile<3>(xr, w, scale, in, out, o, oc, yr); break;
            default: Tile<4>(xr, w, scale, in, out, o, oc, yr); break;
          }
        }
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Pool: anything with num_threads() and Schedule(task) (XLA's ffi::ThreadPool here).
template <typename W, typename Pool>
void Run(Pool& pool, const float* x, const W* w, const float* scale, float* y,
         int64_t n, int64_t in, int64_t out) {
  if (n == 0 || out == 0) return;  // nothing to write (and no blocks to split)
  auto job = std::make_shared<Job<W>>();
  job->x = x;
  job->w = w;
  job->scale = scale;
  job->y = y;
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
}

ffi::Error F32MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || wd[1] != xd[1])
    return ffi::Error::InvalidArgument("rc_jax_f32_matmul: x must be [N, I], w [O, I]");
  Run<float>(pool, x.typed_data(), w.typed_data(), nullptr, y->typed_data(), xd[0], xd[1],
             wd[0]);
  return ffi::Error::Success();
}

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::S8> values, ffi::Buffer<ffi::F32> scale,
                          ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = values.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || scale.dimensions().size() != 1 ||
      wd[1] != xd[1] || scale.dimensions()[0] != wd[0])
    return ffi::Error::InvalidArgument(
        "rc_jax_int8_matmul: x must be [N, I], values [O, I], scale [O]");
  Run<int8_t>(pool, x.typed_data(), values.typed_data(), scale.typed_data(), y->typed_data(),
              xd[0], xd[1], wd[0]);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RcJaxF32Matmul, F32MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RcJaxInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
