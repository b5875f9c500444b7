// CPU-vs-CUDA checks of the training kernels (kernels/cuda/train_ops.h) on fresh random inputs
// each run (the seed is printed): float32 against the CPU twins within float rounding, and
// bfloat16 (inputs rounded to bf16, the CPU fed the same rounded values) within bf16 rounding.
// Outputs are filled with NaN first, so an element a kernel fails to write is caught.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/lora_dropout.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cuda/attention_ops.h"
#include "kernels/cuda/lora_dropout.h"
#include "kernels/cuda/train_ops.h"
#include "tests/gpu/gpu_check.h"

namespace qlorad {
namespace {
namespace kc = kernels::cuda;
using bf16 = __nv_bfloat16;

std::mt19937_64 rng;

std::vector<float> Random(int64_t n, float scale = 1.0f) {
  return gpu_check::Normal(rng, n, scale);
}
template <typename T>
using Dev = gpu_check::DeviceArray<T>;

using gpu_check::FromFloat;
float ToF(float v) { return v; }
float ToF(bf16 v) { return __bfloat162float(v); }

// Copies `host` into a fresh device buffer of T (rounding to bf16 when T is), and rounds `host`
// the same way, so the CPU sees exactly what the GPU sees.
template <typename T>
Dev<T>* Upload(std::vector<float>& host) {
  std::vector<T> t(host.size());
  for (size_t i = 0; i < host.size(); ++i) {
    t[i] = FromFloat<T>(host[i]);
    host[i] = ToF(t[i]);
  }
  auto* d = new Dev<T>(static_cast<int64_t>(host.size()));
  CUDA_OK(cudaMemcpy(d->p, t.data(), t.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<float> Download(const Dev<T>& d) {
  std::vector<T> t(d.n);
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaMemcpy(t.data(), d.p, d.n * sizeof(T), cudaMemcpyDeviceToHost));
  std::vector<float> out(d.n);
  for (int64_t i = 0; i < d.n; ++i) out[i] = ToF(t[i]);
  return out;
}

// |got - want| <= atol + rtol |want| everywhere, and every element written (finite).
void Compare(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
             float rtol, float atol) {
  GPU_CHECK(got.size() == want.size(), "%s: %zu values, want %zu", what.c_str(), got.size(),
            want.size());
  int64_t bad = 0, worst = -1;
  float worst_err = 0.0f;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const float err = std::fabs(got[i] - want[i]);
    if (!std::isfinite(got[i]) || err > atol + rtol * std::fabs(want[i])) {
      ++bad;
      if (worst < 0 || !(err <= worst_err)) {
        worst = static_cast<int64_t>(i);
        worst_err = err;
      }
    }
  }
  GPU_CHECK(bad == 0, "%s: %lld of %zu values off, e.g. [%lld] got %g want %g", what.c_str(),
            static_cast<long long>(bad), got.size(), static_cast<long long>(worst),
            worst >= 0 ? got[worst] : 0.0f, worst >= 0 ? want[worst] : 0.0f);
  std::printf("  %-40s %zu values checked\n", what.c_str(), got.size());
}

template <typename T>
constexpr float Rtol() {
  return sizeof(T) == 4 ? 2e-5f : 1.6e-2f;  // float rounding / bf16's 8-bit mantissa
}
template <typename T>
const char* Name() {
  return sizeof(T) == 4 ? "f32" : "bf16";
}

// dim 1000 takes the kernels' eight-wide path, 1001 the scalar one.
template <typename T>
void RmsNorm(int64_t dim) {
  const int64_t rows = 37;
  std::vector<float> x = Random(rows * dim, 2.0f), w = Random(dim), dy = Random(rows * dim);
  for (float& v : w) v = 1.0f + 0.1f * v;
  std::unique_ptr<Dev<T>> dx_in(Upload<T>(x)), ddy(Upload<T>(dy));
  Dev<float> dw(dim), dinv(rows);
  CUDA_OK(cudaMemcpy(dw.p, w.data(), dim * 4, cudaMemcpyHostToDevice));
  Dev<T> dyo(rows * dim), ddx(rows * dim);
  CUDA_OK(kc::RmsNormForward<T>(dx_in->p, dw.p, rows, dim, 1e-5f, dyo.p, dinv.p, nullptr));
  CUDA_OK(kc::RmsNormBackward<T>(dx_in->p, dw.p, dinv.p, ddy->p, rows, dim, ddx.p, nullptr));
  std::vector<float> y(rows * dim), inv(rows), dxw(rows * dim);
  kernels::RmsNormForward(x.data(), w.data(), rows, dim, 1e-5f, y.data(), inv.data());
  kernels::RmsNormBackward(x.data(), w.data(), inv.data(), dy.data(), rows, dim, dxw.data());
  const std::string n = std::string(Name<T>()) + " dim " + std::to_string(dim);
  Compare("rmsnorm forward " + n, Download(dyo), y, Rtol<T>(), 1e-5f);
  Compare("rmsnorm inv_rms " + n, Download(dinv), inv, 2e-5f, 0.0f);
  // The backward is a difference of two terms: its error scales with the larger term.
  Compare("rmsnorm backward " + n, Download(ddx), dxw, Rtol<T>(), sizeof(T) == 4 ? 1e-5f : 2e-2f);
}

// head_dim 64 takes the eight-wide path (32 pairs), 36 the scalar one (18 pairs).
template <typename T>
void Rope(int64_t head_dim) {
  const int64_t tokens = 300, heads = 6;
  std::vector<float> x = Random(tokens * heads * head_dim);
  std::vector<int32_t> pos(tokens);
  for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>((t * 7) % 2048);
  Dev<int32_t> dpos(tokens);
  CUDA_OK(cudaMemcpy(dpos.p, pos.data(), tokens * 4, cudaMemcpyHostToDevice));
  for (bool inverse : {false, true}) {
    std::vector<float> xi = x;
    std::unique_ptr<Dev<T>> d(Upload<T>(xi));
    CUDA_OK(kc::RopeApply<T>(d->p, dpos.p, tokens, heads, head_dim, 10000.0f, inverse, nullptr));
    kernels::RopeApply(xi.data(), pos.data(), tokens, heads, head_dim, 10000.0f, inverse);
    // Angles up to ~2000 rad: cos/sin of a float angle differ by a few ulp of the angle.
    Compare(std::string("rope ") + (inverse ? "inverse " : "") + Name<T>() + " head_dim " +
                std::to_string(head_dim),
            Download(*d), xi, Rtol<T>(), sizeof(T) == 4 ? 5e-4f : 2e-2f);
  }
}

// n 100000 takes the eight-wide path, 100003 the scalar one.
template <typename T>
void Swiglu(int64_t n) {
  std::vector<float> g = Random(n, 3.0f), u = Random(n), dout = Random(n);
  std::unique_ptr<Dev<T>> dg(Upload<T>(g)), du(Upload<T>(u)), dd(Upload<T>(dout));
  Dev<T> out(n), dgate(n), dup(n);
  CUDA_OK(kc::SwigluForward<T>(dg->p, du->p, n, out.p, nullptr));
  CUDA_OK(kc::SwigluBackward<T>(dg->p, du->p, dd->p, n, dgate.p, dup.p, nullptr));
  std::vector<float> o(n), dgw(n), duw(n);
  kernels::SwigluForward(g.data(), u.data(), n, o.data());
  kernels::SwigluBackward(g.data(), u.data(), dout.data(), n, dgw.data(), duw.data());
  const std::string nm = std::string(Name<T>()) + " n " + std::to_string(n);
  Compare("swiglu forward " + nm, Download(out), o, Rtol<T>(), 1e-6f);
  Compare("swiglu backward dgate " + nm, Download(dgate), dgw, Rtol<T>(), 1e-6f);
  Compare("swiglu backward dup " + nm, Download(dup), duw, Rtol<T>(), 1e-6f);
}

template <typename T>
void CrossEntropy() {
  const int64_t rows = 41, vocab = 32000;
  std::vector<float> logits = Random(rows * vocab, 4.0f);
  std::vector<int32_t> targets(rows);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  for (int64_t r = 0; r < rows; ++r) targets[r] = r % 5 == 3 ? -1 : pick(rng);
  std::unique_ptr<Dev<T>> d(Upload<T>(logits));
  Dev<int32_t> dt(rows);
  Dev<float> loss(rows);
  CUDA_OK(cudaMemcpy(dt.p, targets.data(), rows * 4, cudaMemcpyHostToDevice));
  const float scale = 1.0f / 33.0f;
  CUDA_OK(kc::CrossEntropyForwardBackward<T>(d->p, dt.p, rows, vocab, scale, loss.p, nullptr));
  const double want_total =
      kernels::CrossEntropyForwardBackward(logits.data(), targets.data(), rows, vocab, scale);
  const std::vector<float> row_loss = Download(loss);
  double total = 0.0;
  for (float l : row_loss) total += l;
  GPU_CHECK(std::fabs(total - want_total) <= 1e-5 * std::fabs(want_total), "loss %g want %g", total,
            want_total);
  // Gradients are tiny (scale / vocab): compare with an absolute floor below bf16's resolution.
  Compare(std::string("cross-entropy dlogits ") + Name<T>(), Download(*d), logits, Rtol<T>(),
          sizeof(T) == 4 ? 1e-9f : 1e-6f);
}

void AdamW() {
  const int64_t n = 50001;
  std::vector<float> p = Random(n), g = Random(n, 0.01f), m = Random(n, 0.001f),
                     v = Random(n, 0.001f);
  for (float& x : v) x = x * x;
  std::unique_ptr<Dev<float>> dp(Upload<float>(p)), dg(Upload<float>(g)), dm(Upload<float>(m)),
      dv(Upload<float>(v));
  kernels::AdamWParams ap;
  ap.lr = 3e-3f;
  ap.weight_decay = 0.01f;
  for (int step = 1; step <= 3; ++step) {
    ap.step = step;
    CUDA_OK(kc::AdamWStep(dp->p, dg->p, dm->p, dv->p, n, ap, nullptr));
    kernels::AdamWStep(p.data(), g.data(), m.data(), v.data(), n, ap);
  }
  Compare("adamw params", Download(*dp), p, 1e-5f, 1e-7f);
  Compare("adamw m", Download(*dm), m, 1e-5f, 1e-9f);
  Compare("adamw v", Download(*dv), v, 1e-5f, 1e-12f);
}

template <typename T>
void Dropout() {
  const int64_t n = 77777;  // odd: the last pair has one element
  std::vector<float> x = Random(n);
  std::unique_ptr<Dev<T>> d(Upload<T>(x));
  Dev<T> out(n);
  CUDA_OK(kc::DropoutApply<T>(d->p, n, 0.1f, 1234, 56, out.p, nullptr));
  std::vector<float> want(n);
  kernels::DropoutApply(x.data(), n, 0.1f, 1234, 56, want.data());
  const std::vector<float> got = Download(out);
  int64_t mask_mismatch = 0, dropped = 0;
  for (int64_t i = 0; i < n; ++i) {
    mask_mismatch += (got[i] == 0.0f) != (want[i] == 0.0f) && x[i] != 0.0f;
    dropped += want[i] == 0.0f;
  }
  GPU_CHECK(mask_mismatch == 0, "%lld elements dropped on one side only",
            static_cast<long long>(mask_mismatch));
  GPU_CHECK(dropped > n / 20 && dropped < n / 5, "dropped %lld of %lld at p=0.1",
            static_cast<long long>(dropped), static_cast<long long>(n));
  Compare(std::string("dropout ") + Name<T>(), got, want, Rtol<T>(), 0.0f);
}

// Random weights made on the card (a benchmark's 7B model): kernels::FillUniform's values, bit
// for bit, over a fresh seed and stream (n odd, 3 M values: 11,719 blocks, one element a thread).
void FillUniform() {
  const int64_t n = 3000017;
  const uint64_t seed = rng(), stream = rng() % 1000;
  Dev<float> d(n);
  CUDA_OK(kc::FillUniform(d.p, n, seed, stream, 0.02f, nullptr));
  std::vector<float> want(n);
  kernels::FillUniform(want.data(), n, seed, stream, 0.02f);
  const std::vector<float> got = Download(d);
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) differ += got[i] != want[i];
  GPU_CHECK(differ == 0, "%lld of %lld uniform values differ from the host's",
            static_cast<long long>(differ), static_cast<long long>(n));
  std::printf("  %-40s %lld values checked, bit for bit\n", "fill uniform",
              static_cast<long long>(n));
}

// The activation rounding (bf16 GEMM operands, bf16 activations): bit for bit the host's
// round-to-nearest-even conversion, on random values, halfway cases, tiny and huge values,
// infinities and NaN; and back to float exactly. n 100000 takes the eight-wide path, 100003 the
// scalar one.
void ConvertToBf16(int64_t n) {
  std::vector<float> x = Random(n, 3.0f);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 1000; ++i) {  // exact halfway points between two bf16 values
    uint32_t u = (bits(rng) & 0xFFFF0000u) | 0x8000u;
    if ((u & 0x7F800000u) == 0x7F800000u) u &= 0xBFFFFFFFu;  // keep them finite
    std::memcpy(&x[i], &u, 4);
  }
  x[1000] = 1e-40f;
  x[1001] = -3.0e38f;
  x[1002] = INFINITY;
  x[1003] = -INFINITY;
  x[1004] = NAN;
  Dev<float> in(static_cast<int64_t>(x.size()));
  CUDA_OK(cudaMemcpy(in.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  Dev<bf16> out(static_cast<int64_t>(x.size()));
  CUDA_OK(kc::ConvertToBf16(in.p, static_cast<int64_t>(x.size()), out.p, nullptr));
  std::vector<bf16> got(x.size());
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaMemcpy(got.data(), out.p, x.size() * 2, cudaMemcpyDeviceToHost));
  int64_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const bf16 want = __float2bfloat16_rn(x[i]);
    uint16_t g, w;
    std::memcpy(&g, &got[i], 2);
    std::memcpy(&w, &want, 2);
    const bool both_nan = std::isnan(x[i]) && (g & 0x7FFF) > 0x7F80;
    bad += g != w && !both_nan;
  }
  GPU_CHECK(bad == 0, "to bf16: %lld of %zu values rounded differently",
            static_cast<long long>(bad), x.size());
  Dev<float> back(static_cast<int64_t>(x.size()));
  CUDA_OK(kc::ConvertToF32(out.p, static_cast<int64_t>(x.size()), back.p, nullptr));
  const std::vector<float> widened = Download(back);
  int64_t wrong = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = __bfloat162float(got[i]);
    wrong += !(widened[i] == want || (std::isnan(widened[i]) && std::isnan(want)));
  }
  GPU_CHECK(wrong == 0, "to float32: %lld of %zu values wrong", static_cast<long long>(wrong),
            x.size());
  std::printf("  %-40s %zu values checked (n %lld)\n", "to bf16 and back", x.size(),
              static_cast<long long>(n));
}

// The residual add and the embedding gather in float32 (exact), both paths: n 4096 x 37 and
// dim 4096 eight-wide, n + 3 and dim 4093 scalar.
void AddAndGather() {
  for (const int64_t dim : {int64_t{4096}, int64_t{4093}}) {
    const int64_t tokens = 37, vocab = 50, n = tokens * dim;
    std::vector<float> y = Random(n + 3), x = Random(n + 3), table = Random(vocab * dim);
    std::vector<int32_t> ids(tokens);
    for (int64_t t = 0; t < tokens; ++t) ids[t] = static_cast<int32_t>((t * 13) % vocab);
    const int64_t add_n = dim == 4096 ? n : n + 3;
    std::unique_ptr<Dev<float>> dy(Upload<float>(y)), dx(Upload<float>(x)),
        dt(Upload<float>(table));
    Dev<int32_t> dids(tokens);
    CUDA_OK(cudaMemcpy(dids.p, ids.data(), tokens * 4, cudaMemcpyHostToDevice));
    Dev<float> out(n);
    CUDA_OK(kc::AddInPlace(dy->p, dx->p, add_n, nullptr));
    CUDA_OK(kc::EmbeddingGather(dt->p, dim, dids.p, tokens, out.p, nullptr));
    std::vector<float> sum = y, rows(n);
    for (int64_t i = 0; i < add_n; ++i) sum[i] += x[i];
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy(table.begin() + ids[t] * dim, table.begin() + (ids[t] + 1) * dim,
                rows.begin() + t * dim);
    }
    GPU_CHECK(Download(*dy) == sum, "add, n %lld: not the exact float sums",
              static_cast<long long>(add_n));
    GPU_CHECK(Download(out) == rows, "embedding gather, dim %lld: rows differ",
              static_cast<long long>(dim));
    std::printf("  %-40s n %lld, dim %lld\n", "add and embedding gather (exact)",
                static_cast<long long>(add_n), static_cast<long long>(dim));
  }
}

// Columns of a wider bf16 matrix from float rows (the fused LoRA GEMM's operands): bit for bit
// the host's rounding of scale * x, zeros in the padding columns, nothing written beyond them.
void ConvertRows() {
  const int64_t rows = 301, cols = 21, src_ld = 27, padded = 24, dst_ld = 40;
  const float scale = 2.0f;
  const std::vector<float> src = Random(rows * src_ld, 3.0f);
  Dev<float> d_src(rows * src_ld);
  Dev<bf16> d_dst(rows * dst_ld);  // filled with 0xFF bytes: NaNs that must survive past padded
  CUDA_OK(cudaMemcpy(d_src.p, src.data(), src.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(
      kc::ConvertRowsToBf16(d_src.p, rows, cols, src_ld, scale, padded, d_dst.p, dst_ld, nullptr));
  const std::vector<bf16> got = d_dst.Get();
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < dst_ld; ++c) {
      uint16_t g, w = 0xFFFF;
      std::memcpy(&g, &got[r * dst_ld + c], 2);
      if (c < padded) {
        const bf16 want = __float2bfloat16_rn(c < cols ? scale * src[r * src_ld + c] : 0.0f);
        std::memcpy(&w, &want, 2);
      }
      bad += g != w;
    }
  }
  GPU_CHECK(bad == 0, "rows to bf16: %lld of %lld elements wrong", static_cast<long long>(bad),
            static_cast<long long>(rows * dst_ld));
  std::printf("  %-40s %lld values checked\n", "rows to bf16 (fused LoRA operands)",
              static_cast<long long>(rows * dst_ld));
}

// bf16 rows into columns of a wider matrix (the fused LoRA GEMM's [x | h]): bit for bit, nothing
// written past the copied columns; 16 bytes a copy where rows allow it (a 7B width into a
// [x | h] of r 16), one value where they do not (odd widths, a misaligned start).
void CopyRows() {
  struct Shape {
    int64_t rows, cols, src_ld, dst_ld, src_offset;
  };
  for (const Shape& s : {Shape{37, 4096, 4096, 4112, 0}, Shape{301, 21, 27, 40, 0},
                         Shape{33, 64, 64, 80, 1}, Shape{5, 8, 8, 8, 0}}) {
    std::vector<bf16> src(s.src_offset + s.rows * s.src_ld);
    for (auto& v : src) v = __float2bfloat16(static_cast<float>(rng() % 2001) / 7.0f - 140.0f);
    Dev<bf16> d_src(static_cast<int64_t>(src.size()));
    Dev<bf16> d_dst(s.rows * s.dst_ld);  // 0xFF bytes: must survive past cols
    CUDA_OK(cudaMemcpy(d_src.p, src.data(), src.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(kc::CopyRowsBf16(d_src.p + s.src_offset, s.rows, s.cols, s.src_ld, d_dst.p, s.dst_ld,
                             nullptr));
    const std::vector<bf16> got = d_dst.Get();
    int64_t bad = 0;
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t c = 0; c < s.dst_ld; ++c) {
        uint16_t g, w = 0xFFFF;
        std::memcpy(&g, &got[r * s.dst_ld + c], 2);
        if (c < s.cols) std::memcpy(&w, &src[s.src_offset + r * s.src_ld + c], 2);
        bad += g != w;
      }
    }
    GPU_CHECK(bad == 0, "copy rows %lld x %lld (ld %lld -> %lld, offset %lld): %lld wrong",
              static_cast<long long>(s.rows), static_cast<long long>(s.cols),
              static_cast<long long>(s.src_ld), static_cast<long long>(s.dst_ld),
              static_cast<long long>(s.src_offset), static_cast<long long>(bad));
  }
  GPU_CHECK(kc::CopyRowsBf16(nullptr, 1, 8, 8, nullptr, 8, nullptr) == cudaErrorInvalidValue,
            "copy rows: null pointers accepted");
  std::printf("  %-40s 4 shapes checked\n", "copy rows (fused LoRA operand)");
}

// The fused LoRA dropout kernels against their CPU twins: the down-projection, dA and the input
// gradient through the mask, at a 7B-like width with ragged token and input counts, ranks
// below, at and above one 16-wide register chunk, and even (lane pairs share hashes) and odd
// row lengths.
void LoraDropout() {
  // r 20: a full chunk read 16 bytes at a time on the card, then a partial one read by value.
  for (const int64_t r : {int64_t{5}, int64_t{16}, int64_t{20}, int64_t{64}}) {
    const int64_t n = 1029, in = r == 5 ? 4099 : 4098;
    const float p = r == 64 ? 0.1f : 0.05f;
    const uint64_t seed = rng(), stream = rng() % 100000;
    std::vector<float> x = Random(n * in), a = Random(r * in, 0.05f), dh = Random(n * r, 0.5f),
                       da0 = Random(r * in, 0.1f), dx0 = Random(n * in, 0.1f);
    Dev<float> d_x(n * in), d_dh(n * r), d_a(r * in), h(n * r),
        partial(kc::LoraDropoutPartialFloats(n, in, r)), ddx(n * in), dda(r * in);
    CUDA_OK(cudaMemcpy(d_x.p, x.data(), n * in * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_a.p, a.data(), r * in * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_dh.p, dh.data(), n * r * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dda.p, da0.data(), r * in * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(ddx.p, dx0.data(), n * in * 4, cudaMemcpyHostToDevice));
    CUDA_OK(kc::LoraDropoutDown(d_x.p, n, in, d_a.p, r, p, seed, stream, h.p, nullptr));
    CUDA_OK(
        kc::LoraDropoutGradA(d_x.p, d_dh.p, n, in, r, p, seed, stream, partial.p, dda.p, nullptr));
    CUDA_OK(kc::LoraDropoutBackwardInput(d_dh.p, d_a.p, n, in, r, p, seed, stream, ddx.p, nullptr));
    std::vector<float> h_ref(n * r), da_ref = da0, dx_ref = dx0;
    kernels::LoraDropoutDown(x.data(), n, in, a.data(), r, p, seed, stream, h_ref.data());
    kernels::LoraDropoutGradA(x.data(), dh.data(), n, in, r, p, seed, stream, da_ref.data());
    kernels::LoraDropoutBackwardInput(dh.data(), a.data(), n, in, r, p, seed, stream,
                                      dx_ref.data());
    const std::string rank = " r=" + std::to_string(r);
    Compare("lora dropout down" + rank, Download(h), h_ref, 1e-4f, 1e-4f);
    Compare("lora dropout grad A" + rank, Download(dda), da_ref, 1e-4f, 1e-4f);
    Compare("lora dropout input grad" + rank, Download(ddx), dx_ref, 1e-4f, 1e-5f);
  }
}

// The sums a training step keeps on the card (the squared gradient norm, written; a
// micro-batch's row losses, added to the step's loss) against a double sum on the host, over
// sizes around the reduction's block and grid boundaries.
void DeviceSums() {
  for (const int64_t n : {int64_t{1}, int64_t{255}, int64_t{2049}, int64_t{3000001}}) {
    const std::vector<float> x = Random(n, 0.7f);
    double squares = 0.0, sum = 0.0;
    for (float v : x) {
      squares += static_cast<double>(v) * v;
      sum += v;
    }
    Dev<float> in(n), out(2);
    Dev<double> partial(1024);
    CUDA_OK(cudaMemcpy(in.p, x.data(), n * 4, cudaMemcpyHostToDevice));
    const float start[2] = {NAN, 1.25f};  // [0] must be overwritten, [1] added to
    CUDA_OK(cudaMemcpy(out.p, start, 8, cudaMemcpyHostToDevice));
    CUDA_OK(kc::SumSquaresInto(in.p, n, partial.p, out.p, nullptr));
    CUDA_OK(kc::AddSumInto(in.p, n, out.p + 1, nullptr));
    const std::vector<float> got = Download(out);
    GPU_CHECK(std::fabs(got[0] - squares) <= 1e-6 * squares + 1e-30,
              "sum of squares of %lld: got %.9g want %.9g", static_cast<long long>(n), got[0],
              squares);
    GPU_CHECK(std::fabs(got[1] - (1.25 + sum)) <= 1e-6 * (std::fabs(sum) + 1.25),
              "sum of %lld added to 1.25: got %.9g want %.9g", static_cast<long long>(n), got[1],
              1.25 + sum);
  }
  std::printf("  %-40s 4 sizes checked\n", "sum of squares, sum into (step sums)");
}

}  // namespace
}  // namespace qlorad

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  const uint64_t seed = qlorad::gpu_check::FreshSeed();
  qlorad::rng.seed(seed);
  for (const int64_t dim : {int64_t{1000}, int64_t{1001}}) {
    qlorad::RmsNorm<float>(dim);
    qlorad::RmsNorm<__nv_bfloat16>(dim);
  }
  for (const int64_t head_dim : {int64_t{64}, int64_t{36}}) {
    qlorad::Rope<float>(head_dim);
    qlorad::Rope<__nv_bfloat16>(head_dim);
  }
  for (const int64_t n : {int64_t{100000}, int64_t{100003}}) {
    qlorad::Swiglu<float>(n);
    qlorad::Swiglu<__nv_bfloat16>(n);
    qlorad::ConvertToBf16(n);
  }
  qlorad::AddAndGather();
  qlorad::CrossEntropy<float>();
  qlorad::CrossEntropy<__nv_bfloat16>();
  qlorad::AdamW();
  qlorad::Dropout<float>();
  qlorad::Dropout<__nv_bfloat16>();
  qlorad::DeviceSums();
  qlorad::LoraDropout();
  qlorad::ConvertRows();
  qlorad::CopyRows();
  qlorad::FillUniform();
  return qlorad::gpu_check::Finish("train_ops_gpu_test");
}
