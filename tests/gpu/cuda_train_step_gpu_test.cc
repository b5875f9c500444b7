// The engine's CUDA device against the CPU reference on a whole QLoRA training step: a random
// LLaMA-shaped model (GQA, NF4 + double-quantized base), LoRA on every linear layer with
// dropout, two packed examples per row; the loss and every LoRA gradient must agree, and so
// must the adapter after a few optimizer steps through the Trainer; with bf16 activations the
// CPU rounds where the GPU does, and the GPU's bf16 kernels match Device's conversion defaults.
// Fresh random weights each run (the seed is printed). Skips (exit 77) without a CUDA device.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "engine/cuda_device.h"
#include "engine/device.h"
#include "engine/device_select.h"
#include "engine/dtype.h"
#include "engine/llama_model.h"
#include "engine/lora.h"
#include "engine/lora_training.h"
#include "engine/trainer.h"
#include "kernels/cpu/dropout.h"
#include "tests/common/random_model.h"
#include "tests/common/relative_error.h"
#include "tests/gpu/gpu_check.h"

namespace qlorad {
namespace {

std::mt19937_64 rng;

std::vector<float> Normal(int64_t n, float stddev) { return gpu_check::Normal(rng, n, stddev); }

// Normal values that bf16 holds exactly: a path that rounds them to bf16 and one that hands them
// as float32 to a GEMM allowed, not bound, to round (CUBLAS_COMPUTE_32F_FAST_16BF; cuBLAS may
// pick a float32 kernel, at small or unaligned sizes above all) multiply the same numbers.
std::vector<float> Bf16Normal(int64_t n, float stddev) {
  return gpu_check::Bf16Normal(rng, n, stddev);
}

LlamaWeights RandomModel() {
  const LlamaConfig c{.hidden_size = 256,  // head_dim 32: the flash-attention kernels run
                      .intermediate_size = 344,
                      .num_hidden_layers = 2,
                      .num_attention_heads = 8,
                      .num_key_value_heads = 4,
                      .vocab_size = 512,
                      .max_position_embeddings = 256};
  return testing::RandomLlamaWeights(c, rng, 0.05f, 0.1f);
}

MicroBatch RandomBatch(int64_t rows, int64_t seq, int64_t vocab) {
  MicroBatch b;
  b.rows = rows;
  b.seq_len = seq;
  std::uniform_int_distribution<int32_t> tok(3, static_cast<int32_t>(vocab - 1));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < seq; ++t) {
      const bool second = t >= seq / 2;  // two packed examples per row
      b.tokens.push_back(tok(rng));
      b.positions.push_back(static_cast<int32_t>(second ? t - seq / 2 : t));
      b.segments.push_back(second ? 1 : 0);
    }
    for (int64_t t = 0; t < seq; ++t) {
      const bool last_of_example = t == seq / 2 - 1 || t == seq - 1;
      b.targets.push_back(last_of_example || t % 7 == 0 ? -1 : b.tokens[r * seq + t + 1]);
    }
  }
  return b;
}

struct Result {
  double loss = 0.0;
  std::vector<float> grads;
};

Result RunStep(Device* device, const LlamaWeights& weights, const LoraLayout& layout,
               const LoraConfig& lora, const std::vector<float>& params, const MicroBatch& batch,
               ActivationPrecision activations, bool checkpointing = false) {
  Result r;
  auto model = LlamaModel::Create(weights, device, ModelOptions{});
  GPU_CHECK(model.ok(), "model: %s", std::string(model.status().message()).c_str());
  auto p = device->Alloc(layout.num_params());
  auto g = device->Alloc(layout.num_params());
  GPU_CHECK(p.ok() && g.ok(), "alloc");
  if (!model.ok() || !p.ok() || !g.ok()) return {NAN, std::vector<float>(layout.num_params(), NAN)};
  TrainingGraphOptions go;
  go.dropout = lora.dropout;
  go.activations = activations;
  go.activation_checkpointing = checkpointing;
  LoraTrainingGraph graph(model->get(), &layout, lora, go);
  device->CopyFromHost(params.data(), layout.num_params(), (*p)->data());
  device->Fill((*g)->data(), layout.num_params(), 0.0f);
  auto loss = graph.ForwardBackward(batch, (*p)->data(), (*g)->data(),
                                    1.0f / static_cast<float>(batch.num_targets()), 99, 1);
  GPU_CHECK(loss.ok(), "step: %s", std::string(loss.status().message()).c_str());
  r.loss = loss.ok() ? *loss : NAN;
  r.grads.resize(layout.num_params());
  device->CopyToHost((*g)->data(), layout.num_params(), r.grads.data());
  return r;
}

// A weight NF4-quantized on the card holds the host's bytes: pushed through an identity input
// with float32 GEMMs (every product is w * 1 or w * 0, so exact), it reads back as the host's
// dequantization of `w` bit for bit. 100 x 192: 300 blocks, a partial second nested block.
void CardWeightMatchesHost(Device* gpu, const char* what, const std::vector<float>& w,
                           absl::StatusOr<std::unique_ptr<DeviceLinear>> lin) {
  const int64_t out = 100, in = 192;
  auto host = QuantizeNf4(w.data(), {out, in}, Nf4Options{});
  GPU_CHECK(host.ok() && lin.ok(), "%s: quantize failed", what);
  if (!host.ok() || !lin.ok()) return;
  // StorageBytes counts the float offset too, which the card keeps as a field.
  GPU_CHECK((*lin)->quantized() && (*lin)->bytes() + 4 == host->StorageBytes(),
            "the card's weight takes %lld bytes, the host's %lld",
            static_cast<long long>((*lin)->bytes()), static_cast<long long>(host->StorageBytes()));
  std::vector<float> identity(in * in, 0.0f), y(in * out);
  for (int64_t i = 0; i < in; ++i) identity[i * in + i] = 1.0f;
  auto x = gpu->Alloc(in * in);
  auto d_y = gpu->Alloc(in * out);
  if (!x.ok() || !d_y.ok()) return;
  gpu->CopyFromHost(identity.data(), in * in, (*x)->data());
  gpu->Linear(**lin, (*x)->data(), in, (*d_y)->data());
  gpu->CopyToHost((*d_y)->data(), in * out, y.data());
  const std::vector<float> ref = host->Dequantize();
  int64_t differ = 0;
  for (int64_t t = 0; t < in; ++t) {
    for (int64_t o = 0; o < out; ++o) differ += y[t * out + o] != ref[o * in + t];
  }
  GPU_CHECK(differ == 0, "%s: %lld of %lld dequantized weights differ from the host's", what,
            static_cast<long long>(differ), static_cast<long long>(out * in));
  std::printf("  %s: the host's weights, bit for bit\n", what);
}

void QuantizeOnCardMatchesHost(Device* gpu) {
  const std::vector<float> w = Normal(100 * 192, 0.05f);
  CardWeightMatchesHost(gpu, "NF4 quantized on the card", w,
                        gpu->QuantizeLinear(w, 100, 192, Nf4Options{}));
  // A benchmark's random weight, made on the card (FillUniform) and quantized there.
  const uint64_t seed = rng(), stream = rng() % 1000;
  std::vector<float> u(100 * 192);
  kernels::FillUniform(u.data(), 100 * 192, seed, stream, 0.02f);
  CardWeightMatchesHost(gpu, "random weight made on the card", u,
                        gpu->RandomLinear(100, 192, seed, stream, 0.02f, Nf4Options{}));
}

// The fused LoRA linear (one GEMM over [x | h] and [W | scale B]) and its backward (dy rounded
// once) against Device's unfused defaults on the same card: the same bf16 products (x, h, B and
// dy bf16 values; the weight rounded explicitly on both paths), so they agree to float
// summation order. in 256 takes the fused path; r 16, and r 5 padded to 8.
void LoraLinearFusionAgrees(Device* gpu) {
  const int64_t out = 192, in = 256, tokens = 100;
  const float scale = 2.0f;  // a power of two: round(scale B) = scale round(B)
  auto put = [&](const std::vector<float>& v) {
    auto b = gpu->Alloc(static_cast<int64_t>(v.size()));
    GPU_CHECK(b.ok(), "alloc");
    gpu->CopyFromHost(v.data(), static_cast<int64_t>(v.size()), (*b)->data());
    return std::move(*b);
  };
  auto get = [&](const DeviceBuffer& b) {
    std::vector<float> v(b.size());
    gpu->CopyToHost(b.data(), b.size(), v.data());
    return v;
  };
  for (const int64_t r : {int64_t{16}, int64_t{5}}) {
    auto lin = gpu->QuantizeLinear(Normal(out * in, 0.05f), out, in, Nf4Options{});
    GPU_CHECK(lin.ok(), "quantize failed");
    if (!lin.ok()) return;
    const DeviceLinear& w = **lin;
    auto x = put(Bf16Normal(tokens * in, 1.0f)), h = put(Bf16Normal(tokens * r, 0.5f));
    auto b = put(Bf16Normal(out * r, 0.1f)), dy = put(Bf16Normal(tokens * out, 0.3f));
    const std::vector<float> dx0 = Normal(tokens * in, 0.2f), db0 = Normal(out * r, 0.1f);
    auto y_fused = put(std::vector<float>(tokens * out)),
         y_plain = put(std::vector<float>(tokens * out));
    gpu->LinearLora(w, x->data(), tokens, h->data(), b->data(), r, scale, y_fused->data());
    gpu->Device::LinearLora(w, x->data(), tokens, h->data(), b->data(), r, scale, y_plain->data());
    const std::vector<float> yf = get(*y_fused), yp = get(*y_plain);
    const double ey = testing::RelativeL2(yf.data(), yp.data(), tokens * out);
    GPU_CHECK(ey < 1e-4, "r %lld: fused LoRA linear differs from the unfused by %g",
              static_cast<long long>(r), ey);
    auto dx_f = put(dx0), dx_p = put(dx0), db_f = put(db0), db_p = put(db0);
    auto dh_f = put(std::vector<float>(tokens * r)), dh_p = put(std::vector<float>(tokens * r));
    gpu->LinearLoraBackward(w, dy->data(), tokens, h->data(), b->data(), r, scale, dx_f->data(),
                            true, dh_f->data(), db_f->data());
    gpu->Device::LinearLoraBackward(w, dy->data(), tokens, h->data(), b->data(), r, scale,
                                    dx_p->data(), true, dh_p->data(), db_p->data());
    double worst = 0.0;
    for (auto [name, f, p] :
         {std::tuple{"dx", dx_f.get(), dx_p.get()}, std::tuple{"dh", dh_f.get(), dh_p.get()},
          std::tuple{"dB", db_f.get(), db_p.get()}}) {
      const std::vector<float> vf = get(*f), vp = get(*p);
      const double e = testing::RelativeL2(vf.data(), vp.data(), static_cast<int64_t>(vf.size()));
      GPU_CHECK(e < 1e-4, "r %lld: fused LoRA backward %s differs from the unfused by %g",
                static_cast<long long>(r), name, e);
      worst = std::max(worst, e);
    }
    std::printf("  fused LoRA linear r=%lld: relative error %.1e forward, %.1e backward\n",
                static_cast<long long>(r), ey, worst);
  }
}

// A device bf16 buffer of `n` elements holds them as (n + 1) / 2 float-sized words; these two
// move its bits to and from the host and convert there (engine/dtype.h), so neither side of a
// comparison passes through the device's own ToBf16 / ToF32, which are under test.
std::unique_ptr<DeviceBuffer> UploadBf16(Device* gpu, const std::vector<float>& v) {
  const int64_t n = static_cast<int64_t>(v.size());
  std::vector<uint16_t> bits(2 * ((n + 1) / 2), 0);
  for (int64_t i = 0; i < n; ++i) bits[i] = F32ToBf16(v[i]);
  auto b = gpu->Alloc((n + 1) / 2);
  GPU_CHECK(b.ok(), "alloc");
  gpu->CopyFromHost(reinterpret_cast<const float*>(bits.data()), (n + 1) / 2, (*b)->data());
  return std::move(*b);
}

// Random bf16 values ~ N(0, sd) in a new device buffer of `n` elements.
std::unique_ptr<DeviceBuffer> RandomBf16(Device* gpu, int64_t n, float sd) {
  return UploadBf16(gpu, Normal(n, sd));
}

Bf16* AsBf16(const std::unique_ptr<DeviceBuffer>& b) { return reinterpret_cast<Bf16*>(b->data()); }

// A copy of a device bf16 buffer of `n` elements, widened to float on the host.
std::vector<float> HostBf16(Device* gpu, const std::unique_ptr<DeviceBuffer>& b, int64_t n) {
  std::vector<uint16_t> bits(2 * ((n + 1) / 2));
  gpu->CopyToHost(b->data(), (n + 1) / 2, reinterpret_cast<float*>(bits.data()));
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = Bf16ToF32(bits[i]);
  return v;
}

std::unique_ptr<DeviceBuffer> CopyOf(Device* gpu, const std::unique_ptr<DeviceBuffer>& b) {
  auto c = gpu->Alloc(b->size());
  GPU_CHECK(c.ok(), "alloc");
  std::vector<float> host(b->size());
  gpu->CopyToHost(b->data(), b->size(), host.data());
  gpu->CopyFromHost(host.data(), b->size(), (*c)->data());
  return std::move(*c);
}

// The CUDA device's bf16 kernels against Device's conversion defaults (float32 kernels between
// exact widening and one rounding) on the same card and inputs. Elementwise kernels, flash
// attention and the fused LoRA dropout do the same float32 arithmetic on the same widened
// values: bit for bit. bf16-output GEMMs sum in another order than the float32-output GEMM
// they are compared with, so an output may round to the neighbouring bf16 value (2^-8
// relative): a few in a thousand, far below what a wrong layout or a lost accumulation does.
void Bf16KernelsMatchDefaults(Device* gpu) {
  const int64_t rows = 96, dim = 256, heads = 8, kv_heads = 4, hd = 32;
  int checked = 0;
  auto same = [&](const char* what, const std::unique_ptr<DeviceBuffer>& got,
                  const std::unique_ptr<DeviceBuffer>& want, int64_t n, double tol) {
    const std::vector<float> g = HostBf16(gpu, got, n), w = HostBf16(gpu, want, n);
    const double e = testing::RelativeL2(g.data(), w.data(), n);
    GPU_CHECK(tol == 0.0 ? g == w : e < tol, "bf16 %s: relative error %g against the default", what,
              e);
    ++checked;
  };
  std::vector<int32_t> positions(rows), ids(rows);
  for (int64_t t = 0; t < rows; ++t) {
    positions[t] = static_cast<int32_t>(t % 40);
    ids[t] = static_cast<int32_t>((t * 7) % 50);
  }
  const int64_t n = rows * dim;
  auto x = RandomBf16(gpu, n, 1.0f), dy = RandomBf16(gpu, n, 0.5f);
  auto w = gpu->UploadF32(Normal(dim, 0.2f));
  auto table = gpu->UploadF32(Normal(50 * dim, 1.0f));
  auto inv = gpu->Alloc(rows), inv2 = gpu->Alloc(rows);
  GPU_CHECK(w.ok() && table.ok() && inv.ok() && inv2.ok(), "alloc");
  if (!w.ok() || !table.ok() || !inv.ok() || !inv2.ok()) return;
  auto a1 = RandomBf16(gpu, n, 1.0f), a2 = RandomBf16(gpu, n, 1.0f);
  gpu->Embedding((*table)->data(), dim, ids.data(), rows, AsBf16(a1));
  gpu->Device::Embedding((*table)->data(), dim, ids.data(), rows, AsBf16(a2));
  same("embedding", a1, a2, n, 0.0);
  gpu->RmsNorm(AsBf16(x), (*w)->data(), rows, dim, 1e-5f, AsBf16(a1), (*inv)->data());
  gpu->Device::RmsNorm(AsBf16(x), (*w)->data(), rows, dim, 1e-5f, AsBf16(a2), (*inv2)->data());
  same("rmsnorm", a1, a2, n, 0.0);
  gpu->RmsNormBackward(AsBf16(x), (*w)->data(), (*inv)->data(), AsBf16(dy), rows, dim, AsBf16(a1));
  gpu->Device::RmsNormBackward(AsBf16(x), (*w)->data(), (*inv)->data(), AsBf16(dy), rows, dim,
                               AsBf16(a2));
  same("rmsnorm backward", a1, a2, n, 0.0);
  auto r1 = CopyOf(gpu, x), r2 = CopyOf(gpu, x);
  gpu->Rope(AsBf16(r1), positions.data(), rows, heads, hd, 10000.0f, true);
  gpu->Device::Rope(AsBf16(r2), positions.data(), rows, heads, hd, 10000.0f, true);
  same("rope", r1, r2, n, 0.0);
  auto s1 = CopyOf(gpu, x), s2 = CopyOf(gpu, x);
  gpu->AddInPlace(AsBf16(s1), AsBf16(dy), n);
  gpu->Device::AddInPlace(AsBf16(s2), AsBf16(dy), n);
  same("add", s1, s2, n, 0.0);
  gpu->Swiglu(AsBf16(x), AsBf16(dy), n, AsBf16(a1));
  gpu->Device::Swiglu(AsBf16(x), AsBf16(dy), n, AsBf16(a2));
  same("swiglu", a1, a2, n, 0.0);
  auto du1 = RandomBf16(gpu, n, 1.0f), du2 = RandomBf16(gpu, n, 1.0f);
  gpu->SwigluBackward(AsBf16(x), AsBf16(dy), AsBf16(r1), n, AsBf16(a1), AsBf16(du1));
  gpu->Device::SwigluBackward(AsBf16(x), AsBf16(dy), AsBf16(r1), n, AsBf16(a2), AsBf16(du2));
  same("swiglu backward (gate)", a1, a2, n, 0.0);
  same("swiglu backward (up)", du1, du2, n, 0.0);

  // Flash attention on one row of `rows` tokens in two packed segments.
  const TrainAttentionDims d{rows, heads, kv_heads, hd};
  const int64_t nq = rows * heads * hd, nkv = rows * kv_heads * hd;
  std::vector<int32_t> segments(rows);
  for (int64_t t = 0; t < rows; ++t) segments[t] = t < rows / 3 ? 0 : 1;
  auto q = RandomBf16(gpu, nq, 1.0f), k = RandomBf16(gpu, nkv, 1.0f),
       v = RandomBf16(gpu, nkv, 1.0f), dout = RandomBf16(gpu, nq, 1.0f);
  auto lse1 = gpu->Alloc(gpu->AttentionSavedFloats(d)),
       lse2 = gpu->Alloc(gpu->AttentionSavedFloats(d));
  GPU_CHECK(lse1.ok() && lse2.ok(), "alloc");
  if (!lse1.ok() || !lse2.ok()) return;
  auto o1 = RandomBf16(gpu, nq, 1.0f), o2 = RandomBf16(gpu, nq, 1.0f);
  gpu->AttentionTrainForward(AsBf16(q), AsBf16(k), AsBf16(v), segments.data(), d, AsBf16(o1),
                             (*lse1)->data());
  gpu->Device::AttentionTrainForward(AsBf16(q), AsBf16(k), AsBf16(v), segments.data(), d,
                                     AsBf16(o2), (*lse2)->data());
  same("flash attention output", o1, o2, nq, 0.0);
  auto dq1 = RandomBf16(gpu, nq, 1.0f), dq2 = RandomBf16(gpu, nq, 1.0f);
  auto dk1 = RandomBf16(gpu, nkv, 1.0f), dk2 = RandomBf16(gpu, nkv, 1.0f);
  auto dv1 = RandomBf16(gpu, nkv, 1.0f), dv2 = RandomBf16(gpu, nkv, 1.0f);
  gpu->AttentionTrainBackward(AsBf16(q), AsBf16(k), AsBf16(v), segments.data(), AsBf16(o1),
                              (*lse1)->data(), AsBf16(dout), d, AsBf16(dq1), AsBf16(dk1),
                              AsBf16(dv1));
  gpu->Device::AttentionTrainBackward(AsBf16(q), AsBf16(k), AsBf16(v), segments.data(), AsBf16(o1),
                                      (*lse1)->data(), AsBf16(dout), d, AsBf16(dq2), AsBf16(dk2),
                                      AsBf16(dv2));
  same("flash attention dq", dq1, dq2, nq, 0.0);
  same("flash attention dk", dk1, dk2, nkv, 0.0);
  same("flash attention dv", dv1, dv2, nkv, 0.0);

  // The frozen NF4 linear with and without its LoRA term, forward and backward, and LoRA's
  // down-projection with dropout (fused kernels, bit for bit) and without (bf16 GEMMs).
  const int64_t out = 192, r = 16;
  const float scale = 2.0f;
  auto lin = gpu->QuantizeLinear(Normal(out * dim, 0.05f), out, dim, Nf4Options{});
  // A and dh bf16 values, as LoRA's h and B below: the defaults' float32 GEMMs may not round.
  auto aw = gpu->UploadF32(Bf16Normal(r * dim, 0.1f)),
       dh = gpu->UploadF32(Bf16Normal(rows * r, 0.3f));
  GPU_CHECK(lin.ok() && aw.ok() && dh.ok(), "weights");
  if (!lin.ok() || !aw.ok() || !dh.ok()) return;
  const DeviceLinear& wl = **lin;
  const double gemm_tol = 4e-3;
  auto y1 = RandomBf16(gpu, rows * out, 1.0f), y2 = RandomBf16(gpu, rows * out, 1.0f);
  gpu->Linear(wl, AsBf16(x), rows, AsBf16(y1));
  gpu->Device::Linear(wl, AsBf16(x), rows, AsBf16(y2));
  same("linear", y1, y2, rows * out, gemm_tol);
  const std::vector<float> dense = Normal(out * dim, 0.05f);  // float32 weights: rounded, not
  auto flin = gpu->UploadLinear(nullptr, &dense, out, dim);   // dequantized, for the GEMM
  GPU_CHECK(flin.ok(), "float32 weight");
  if (!flin.ok()) return;
  gpu->Linear(**flin, AsBf16(x), rows, AsBf16(y1));
  gpu->Device::Linear(**flin, AsBf16(x), rows, AsBf16(y2));
  same("linear, float32 weights", y1, y2, rows * out, gemm_tol);
  auto gy = RandomBf16(gpu, rows * out, 0.5f);
  auto dx1 = CopyOf(gpu, dy), dx2 = CopyOf(gpu, dy);
  gpu->LinearBackwardInput(wl, AsBf16(gy), rows, AsBf16(dx1), true);
  gpu->Device::LinearBackwardInput(wl, AsBf16(gy), rows, AsBf16(dx2), true);
  same("linear input gradient (+=)", dx1, dx2, n, gemm_tol);
  auto floats = [&](const std::unique_ptr<DeviceBuffer>& b) {
    std::vector<float> v(b->size());
    gpu->CopyToHost(b->data(), b->size(), v.data());
    return v;
  };
  auto close = [&](const char* what, const std::unique_ptr<DeviceBuffer>& got,
                   const std::unique_ptr<DeviceBuffer>& want, double tol) {
    const std::vector<float> g = floats(got), w2 = floats(want);
    const double e = testing::RelativeL2(g.data(), w2.data(), static_cast<int64_t>(g.size()));
    GPU_CHECK(tol == 0.0 ? g == w2 : e < tol, "bf16 %s: relative error %g against the default",
              what, e);
    ++checked;
  };
  // The fused LoRA linear at r 16 and at r 5 (padded to 8), its backward accumulating into dx
  // as the graph's k, v and up projections do.
  for (const int64_t lr : {int64_t{16}, int64_t{5}}) {
    auto lh = gpu->UploadF32(Bf16Normal(rows * lr, 0.5f)),
         lb = gpu->UploadF32(Bf16Normal(out * lr, 0.1f));
    auto db1 = gpu->UploadF32(std::vector<float>(out * lr, 0.1f)),
         db2 = gpu->UploadF32(std::vector<float>(out * lr, 0.1f));
    auto dh1 = gpu->Alloc(rows * lr), dh2 = gpu->Alloc(rows * lr);
    GPU_CHECK(lh.ok() && lb.ok() && db1.ok() && db2.ok() && dh1.ok() && dh2.ok(), "alloc");
    if (!lh.ok() || !lb.ok() || !db1.ok() || !db2.ok() || !dh1.ok() || !dh2.ok()) return;
    gpu->LinearLora(wl, AsBf16(x), rows, (*lh)->data(), (*lb)->data(), lr, scale, AsBf16(y1));
    gpu->Device::LinearLora(wl, AsBf16(x), rows, (*lh)->data(), (*lb)->data(), lr, scale,
                            AsBf16(y2));
    same(lr == 16 ? "LoRA linear r 16" : "LoRA linear r 5", y1, y2, rows * out, gemm_tol);
    auto ex1 = CopyOf(gpu, dy), ex2 = CopyOf(gpu, dy);
    gpu->LinearLoraBackward(wl, AsBf16(gy), rows, (*lh)->data(), (*lb)->data(), lr, scale,
                            AsBf16(ex1), true, (*dh1)->data(), (*db1)->data());
    gpu->Device::LinearLoraBackward(wl, AsBf16(gy), rows, (*lh)->data(), (*lb)->data(), lr, scale,
                                    AsBf16(ex2), true, (*dh2)->data(), (*db2)->data());
    same("LoRA linear input gradient (+=)", ex1, ex2, n, gemm_tol);
    close("LoRA dh", *dh1, *dh2, 1e-4);
    close("LoRA dB (+=)", *db1, *db2, 1e-4);
  }
  for (const float p : {0.1f, 0.0f}) {
    const double tol = p > 0.0f ? 0.0 : 1e-4;  // fused kernels: the same sums in the same order
    auto hd1 = gpu->Alloc(rows * r), hd2 = gpu->Alloc(rows * r);
    auto da1 = gpu->UploadF32(std::vector<float>(r * dim, 0.5f)),
         da2 = gpu->UploadF32(std::vector<float>(r * dim, 0.5f));
    auto scratch = gpu->Alloc(rows * dim);
    GPU_CHECK(hd1.ok() && hd2.ok() && da1.ok() && da2.ok() && scratch.ok(), "alloc");
    if (!hd1.ok() || !hd2.ok() || !da1.ok() || !da2.ok() || !scratch.ok()) return;
    float* sc = (*scratch)->data();
    gpu->LoraDropoutDown(AsBf16(x), rows, dim, (*aw)->data(), r, p, 5, 9, (*hd1)->data(), sc);
    gpu->Device::LoraDropoutDown(AsBf16(x), rows, dim, (*aw)->data(), r, p, 5, 9, (*hd2)->data(),
                                 sc);
    close(p > 0.0f ? "LoRA dropout down" : "LoRA down", *hd1, *hd2, tol);
    gpu->LoraDropoutGradA(AsBf16(x), (*dh)->data(), rows, dim, r, p, 5, 9, (*da1)->data(), sc);
    gpu->Device::LoraDropoutGradA(AsBf16(x), (*dh)->data(), rows, dim, r, p, 5, 9, (*da2)->data(),
                                  sc);
    close(p > 0.0f ? "LoRA dropout dA" : "LoRA dA", *da1, *da2, tol);
    auto e1 = CopyOf(gpu, dy), e2 = CopyOf(gpu, dy);
    gpu->LoraDropoutBackwardInput((*dh)->data(), (*aw)->data(), rows, dim, r, p, 5, 9, AsBf16(e1),
                                  sc);
    gpu->Device::LoraDropoutBackwardInput((*dh)->data(), (*aw)->data(), rows, dim, r, p, 5, 9,
                                          AsBf16(e2), sc);
    same(p > 0.0f ? "LoRA dropout input gradient" : "LoRA input gradient", e1, e2, n,
         p > 0.0f ? 0.0 : gemm_tol);
  }
  std::printf("  bf16 kernels: %d outputs match Device's conversion defaults\n", checked);
}

// A fresh random model, adapter (B non-zero too, so that every A gets a gradient) and packed
// micro-batch for a step check, run on a device with a given activation type.
struct StepCase {
  LlamaWeights weights = RandomModel();
  LoraConfig lora = [] {
    LoraConfig l;
    l.rank = 8;
    l.alpha = 16.0f;
    l.dropout = 0.1f;
    return l;
  }();
  LoraLayout layout{weights.config, lora};
  std::vector<float> params = Normal(layout.num_params(), 0.05f);
  MicroBatch batch = RandomBatch(2, 96, weights.config.vocab_size);

  Result Run(Device* device, ActivationPrecision activations, bool checkpointing = false) const {
    return RunStep(device, weights, layout, lora, params, batch, activations, checkpointing);
  }
};

// The GPU's step against the CPU's with the same activation type (bf16: the CPU rounds where
// the GPU does, through Device's conversion defaults).
void TrainingStepAgrees(Device* cpu, Device* gpu, ActivationPrecision activations, double loss_tol,
                        double grad_tol) {
  const StepCase k;
  const Result want = k.Run(cpu, activations);
  const Result got = k.Run(gpu, activations);
  std::printf("  loss: cpu %.6f cuda %.6f\n", want.loss, got.loss);
  GPU_CHECK(std::fabs(got.loss - want.loss) <= loss_tol * std::fabs(want.loss), "loss %g vs %g",
            got.loss, want.loss);
  double worst = 0.0;
  for (const LoraSlot& s : k.layout.slots()) {
    for (int part = 0; part < 2; ++part) {
      const int64_t off = part == 0 ? s.a_offset : s.b_offset;
      const int64_t n = (part == 0 ? s.in : s.out) * k.lora.rank;
      const double e = testing::RelativeL2(got.grads.data() + off, want.grads.data() + off, n);
      worst = std::max(worst, e);
      GPU_CHECK(e < grad_tol, "layer %lld module %d %s: gradient relative error %g",
                static_cast<long long>(s.layer), s.module, part == 0 ? "A" : "B", e);
    }
  }
  std::printf("  LoRA gradients: worst relative error %.2e over %zu slots\n", worst,
              k.layout.slots().size());
}

// Checkpointing recomputes each layer in the backward with the same kernels, dropout masks and
// GEMM shapes on the same stream (cuBLAS is deterministic there, the fused kernels have no
// atomics): the same loss and gradients as keeping every layer, bit for bit.
void CheckpointingChangesNothing(Device* gpu, ActivationPrecision activations) {
  const StepCase k;
  const Result kept = k.Run(gpu, activations);
  const Result redone = k.Run(gpu, activations, /*checkpointing=*/true);
  int64_t differ = 0;
  for (size_t i = 0; i < kept.grads.size(); ++i) differ += kept.grads[i] != redone.grads[i];
  GPU_CHECK(kept.loss == redone.loss && differ == 0,
            "checkpointing changed the step: loss %.9g vs %.9g, %lld of %zu gradients differ",
            redone.loss, kept.loss, static_cast<long long>(differ), kept.grads.size());
  std::printf("  checkpointing: the same loss and gradients, bit for bit\n");
}

void TrainerAgrees(Device* cpu, Device* gpu) {
  const LlamaWeights weights = RandomModel();
  const std::vector<TrainingRow> rows =
      testing::RandomTrainingRows(rng, 16, 64, weights.config.vocab_size);
  TrainerOptions o;
  o.lora.rank = 8;
  o.lora.dropout = 0.05f;
  o.learning_rate = 1e-3;
  o.max_steps = 3;
  o.batch_size = 4;
  o.warmup_ratio = 0.0;
  o.seed = 7;
  std::vector<float> adapters[2];
  Device* devices[2] = {cpu, gpu};
  for (int d = 0; d < 2; ++d) {
    auto model = LlamaModel::Create(weights, devices[d], ModelOptions{});
    GPU_CHECK(model.ok(), "model: %s", std::string(model.status().message()).c_str());
    if (!model.ok()) return;
    auto t = Trainer::Create(model->get(), rows, {}, o);
    GPU_CHECK(t.ok(), "trainer: %s", std::string(t.status().message()).c_str());
    if (!t.ok()) return;
    absl::Status s = (*t)->RunUntil((*t)->total_steps());
    GPU_CHECK(s.ok(), "run: %s", std::string(s.message()).c_str());
    adapters[d] = (*t)->params();
  }
  const double e = testing::RelativeL2(adapters[1].data(), adapters[0].data(),
                                       static_cast<int64_t>(adapters[0].size()));
  std::printf("  adapter after 3 AdamW steps: relative error %.2e\n", e);
  GPU_CHECK(e < 1e-3, "adapters differ after 3 steps: %g", e);

  // Paged optimizer memory changes where the moments live, not their values.
  o.paged_optimizer = true;
  auto model = LlamaModel::Create(weights, gpu, ModelOptions{});
  GPU_CHECK(model.ok(), "model: %s", std::string(model.status().message()).c_str());
  if (!model.ok()) return;
  auto t = Trainer::Create(model->get(), rows, {}, o);
  GPU_CHECK(t.ok(), "paged trainer: %s", std::string(t.status().message()).c_str());
  if (!t.ok()) return;
  absl::Status s = (*t)->RunUntil((*t)->total_steps());
  GPU_CHECK(s.ok(), "paged run: %s", std::string(s.message()).c_str());
  GPU_CHECK((*t)->params() == adapters[1], "the paged run's adapter differs from the resident one");
  GPU_CHECK(gpu->memory_usage().optimizer_host == 0, "moments left the card while training");
  // What the daemon does while other jobs step on the card.
  const absl::Status paged = (*t)->PageOutOptimizer();
  GPU_CHECK(paged.ok(), "page-out: %s", std::string(paged.message()).c_str());
  const DeviceMemoryUsage u = gpu->memory_usage();
  const int64_t moments = 2 * 4 * static_cast<int64_t>(adapters[1].size());
  // Paging needs prefetches the card takes while it computes; without them the state stays.
  int pageable = 0;
  CUDA_OK(cudaDeviceGetAttribute(&pageable, cudaDevAttrConcurrentManagedAccess, 0));
  if (pageable != 0) {
    GPU_CHECK(u.optimizer_host >= moments, "optimizer_host %lld bytes, want >= %lld",
              static_cast<long long>(u.optimizer_host), static_cast<long long>(moments));
    std::printf("  paged optimizer: same adapter; %lld bytes of moments on the host\n",
                static_cast<long long>(u.optimizer_host));
  } else {
    GPU_CHECK(u.optimizer_host == 0, "paged out on a card without concurrent managed access");
    std::printf(
        "  paged optimizer: same adapter; this setup has no concurrent managed access, "
        "so the moments stay resident\n");
  }
}

// The op profile of a training step (what train_step_gpu_bench --profile prints) names its
// kinds of work with their calls, GPU time in each, and attention by the path that ran. With
// bf16 activations and flash attention every layer operation has its bf16 kernel: the only
// widening is the last layer's output for the float32 head, once per step.
void ProfileNamesTheStepsOperations(const std::vector<CudaOpTime>& ops, bool flash, bool bf16) {
  auto find = [&](const std::string& name) -> const CudaOpTime* {
    for (const CudaOpTime& t : ops)
      if (t.op == name) return &t;
    return nullptr;
  };
  for (const char* name :
       {"gemm, bf16 operands", "nf4 dequantize to bf16", "gemm, float32 operands", "rmsnorm",
        "cross-entropy", "lora dropout down-projection", "lora dropout grad A",
        "lora dropout input gradient",
        flash ? "flash attention backward" : "gemm attention backward"}) {
    const CudaOpTime* t = find(name);
    GPU_CHECK(t != nullptr && t->calls > 0 && t->ms > 0.0, "profile: no time for '%s'", name);
  }
  GPU_CHECK(find(flash ? "gemm attention forward" : "flash attention forward") == nullptr,
            "profile: attention by the path that did not run");
  if (bf16 && flash) {
    const CudaOpTime* widen = find("widen bf16 to float32");
    GPU_CHECK(widen != nullptr && widen->calls == 1,
              "profile: %lld bf16 widenings in a step, want 1 (an operation fell back to the "
              "conversion defaults)",
              static_cast<long long>(widen != nullptr ? widen->calls : 0));
  }
  if (!bf16) {
    GPU_CHECK(find("widen bf16 to float32") == nullptr, "profile: bf16 in a float32 graph");
  }
  for (size_t i = 1; i < ops.size(); ++i)
    GPU_CHECK(ops[i - 1].ms >= ops[i].ms, "profile: not longest first");
  std::printf("  op profile: %zu kinds of operation, longest '%s' %.2f ms\n", ops.size(),
              ops.empty() ? "" : ops[0].op.c_str(), ops.empty() ? 0.0 : ops[0].ms);
}

// The scratch a device keeps grown between operations (here the float32 GEMM's dequantized
// weight, 100 x 192 floats) is given back by ReleaseScratch, and the next operation grows it
// again with the same result, bit for bit.
void ScratchIsReleased(Device* gpu) {
  const int64_t out = 100, in = 192, tokens = 8;
  auto lin = gpu->QuantizeLinear(Normal(out * in, 0.05f), out, in, Nf4Options{});
  auto x = gpu->Alloc(tokens * in);
  auto y = gpu->Alloc(tokens * out);
  GPU_CHECK(lin.ok() && x.ok() && y.ok(), "setup");
  if (!lin.ok() || !x.ok() || !y.ok()) return;
  const std::vector<float> xs = Normal(tokens * in, 1.0f);
  gpu->CopyFromHost(xs.data(), tokens * in, (*x)->data());
  std::vector<float> first(tokens * out), again(tokens * out);
  gpu->Linear(**lin, (*x)->data(), tokens, (*y)->data());
  gpu->CopyToHost((*y)->data(), tokens * out, first.data());
  const int64_t grown = gpu->memory_usage().workspace;
  const int64_t freed = gpu->ReleaseScratch();
  const int64_t left = gpu->memory_usage().workspace;
  GPU_CHECK(freed >= out * in * 4 && left == grown - freed, "workspace %lld, %lld freed, %lld left",
            static_cast<long long>(grown), static_cast<long long>(freed),
            static_cast<long long>(left));
  gpu->Linear(**lin, (*x)->data(), tokens, (*y)->data());
  gpu->CopyToHost((*y)->data(), tokens * out, again.data());
  GPU_CHECK(again == first && gpu->TakeError().ok(), "after the release the linear differs");
  GPU_CHECK(gpu->memory_usage().workspace > left, "the scratch did not grow again");
}

// A device object with a memory limit (a share of a card that also trains) refuses what would
// pass it as out of memory, as the card itself would, without losing the device; what it frees
// is its again.
void MemoryLimitHolds() {
  constexpr int64_t kLimit = 1 << 20;
  constexpr int64_t kFloats = kLimit / 4 / 2;  // half the limit
  CudaDeviceOptions o;
  o.memory_limit_bytes = kLimit;
  auto limited = CreateCudaDevice(0, o);
  GPU_CHECK(limited.ok(), "limited device: %s", std::string(limited.status().message()).c_str());
  if (!limited.ok()) return;
  Device* d = limited->get();
  GPU_CHECK(d->name().find("limited to 1 MiB") != std::string::npos, "name: %s", d->name().c_str());
  auto first = d->Alloc(kFloats, BufferKind::kActivations);
  GPU_CHECK(first.ok(), "half the limit: %s", std::string(first.status().message()).c_str());
  // The device's own scratch (the 8-bit code table, reduction partials) is held too.
  auto second = d->Alloc(kFloats, BufferKind::kActivations);
  GPU_CHECK(absl::IsResourceExhausted(second.status()) &&
                second.status().message().find("limited to 1 MiB") != std::string::npos,
            "past the limit: %s", std::string(second.status().message()).c_str());
  GPU_CHECK(d->TakeError().ok(), "a refused allocation lost the device");
  GPU_CHECK(d->memory_usage().activations == kFloats * 4, "activations %lld",
            static_cast<long long>(d->memory_usage().activations));
  first->reset();
  auto again = d->Alloc(kFloats, BufferKind::kActivations);
  GPU_CHECK(again.ok(), "after a free: %s", std::string(again.status().message()).c_str());
  // Without the limit the same two buffers fit.
  auto unlimited = CreateCudaDevice(0);
  if (!unlimited.ok()) return;
  auto a = (*unlimited)->Alloc(kFloats, BufferKind::kActivations);
  auto b = (*unlimited)->Alloc(kFloats, BufferKind::kActivations);
  GPU_CHECK(a.ok() && b.ok(), "an unlimited device refused 1 MiB");
  // OpenFirstUsableGpu hands each card its options.
  std::vector<std::string> why;
  auto chosen = OpenFirstUsableGpu({"cuda:0"}, 1, &why, [](int ordinal) {
    CudaDeviceOptions c;
    c.memory_limit_bytes = int64_t{3} << 20 << ordinal;
    return c;
  });
  GPU_CHECK(chosen->name().find("limited to 3 MiB") != std::string::npos, "chosen: %s",
            chosen->name().c_str());
}

}  // namespace
}  // namespace qlorad

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  const uint64_t seed = qlorad::gpu_check::FreshSeed();
  qlorad::rng.seed(seed);
  // float32 GEMMs: the comparison with the CPU is then limited by float rounding alone.
  qlorad::CudaDeviceOptions exact;
  exact.bf16_gemm = false;
  auto gpu = qlorad::CreateCudaDevice(0, exact);
  if (!gpu.ok()) {
    std::printf("cannot open cuda:0: %s\n", std::string(gpu.status().message()).c_str());
    return 1;
  }
  std::printf("%s\n", (*gpu)->name().c_str());
  auto cpu = qlorad::CreateCpuDevice();
  {  // --devices/--inference-device auto's choice: a card that cannot open is passed over
    std::vector<std::string> why;
    auto first = qlorad::OpenFirstUsableGpu({"cuda:999", "cuda:0"}, 1, &why);
    GPU_CHECK(first->name().rfind("cuda:0 ", 0) == 0 && why.size() == 1,
              "OpenFirstUsableGpu took %s after %zu skipped", first->name().c_str(), why.size());
  }
  qlorad::MemoryLimitHolds();
  qlorad::ScratchIsReleased(gpu->get());
  qlorad::QuantizeOnCardMatchesHost(gpu->get());
  qlorad::TrainingStepAgrees(cpu.get(), gpu->get(), qlorad::ActivationPrecision::kFloat32, 1e-4,
                             1e-3);
  qlorad::TrainerAgrees(cpu.get(), gpu->get());
  // The QLoRA setting: GEMMs on bf16 tensor cores (inputs rounded to 8 mantissa bits), with
  // flash attention (the default) and with GEMM attention, bf16 activations (the default) and
  // float32 ones. The GPU rounds the dequantized weights and LoRA's A and B to bf16 where the
  // CPU keeps them float32: on this model (measured once on the CPU with a throwaway test)
  // multiplying float32 weights by 1 + 0.002 N(0, 1) moves the worst LoRA gradient block by
  // 1.7%, and bf16 activations against float32 ones by 1.7%; the 5% bound leaves room for both.
  for (const bool flash : {true, false}) {
    for (const bool bf16 : {true, false}) {
      qlorad::CudaDeviceOptions o;
      o.flash_attention = flash;
      o.bf16_activations = bf16;
      auto fast = qlorad::CreateCudaDevice(0, o);
      GPU_CHECK(fast.ok(), "bf16 device: %s", std::string(fast.status().message()).c_str());
      if (!fast.ok()) continue;
      std::printf("%s, %s activations\n", (*fast)->name().c_str(), bf16 ? "bf16" : "float32");
      GPU_CHECK(((*fast)->name().find("flash") != std::string::npos) == flash, "flash attention %s",
                flash ? "off" : "on");
      GPU_CHECK((*fast)->PrefersBf16Activations({0, 8, 4, 32}) == (bf16 && flash),
                "activation type not as asked");
      if (flash && !bf16) qlorad::LoraLinearFusionAgrees(fast->get());
      if (flash && bf16) qlorad::Bf16KernelsMatchDefaults(fast->get());
      GPU_CHECK(qlorad::StartCudaOpProfile(fast->get()), "no profile on a CUDA device");
      qlorad::TrainingStepAgrees(
          cpu.get(), fast->get(),
          bf16 ? qlorad::ActivationPrecision::kBf16 : qlorad::ActivationPrecision::kFloat32, 1e-2,
          5e-2);
      qlorad::ProfileNamesTheStepsOperations(qlorad::TakeCudaOpProfile(fast->get()), flash, bf16);
      qlorad::CheckpointingChangesNothing(fast->get(), bf16
                                                           ? qlorad::ActivationPrecision::kBf16
                                                           : qlorad::ActivationPrecision::kFloat32);
    }
  }
  return qlorad::gpu_check::Finish("cuda_train_step_gpu_test");
}
