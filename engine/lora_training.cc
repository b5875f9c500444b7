#include "engine/lora_training.h"

#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace qlorad {

int64_t MicroBatch::num_targets() const {
  return std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
}

absl::Status MicroBatch::Validate(int64_t vocab) const {
  const size_t n = static_cast<size_t>(rows * seq_len);
  if (rows <= 0 || seq_len <= 0 || tokens.size() != n || positions.size() != n ||
      segments.size() != n || targets.size() != n) {
    return absl::InvalidArgumentError("micro-batch arrays do not match rows x seq_len");
  }
  for (size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab || targets[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("micro-batch token ", i, " is outside the vocabulary"));
    }
  }
  return absl::OkStatus();
}

// The computation behind LoraTrainingGraph, for either activation type.
class LoraTrainingGraph::Graph {
 public:
  virtual ~Graph() = default;
  virtual bool bf16() const = 0;
  // Checks the micro-batch and allocates the buffers for its shape (kept while it repeats).
  virtual absl::Status Prepare(const MicroBatch& batch) = 0;
  // ForwardBackward on a checked, prepared micro-batch.
  virtual void Run(const MicroBatch& batch, const float* params, float* grads, float loss_scale,
                   uint64_t dropout_seed, uint64_t step, float* loss_sum) = 0;
  // Run, summing into the graph's own loss float, and the host's wait for it.
  virtual double RunReadingLoss(const MicroBatch& batch, const float* params, float* grads,
                                float loss_scale, uint64_t dropout_seed, uint64_t step) = 0;
  virtual double Loss(const MicroBatch& batch, const float* params) = 0;
};

namespace {

struct Shape {
  int64_t tokens, rows, layers, layers_kept, h, kv, im, r, vocab, attn_saved_per_row;
};

Shape ShapeOf(const LlamaConfig& c, int64_t rank, bool checkpointing, int64_t rows, int64_t seq_len,
              int64_t attention_saved_per_row) {
  Shape s;
  s.tokens = rows * seq_len;
  s.rows = rows;
  s.layers = c.num_hidden_layers;
  s.layers_kept = checkpointing ? 1 : c.num_hidden_layers;
  s.h = c.hidden_size;
  s.kv = c.kv_dim();
  s.im = c.intermediate_size;
  s.r = rank;
  s.vocab = c.vocab_size;
  s.attn_saved_per_row = attention_saved_per_row;
  return s;
}

// Activations of one layer kept for its backward pass (T: the activation type). What one
// elementwise pass remakes from these is not kept (the norms' outputs from their inputs and
// 1/rms, the SwiGLU output from gate and up): that saves 2 h + im values a token and layer, 29%
// of what a Llama-7B layer kept with its input.
struct LayerCache {
  // attn: what the device keeps of the attention for its backward (Device::AttentionSavedFloats).
  std::unique_ptr<DeviceBuffer> inv1, attn, inv2;         // float32
  std::unique_ptr<DeviceBuffer> q, k, v, ao, hmid, g, u;  // T
  std::array<std::unique_ptr<DeviceBuffer>, 7> lora_h;    // x A^T per module, float32
};

struct Buffers {
  int64_t tokens = 0, rows = 0, seq_len = 0;
  std::vector<std::unique_ptr<DeviceBuffer>> xs;  // layer inputs, [L+1][N, h], T
  std::vector<LayerCache> caches;                 // L, or 1 with checkpointing
  // T: xn, a norm's output, and act, the SwiGLU output, made in the forward and made again in
  // the backward (one layer's worth, shared by all layers), and the activation gradients.
  std::unique_ptr<DeviceBuffer> xn, act, d_a, d_b, dxn, tmp_h, dq, dk, dv, dao, dg, du;
  // float32: the head (final norm, logits, loss), LoRA's dh and the float32 scratch of the
  // LoRA dropout defaults (idle in the head, where it takes the last layer's output gradient
  // as float32 when the activations are bf16). head_x, the last layer's output as float32,
  // exists only with bf16 activations.
  std::unique_ptr<DeviceBuffer> xf, invf, logits, dh, tmp_in, loss, head_x;
};

// Calls visit(buffer, elements, element_bytes) for every buffer of the graph: Prepare allocates
// them and ActivationBytes counts them, so the memory estimate is the list the graph allocates.
template <typename Visit>
absl::Status ForEachBuffer(const Shape& s, bool bf16, Buffers& b, Visit&& visit) {
  using Slot = std::pair<std::unique_ptr<DeviceBuffer>*, int64_t>;
  const int act = bf16 ? 2 : 4;
  const int64_t n = s.tokens;
  b.xs.resize(s.layers + 1);
  for (auto& x : b.xs) RETURN_IF_ERROR(visit(x, n * s.h, act));
  b.caches.resize(s.layers_kept);
  for (LayerCache& c : b.caches) {
    for (auto [buffer, floats] :
         {Slot{&c.inv1, n}, Slot{&c.attn, s.rows * s.attn_saved_per_row}, Slot{&c.inv2, n}}) {
      RETURN_IF_ERROR(visit(*buffer, floats, 4));
    }
    for (auto [buffer, elems] :
         {Slot{&c.q, n * s.h}, Slot{&c.k, n * s.kv}, Slot{&c.v, n * s.kv}, Slot{&c.ao, n * s.h},
          Slot{&c.hmid, n * s.h}, Slot{&c.g, n * s.im}, Slot{&c.u, n * s.im}}) {
      RETURN_IF_ERROR(visit(*buffer, elems, act));
    }
    for (auto& lh : c.lora_h) RETURN_IF_ERROR(visit(lh, n * s.r, 4));
  }
  for (auto [buffer, elems] :
       {Slot{&b.xn, n * s.h}, Slot{&b.act, n * s.im}, Slot{&b.d_a, n * s.h}, Slot{&b.d_b, n * s.h},
        Slot{&b.dxn, n * s.h}, Slot{&b.tmp_h, n * s.h}, Slot{&b.dq, n * s.h}, Slot{&b.dk, n * s.kv},
        Slot{&b.dv, n * s.kv}, Slot{&b.dao, n * s.h}, Slot{&b.dg, n * s.im},
        Slot{&b.du, n * s.im}}) {
    RETURN_IF_ERROR(visit(*buffer, elems, act));
  }
  for (auto [buffer, floats] :
       {Slot{&b.xf, n * s.h}, Slot{&b.invf, n}, Slot{&b.logits, n * s.vocab}, Slot{&b.dh, n * s.r},
        Slot{&b.tmp_in, n * std::max(s.h, s.im)}, Slot{&b.loss, 1}}) {
    RETURN_IF_ERROR(visit(*buffer, floats, 4));
  }
  if (bf16) {
    RETURN_IF_ERROR(visit(b.head_x, n * s.h, 4));
  }
  return absl::OkStatus();
}

// Floats of device memory that `elements` values of `bytes` each take.
int64_t FloatsFor(int64_t elements, int bytes) { return (elements * bytes + 3) / 4; }

}  // namespace

int64_t LoraTrainingGraph::ActivationBytes(const LlamaConfig& c, int64_t rank, bool checkpointing,
                                           int64_t rows, int64_t seq_len,
                                           int64_t attention_saved_per_row, bool bf16) {
  int64_t total = 0;
  Buffers counted;  // only its vectors are sized: nothing is allocated
  (void)ForEachBuffer(ShapeOf(c, rank, checkpointing, rows, seq_len, attention_saved_per_row), bf16,
                      counted, [&](std::unique_ptr<DeviceBuffer>&, int64_t elements, int bytes) {
                        total += FloatsFor(elements, bytes) * 4;
                        return absl::OkStatus();
                      });
  return total;
}

template <typename T>
class LoraTrainingGraph::TypedGraph final : public LoraTrainingGraph::Graph {
 public:
  static constexpr bool kBf16 = std::is_same_v<T, Bf16>;

  TypedGraph(LlamaModel* model, const LoraLayout* layout, const LoraConfig& lora,
             const TrainingGraphOptions& options)
      : model_(model), device_(model->device()), layout_(layout), lora_(lora), options_(options) {}

  bool bf16() const override { return kBf16; }
  double RunReadingLoss(const MicroBatch& b, const float* params, float* grads, float loss_scale,
                        uint64_t seed, uint64_t step) override {
    float* loss = buf_->loss->data();
    device_->Fill(loss, 1, 0.0f);
    Run(b, params, grads, loss_scale, seed, step, loss);
    float host = 0.0f;
    device_->CopyToHost(loss, 1, &host);
    return static_cast<double>(host);
  }

  absl::Status Prepare(const MicroBatch& batch) override {
    RETURN_IF_ERROR(batch.Validate(model_->config().vocab_size));
    const int64_t rows = batch.rows, seq_len = batch.seq_len, n = rows * seq_len;
    if (buf_ && buf_->rows == rows && buf_->seq_len == seq_len) return absl::OkStatus();
    buf_.reset();  // free the old set before allocating a larger one
    auto b = std::make_unique<Buffers>();
    b->tokens = n;
    b->rows = rows;
    b->seq_len = seq_len;
    const LlamaConfig& c = model_->config();
    const int64_t attn_saved = device_->AttentionSavedFloats(
        {seq_len, c.num_attention_heads, c.num_key_value_heads, c.head_dim()});
    if constexpr (kBf16) {
      RETURN_IF_ERROR(
          device_->ReserveConversionScratch(ConversionShape::Of(c, lora_.rank, rows, seq_len)));
    }
    RETURN_IF_ERROR(ForEachBuffer(
        ShapeOf(c, lora_.rank, options_.activation_checkpointing, rows, seq_len, attn_saved), kBf16,
        *b, [&](std::unique_ptr<DeviceBuffer>& dst, int64_t elements, int bytes) -> absl::Status {
          ASSIGN_OR_RETURN(dst, device_->Alloc(FloatsFor(elements, bytes)));
          return absl::OkStatus();
        }));
    buf_ = std::move(b);
    return absl::OkStatus();
  }

  void Run(const MicroBatch& b, const float* params, float* grads, float loss_scale, uint64_t seed,
           uint64_t step, float* loss_sum) override {
    const LlamaConfig& cfg = model_->config();
    const int64_t n = b.rows * b.seq_len, h = cfg.hidden_size, L = cfg.num_hidden_layers;
    const bool ckpt = options_.activation_checkpointing;
    const float* xl = Forward(b, params, /*train=*/true, seed, step);
    device_->RmsNorm(xl, model_->final_norm(), n, h, cfg.rms_norm_eps, buf_->xf->data(),
                     buf_->invf->data());
    float* logits = buf_->logits->data();
    device_->MatmulTransposed(model_->lm_head(), cfg.vocab_size, h, buf_->xf->data(), n, logits);
    device_->CrossEntropyForwardBackward(logits, b.targets.data(), n, cfg.vocab_size, loss_scale,
                                         loss_sum);
    // d(xf) = dlogits E (the head is frozen), then the final norm, in float32.
    T* d_cur = A(buf_->d_a);
    float* dxf = kBf16 ? buf_->tmp_in->data() : F(buf_->dxn);
    device_->Gemm(false, false, n, h, cfg.vocab_size, 1.0f, logits, cfg.vocab_size,
                  model_->lm_head(), h, 0.0f, dxf, h);
    if constexpr (kBf16) {
      // xf (the norm's output) is spent: it takes d(last layer output) before rounding.
      device_->RmsNormBackward(xl, model_->final_norm(), buf_->invf->data(), dxf, n, h,
                               buf_->xf->data());
      device_->ToBf16(buf_->xf->data(), n * h, d_cur);
    } else {
      device_->RmsNormBackward(xl, model_->final_norm(), buf_->invf->data(), dxf, n, h, d_cur);
    }
    for (int64_t l = L - 1; l >= 0; --l) {
      LayerCache& c = buf_->caches[ckpt ? 0 : l];
      if (ckpt) {  // recompute this layer's activations (same dropout streams), not its output
        LayerForward(l, A(buf_->xs[l]), b, params, true, seed, step, c, nullptr);
      }
      T* dx = d_cur == A(buf_->d_a) ? A(buf_->d_b) : A(buf_->d_a);
      LayerBackward(l, b, params, grads, seed, step, c, d_cur, dx, /*recomputed=*/ckpt);
      d_cur = dx;
    }
  }

  double Loss(const MicroBatch& b, const float* params) override {
    const LlamaConfig& cfg = model_->config();
    const int64_t n = b.rows * b.seq_len, h = cfg.hidden_size;
    const float* xl = Forward(b, params, /*train=*/false, 0, 0);
    device_->RmsNorm(xl, model_->final_norm(), n, h, cfg.rms_norm_eps, buf_->xf->data());
    device_->MatmulTransposed(model_->lm_head(), cfg.vocab_size, h, buf_->xf->data(), n,
                              buf_->logits->data());
    return device_->CrossEntropyLoss(buf_->logits->data(), b.targets.data(), n, cfg.vocab_size);
  }

 private:
  static T* A(const std::unique_ptr<DeviceBuffer>& b) { return reinterpret_cast<T*>(b->data()); }
  static float* F(const std::unique_ptr<DeviceBuffer>& b) { return b->data(); }

  // The embedding and every layer (with dropout when training), keeping what the backward
  // needs; returns the last layer's output as float32, the head's input.
  const float* Forward(const MicroBatch& b, const float* params, bool train, uint64_t seed,
                       uint64_t step) {
    const LlamaConfig& cfg = model_->config();
    const int64_t n = b.rows * b.seq_len, h = cfg.hidden_size, L = cfg.num_hidden_layers;
    device_->Embedding(model_->embed(), h, b.tokens.data(), n, A(buf_->xs[0]));
    for (int64_t l = 0; l < L; ++l) {
      LayerCache& c = buf_->caches[options_.activation_checkpointing ? 0 : l];
      LayerForward(l, A(buf_->xs[l]), b, params, train, seed, step, c, A(buf_->xs[l + 1]));
    }
    if constexpr (kBf16) {
      device_->ToF32(A(buf_->xs[L]), n * h, buf_->head_x->data());
      return buf_->head_x->data();
    } else {
      return buf_->xs[L]->data();
    }
  }

  // The sizes a layer's operations use for this micro-batch: tokens, hidden, kv and
  // intermediate widths, query and kv heads, head_dim, row length (tokens a row).
  struct Sizes {
    int64_t n, h, kv, im, H, KV, hd, row;
  };
  Sizes SizesOf(const MicroBatch& b) const {
    const LlamaConfig& c = model_->config();
    return {buf_->tokens,          c.hidden_size,         c.kv_dim(),   c.intermediate_size,
            c.num_attention_heads, c.num_key_value_heads, c.head_dim(), b.seq_len};
  }

  uint64_t Stream(uint64_t step, int64_t layer, int module) const {
    return (step * static_cast<uint64_t>(model_->config().num_hidden_layers) + layer) * 7 + module;
  }

  // y = x W^T + scale h B^T with h = dropout(x) A^T saved in h_save. A null y asks for h only
  // (what the backward keeps of a recomputed layer's last linear).
  void LoraForward(int64_t layer, int module, const T* x, int64_t n, const float* params,
                   bool train, uint64_t seed, uint64_t step, float* h_save, T* y) {
    const DeviceLinear& w = *model_->layers()[layer].linear[module];
    const LoraSlot* s = layout_->Find(layer, module);
    if (s == nullptr) {
      if (y != nullptr) device_->Linear(w, x, n, y);
      return;
    }
    const int64_t r = lora_.rank;
    device_->LoraDropoutDown(x, n, s->in, params + s->a_offset, r, train ? options_.dropout : 0.0f,
                             seed, Stream(step, layer, module), h_save, buf_->tmp_in->data());
    if (y != nullptr)
      device_->LinearLora(w, x, n, h_save, params + s->b_offset, r, lora_.scale(), y);
  }

  void LoraBackward(int64_t layer, int module, const T* x, int64_t n, const float* params,
                    float* grads, uint64_t seed, uint64_t step, const float* h_saved, const T* dy,
                    T* dx, bool accumulate) {
    const DeviceLinear& w = *model_->layers()[layer].linear[module];
    const LoraSlot* s = layout_->Find(layer, module);
    if (s == nullptr) {
      device_->LinearBackwardInput(w, dy, n, dx, accumulate);
      return;
    }
    const int64_t r = lora_.rank;
    float* dh = buf_->dh->data();
    float* tmp = buf_->tmp_in->data();
    // dx (=/+=) dy W; dB += s dy^T h; dh = s dy B.
    device_->LinearLoraBackward(w, dy, n, h_saved, params + s->b_offset, r, lora_.scale(), dx,
                                accumulate, dh, grads + s->b_offset);
    // dA += dh^T dropout(x) and dx += dropout(dh A), the mask made again from its stream.
    const uint64_t stream = Stream(step, layer, module);
    device_->LoraDropoutGradA(x, dh, n, s->in, r, options_.dropout, seed, stream,
                              grads + s->a_offset, tmp);
    device_->LoraDropoutBackwardInput(dh, params + s->a_offset, n, s->in, r, options_.dropout, seed,
                                      stream, dx, tmp);
  }

  // One decoder layer on x into out, keeping in c what the backward needs. A null out
  // (checkpointing's recompute) skips the last linear's output and the residual add: the
  // backward needs only that linear's LoRA h.
  void LayerForward(int64_t l, const T* x, const MicroBatch& b, const float* params, bool train,
                    uint64_t seed, uint64_t step, LayerCache& c, T* out) {
    const LlamaConfig& cfg = model_->config();
    const LlamaModel::Layer& L = model_->layers()[l];
    const auto [n, h, kv, im, H, KV, hd, T_] = SizesOf(b);
    T* xn = A(buf_->xn);
    T* act = A(buf_->act);
    T *q = A(c.q), *k = A(c.k), *v = A(c.v), *ao = A(c.ao), *hmid = A(c.hmid);
    device_->RmsNorm(x, L.input_norm->data(), n, h, cfg.rms_norm_eps, xn, c.inv1->data());
    LoraForward(l, 0, xn, n, params, train, seed, step, c.lora_h[0]->data(), q);
    LoraForward(l, 1, xn, n, params, train, seed, step, c.lora_h[1]->data(), k);
    LoraForward(l, 2, xn, n, params, train, seed, step, c.lora_h[2]->data(), v);
    device_->Rope(q, b.positions.data(), n, H, hd, cfg.rope_theta);
    device_->Rope(k, b.positions.data(), n, KV, hd, cfg.rope_theta);
    const TrainAttentionDims dims{T_, H, KV, hd};
    const int64_t attn_saved = device_->AttentionSavedFloats(dims);
    for (int64_t row = 0; row < b.rows; ++row) {
      device_->AttentionTrainForward(q + row * T_ * h, k + row * T_ * kv, v + row * T_ * kv,
                                     b.segments.data() + row * T_, dims, ao + row * T_ * h,
                                     c.attn->data() + row * attn_saved);
    }
    LoraForward(l, 3, ao, n, params, train, seed, step, c.lora_h[3]->data(), hmid);
    device_->AddInPlace(hmid, x, n * h);  // hmid = x + o_proj(attn)
    device_->RmsNorm(hmid, L.post_norm->data(), n, h, cfg.rms_norm_eps, xn, c.inv2->data());
    LoraForward(l, 4, xn, n, params, train, seed, step, c.lora_h[4]->data(), A(c.g));
    LoraForward(l, 5, xn, n, params, train, seed, step, c.lora_h[5]->data(), A(c.u));
    device_->Swiglu(A(c.g), A(c.u), n * im, act);
    LoraForward(l, 6, act, n, params, train, seed, step, c.lora_h[6]->data(), out);
    if (out != nullptr) device_->AddInPlace(out, hmid, n * h);  // out = hmid + down(act)
  }

  // On entry `dout` is d(layer output); it is reused as d(hmid). `dx` receives d(layer input).
  // `recomputed`: LayerForward of this layer ran just before (checkpointing), so the SwiGLU
  // output and the post-attention norm's output are still in their scratch buffers.
  void LayerBackward(int64_t l, const MicroBatch& b, const float* params, float* grads,
                     uint64_t seed, uint64_t step, LayerCache& c, T* dout, T* dx, bool recomputed) {
    const LlamaConfig& cfg = model_->config();
    const LlamaModel::Layer& L = model_->layers()[l];
    const T* x = A(buf_->xs[l]);
    const auto [n, h, kv, im, H, KV, hd, T_] = SizesOf(b);
    T* dxn = A(buf_->dxn);
    T* tmp_h = A(buf_->tmp_h);
    T* xn = A(buf_->xn);
    T* act = A(buf_->act);
    T *q = A(c.q), *k = A(c.k), *v = A(c.v), *ao = A(c.ao), *hmid = A(c.hmid), *g = A(c.g),
      *u = A(c.u);
    T *dq = A(buf_->dq), *dk = A(buf_->dk), *dv = A(buf_->dv), *dao = A(buf_->dao);
    // MLP branch: out = hmid + down(swiglu(gate(xn2), up(xn2))). The swiglu backward may write
    // dgate over its dout input (element by element), so dg holds d(act) and then d(gate).
    // act and xn2 are made again from what the layer kept (the same kernels on the same inputs:
    // the forward's values), unless the layer was just recomputed and they are still there.
    T* dg = A(buf_->dg);
    T* du = A(buf_->du);
    if (!recomputed) device_->Swiglu(g, u, n * im, act);
    LoraBackward(l, 6, act, n, params, grads, seed, step, c.lora_h[6]->data(), dout, dg, false);
    device_->SwigluBackward(g, u, dg, n * im, dg, du);
    if (!recomputed) device_->RmsNorm(hmid, L.post_norm->data(), n, h, cfg.rms_norm_eps, xn);
    LoraBackward(l, 4, xn, n, params, grads, seed, step, c.lora_h[4]->data(), dg, dxn, false);
    LoraBackward(l, 5, xn, n, params, grads, seed, step, c.lora_h[5]->data(), du, dxn, true);
    device_->RmsNormBackward(hmid, L.post_norm->data(), c.inv2->data(), dxn, n, h, tmp_h);
    device_->AddInPlace(dout, tmp_h, n * h);  // dout is now d(hmid)
    // Attention branch: hmid = x + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))).
    LoraBackward(l, 3, ao, n, params, grads, seed, step, c.lora_h[3]->data(), dout, dao, false);
    const TrainAttentionDims dims{T_, H, KV, hd};
    const int64_t attn_saved = device_->AttentionSavedFloats(dims);
    for (int64_t row = 0; row < b.rows; ++row) {
      device_->AttentionTrainBackward(q + row * T_ * h, k + row * T_ * kv, v + row * T_ * kv,
                                      b.segments.data() + row * T_, ao + row * T_ * h,
                                      c.attn->data() + row * attn_saved, dao + row * T_ * h, dims,
                                      dq + row * T_ * h, dk + row * T_ * kv, dv + row * T_ * kv);
    }
    device_->Rope(dq, b.positions.data(), n, H, hd, cfg.rope_theta, /*inverse=*/true);
    device_->Rope(dk, b.positions.data(), n, KV, hd, cfg.rope_theta, /*inverse=*/true);
    device_->RmsNorm(x, L.input_norm->data(), n, h, cfg.rms_norm_eps, xn);  // xn1 again
    LoraBackward(l, 0, xn, n, params, grads, seed, step, c.lora_h[0]->data(), dq, dxn, false);
    LoraBackward(l, 1, xn, n, params, grads, seed, step, c.lora_h[1]->data(), dk, dxn, true);
    LoraBackward(l, 2, xn, n, params, grads, seed, step, c.lora_h[2]->data(), dv, dxn, true);
    device_->RmsNormBackward(x, L.input_norm->data(), c.inv1->data(), dxn, n, h, dx);
    device_->AddInPlace(dx, dout, n * h);
  }

  LlamaModel* model_;
  Device* device_;
  const LoraLayout* layout_;
  LoraConfig lora_;
  TrainingGraphOptions options_;
  std::unique_ptr<Buffers> buf_;
};

LoraTrainingGraph::LoraTrainingGraph(LlamaModel* model, const LoraLayout* layout,
                                     const LoraConfig& lora, const TrainingGraphOptions& options) {
  const LlamaConfig& c = model->config();
  const bool bf16 = options.activations == ActivationPrecision::kBf16 ||
                    (options.activations == ActivationPrecision::kDevicePreferred &&
                     model->device()->PrefersBf16Activations(
                         {0, c.num_attention_heads, c.num_key_value_heads, c.head_dim()}));
  if (bf16) {
    graph_ = std::make_unique<TypedGraph<Bf16>>(model, layout, lora, options);
  } else {
    graph_ = std::make_unique<TypedGraph<float>>(model, layout, lora, options);
  }
}

LoraTrainingGraph::~LoraTrainingGraph() = default;

bool LoraTrainingGraph::bf16_activations() const { return graph_->bf16(); }

absl::StatusOr<double> LoraTrainingGraph::ForwardBackward(const MicroBatch& b, const float* params,
                                                          float* grads, float loss_scale,
                                                          uint64_t seed, uint64_t step) {
  RETURN_IF_ERROR(graph_->Prepare(b));
  return graph_->RunReadingLoss(b, params, grads, loss_scale, seed, step);
}

absl::Status LoraTrainingGraph::ForwardBackward(const MicroBatch& b, const float* params,
                                                float* grads, float loss_scale, uint64_t seed,
                                                uint64_t step, float* loss_sum) {
  RETURN_IF_ERROR(graph_->Prepare(b));
  graph_->Run(b, params, grads, loss_scale, seed, step, loss_sum);
  return absl::OkStatus();
}

absl::StatusOr<double> LoraTrainingGraph::Loss(const MicroBatch& b, const float* params) {
  RETURN_IF_ERROR(graph_->Prepare(b));
  return graph_->Loss(b, params);
}

}  // namespace qlorad
