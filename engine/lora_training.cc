#include "engine/lora_training.h"

#include <algorithm>
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

// Activations of one layer kept for its backward pass. What one elementwise pass remakes from
// these is not kept (the norms' outputs from their inputs and 1/rms, the SwiGLU output from
// gate and up): that saves 2 h + im floats a token and layer, 29% of what a Llama-7B layer kept
// with its input.
struct LoraTrainingGraph::LayerCache {
  // attn: what the device keeps of the attention for its backward (Device::AttentionSavedFloats).
  std::unique_ptr<DeviceBuffer> inv1, q, k, v, attn, ao, hmid, inv2, g, u;
  std::array<std::unique_ptr<DeviceBuffer>, 7> lora_h;  // x A^T per targeted module
};

struct LoraTrainingGraph::Buffers {
  int64_t tokens = 0, rows = 0, seq_len = 0;
  std::vector<std::unique_ptr<DeviceBuffer>> xs;  // layer inputs, [L+1][N, h]
  std::vector<LayerCache> caches;                 // L, or 1 with checkpointing
  // xn: a norm's output, act: the SwiGLU output, made in the forward and made again in the
  // backward (one layer's worth, shared by all layers).
  // loss: the one float the waiting ForwardBackward sums its loss into.
  std::unique_ptr<DeviceBuffer> xn, act, xf, invf, logits, d_a, d_b, dxn, tmp_h, dq, dk, dv, dao,
      dg, du, dh, tmp_in, loss;
};

struct LoraTrainingGraph::Shape {
  int64_t tokens, rows, layers, layers_kept, h, kv, im, r, vocab, attn_saved_per_row;
};

LoraTrainingGraph::Shape LoraTrainingGraph::ShapeOf(const LlamaConfig& c, int64_t rank,
                                                    bool checkpointing, int64_t rows,
                                                    int64_t seq_len,
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

// Calls visit(buffer, floats) for every buffer of the graph: Prepare allocates them and
// ActivationFloats counts them, so the memory estimate is the list the graph allocates.
template <typename Visit>
absl::Status LoraTrainingGraph::ForEachBuffer(const Shape& s, Buffers& b, Visit&& visit) {
  using Slot = std::pair<std::unique_ptr<DeviceBuffer>*, int64_t>;
  const int64_t n = s.tokens;
  b.xs.resize(s.layers + 1);
  for (auto& x : b.xs) RETURN_IF_ERROR(visit(x, n * s.h));
  b.caches.resize(s.layers_kept);
  for (LayerCache& c : b.caches) {
    for (auto [buffer, floats] :
         {Slot{&c.inv1, n}, Slot{&c.q, n * s.h}, Slot{&c.k, n * s.kv}, Slot{&c.v, n * s.kv},
          Slot{&c.attn, s.rows * s.attn_saved_per_row}, Slot{&c.ao, n * s.h},
          Slot{&c.hmid, n * s.h}, Slot{&c.inv2, n}, Slot{&c.g, n * s.im}, Slot{&c.u, n * s.im}}) {
      RETURN_IF_ERROR(visit(*buffer, floats));
    }
    for (auto& lh : c.lora_h) RETURN_IF_ERROR(visit(lh, n * s.r));
  }
  for (auto [buffer, floats] :
       {Slot{&b.xn, n * s.h}, Slot{&b.act, n * s.im}, Slot{&b.xf, n * s.h}, Slot{&b.invf, n},
        Slot{&b.logits, n * s.vocab}, Slot{&b.d_a, n * s.h}, Slot{&b.d_b, n * s.h},
        Slot{&b.dxn, n * s.h}, Slot{&b.tmp_h, n * s.h}, Slot{&b.dq, n * s.h}, Slot{&b.dk, n * s.kv},
        Slot{&b.dv, n * s.kv}, Slot{&b.dao, n * s.h}, Slot{&b.dg, n * s.im}, Slot{&b.du, n * s.im},
        Slot{&b.dh, n * s.r}, Slot{&b.tmp_in, n * std::max(s.h, s.im)}, Slot{&b.loss, 1}}) {
    RETURN_IF_ERROR(visit(*buffer, floats));
  }
  return absl::OkStatus();
}

int64_t LoraTrainingGraph::ActivationFloats(const LlamaConfig& c, int64_t rank, bool checkpointing,
                                            int64_t rows, int64_t seq_len,
                                            int64_t attention_saved_per_row) {
  int64_t total = 0;
  Buffers counted;  // only its vectors are sized: nothing is allocated
  (void)ForEachBuffer(ShapeOf(c, rank, checkpointing, rows, seq_len, attention_saved_per_row),
                      counted, [&](std::unique_ptr<DeviceBuffer>&, int64_t floats) {
                        total += floats;
                        return absl::OkStatus();
                      });
  return total;
}

LoraTrainingGraph::LoraTrainingGraph(LlamaModel* model, const LoraLayout* layout,
                                     const LoraConfig& lora, const TrainingGraphOptions& options)
    : model_(model), device_(model->device()), layout_(layout), lora_(lora), options_(options) {}

LoraTrainingGraph::~LoraTrainingGraph() = default;

uint64_t LoraTrainingGraph::Stream(uint64_t step, int64_t layer, int module) const {
  return (step * static_cast<uint64_t>(model_->config().num_hidden_layers) + layer) * 7 + module;
}

absl::Status LoraTrainingGraph::Prepare(const MicroBatch& batch) {
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
  RETURN_IF_ERROR(ForEachBuffer(
      ShapeOf(c, lora_.rank, options_.activation_checkpointing, rows, seq_len, attn_saved), *b,
      [&](std::unique_ptr<DeviceBuffer>& dst, int64_t floats) -> absl::Status {
        ASSIGN_OR_RETURN(dst, device_->Alloc(floats));
        return absl::OkStatus();
      }));
  buf_ = std::move(b);
  return absl::OkStatus();
}

void LoraTrainingGraph::LoraForward(int64_t layer, int module, const float* x, int64_t n,
                                    const float* params, bool train, uint64_t seed, uint64_t step,
                                    float* h_save, float* y) {
  const DeviceLinear& w = *model_->layers()[layer].linear[module];
  const LoraSlot* s = layout_->Find(layer, module);
  if (s == nullptr) {
    device_->Linear(w, x, n, y);
    return;
  }
  const int64_t r = lora_.rank;
  if (train && options_.dropout > 0.0f) {
    device_->LoraDropoutDown(x, n, s->in, params + s->a_offset, r, options_.dropout, seed,
                             Stream(step, layer, module), h_save, buf_->tmp_in->data());
  } else {
    device_->Gemm(false, true, n, r, s->in, 1.0f, x, s->in, params + s->a_offset, s->in, 0.0f,
                  h_save, r);
  }
  device_->LinearLora(w, x, n, h_save, params + s->b_offset, r, lora_.scale(), y);
}

void LoraTrainingGraph::LoraBackward(int64_t layer, int module, const float* x, int64_t n,
                                     const float* params, float* grads, uint64_t seed,
                                     uint64_t step, const float* h_saved, const float* dy,
                                     float* dx, bool accumulate) {
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
  if (options_.dropout > 0.0f) {
    // dA += dh^T dropout(x) and dx += dropout(dh A), the mask made again from its stream.
    const uint64_t stream = Stream(step, layer, module);
    device_->LoraDropoutGradA(x, dh, n, s->in, r, options_.dropout, seed, stream,
                              grads + s->a_offset, tmp);
    device_->LoraDropoutBackwardInput(dh, params + s->a_offset, n, s->in, r, options_.dropout, seed,
                                      stream, dx, tmp);
  } else {
    device_->Gemm(true, false, r, s->in, n, 1.0f, dh, r, x, s->in, 1.0f, grads + s->a_offset,
                  s->in);
    device_->Gemm(false, false, n, s->in, r, 1.0f, dh, r, params + s->a_offset, s->in, 1.0f, dx,
                  s->in);
  }
}

void LoraTrainingGraph::LayerForward(int64_t l, const float* x, const MicroBatch& b,
                                     const float* params, bool train, uint64_t seed, uint64_t step,
                                     LayerCache& c, float* out) {
  const LlamaConfig& cfg = model_->config();
  const LlamaModel::Layer& L = model_->layers()[l];
  const int64_t n = buf_->tokens, h = cfg.hidden_size, kv = cfg.kv_dim(),
                im = cfg.intermediate_size;
  const int64_t H = cfg.num_attention_heads, KV = cfg.num_key_value_heads, hd = cfg.head_dim();
  const int64_t T = b.seq_len;
  float* xn = buf_->xn->data();
  float* act = buf_->act->data();
  device_->RmsNorm(x, L.input_norm->data(), n, h, cfg.rms_norm_eps, xn, c.inv1->data());
  LoraForward(l, 0, xn, n, params, train, seed, step, c.lora_h[0]->data(), c.q->data());
  LoraForward(l, 1, xn, n, params, train, seed, step, c.lora_h[1]->data(), c.k->data());
  LoraForward(l, 2, xn, n, params, train, seed, step, c.lora_h[2]->data(), c.v->data());
  device_->Rope(c.q->data(), b.positions.data(), n, H, hd, cfg.rope_theta);
  device_->Rope(c.k->data(), b.positions.data(), n, KV, hd, cfg.rope_theta);
  const TrainAttentionDims dims{T, H, KV, hd};
  const int64_t attn_saved = device_->AttentionSavedFloats(dims);
  for (int64_t row = 0; row < b.rows; ++row) {
    device_->AttentionTrainForward(c.q->data() + row * T * h, c.k->data() + row * T * kv,
                                   c.v->data() + row * T * kv, b.segments.data() + row * T, dims,
                                   c.ao->data() + row * T * h, c.attn->data() + row * attn_saved);
  }
  LoraForward(l, 3, c.ao->data(), n, params, train, seed, step, c.lora_h[3]->data(),
              c.hmid->data());
  device_->AddInPlace(c.hmid->data(), x, n * h);  // hmid = x + o_proj(attn)
  device_->RmsNorm(c.hmid->data(), L.post_norm->data(), n, h, cfg.rms_norm_eps, xn, c.inv2->data());
  LoraForward(l, 4, xn, n, params, train, seed, step, c.lora_h[4]->data(), c.g->data());
  LoraForward(l, 5, xn, n, params, train, seed, step, c.lora_h[5]->data(), c.u->data());
  device_->Swiglu(c.g->data(), c.u->data(), n * im, act);
  LoraForward(l, 6, act, n, params, train, seed, step, c.lora_h[6]->data(), out);
  device_->AddInPlace(out, c.hmid->data(), n * h);  // out = hmid + down(act)
}

void LoraTrainingGraph::LayerBackward(int64_t l, const MicroBatch& b, const float* params,
                                      float* grads, uint64_t seed, uint64_t step, LayerCache& c,
                                      float* dout, float* dx, bool recomputed) {
  // On entry `dout` is d(layer output); it is reused as d(hmid). `dx` receives d(layer input).
  const LlamaConfig& cfg = model_->config();
  const LlamaModel::Layer& L = model_->layers()[l];
  const float* x = buf_->xs[l]->data();
  const int64_t n = buf_->tokens, h = cfg.hidden_size, kv = cfg.kv_dim(),
                im = cfg.intermediate_size;
  const int64_t H = cfg.num_attention_heads, KV = cfg.num_key_value_heads, hd = cfg.head_dim();
  const int64_t T = b.seq_len;
  float* dxn = buf_->dxn->data();
  float* tmp_h = buf_->tmp_h->data();
  float* xn = buf_->xn->data();
  float* act = buf_->act->data();
  // MLP branch: out = hmid + down(swiglu(gate(xn2), up(xn2))). The swiglu backward may write
  // dgate over its dout input (element by element), so dg holds d(act) and then d(gate).
  // act and xn2 are made again from what the layer kept (the same kernels on the same inputs:
  // the forward's values), unless the layer was just recomputed and they are still there.
  float* dg = buf_->dg->data();
  float* du = buf_->du->data();
  if (!recomputed) device_->Swiglu(c.g->data(), c.u->data(), n * im, act);
  LoraBackward(l, 6, act, n, params, grads, seed, step, c.lora_h[6]->data(), dout, dg, false);
  device_->SwigluBackward(c.g->data(), c.u->data(), dg, n * im, dg, du);
  if (!recomputed)
    device_->RmsNorm(c.hmid->data(), L.post_norm->data(), n, h, cfg.rms_norm_eps, xn);
  LoraBackward(l, 4, xn, n, params, grads, seed, step, c.lora_h[4]->data(), dg, dxn, false);
  LoraBackward(l, 5, xn, n, params, grads, seed, step, c.lora_h[5]->data(), du, dxn, true);
  device_->RmsNormBackward(c.hmid->data(), L.post_norm->data(), c.inv2->data(), dxn, n, h, tmp_h);
  device_->AddInPlace(dout, tmp_h, n * h);  // dout is now d(hmid)
  // Attention branch: hmid = x + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))).
  LoraBackward(l, 3, c.ao->data(), n, params, grads, seed, step, c.lora_h[3]->data(), dout,
               buf_->dao->data(), false);
  const TrainAttentionDims dims{T, H, KV, hd};
  const int64_t attn_saved = device_->AttentionSavedFloats(dims);
  for (int64_t row = 0; row < b.rows; ++row) {
    device_->AttentionTrainBackward(
        c.q->data() + row * T * h, c.k->data() + row * T * kv, c.v->data() + row * T * kv,
        b.segments.data() + row * T, c.ao->data() + row * T * h, c.attn->data() + row * attn_saved,
        buf_->dao->data() + row * T * h, dims, buf_->dq->data() + row * T * h,
        buf_->dk->data() + row * T * kv, buf_->dv->data() + row * T * kv);
  }
  device_->Rope(buf_->dq->data(), b.positions.data(), n, H, hd, cfg.rope_theta, /*inverse=*/true);
  device_->Rope(buf_->dk->data(), b.positions.data(), n, KV, hd, cfg.rope_theta, /*inverse=*/true);
  device_->RmsNorm(x, L.input_norm->data(), n, h, cfg.rms_norm_eps, xn);  // xn1 again
  LoraBackward(l, 0, xn, n, params, grads, seed, step, c.lora_h[0]->data(), buf_->dq->data(), dxn,
               false);
  LoraBackward(l, 1, xn, n, params, grads, seed, step, c.lora_h[1]->data(), buf_->dk->data(), dxn,
               true);
  LoraBackward(l, 2, xn, n, params, grads, seed, step, c.lora_h[2]->data(), buf_->dv->data(), dxn,
               true);
  device_->RmsNormBackward(x, L.input_norm->data(), c.inv1->data(), dxn, n, h, dx);
  device_->AddInPlace(dx, dout, n * h);
}

absl::StatusOr<double> LoraTrainingGraph::ForwardBackward(const MicroBatch& b, const float* params,
                                                          float* grads, float loss_scale,
                                                          uint64_t seed, uint64_t step) {
  RETURN_IF_ERROR(Prepare(b));
  float* loss = buf_->loss->data();
  device_->Fill(loss, 1, 0.0f);
  Run(b, params, grads, loss_scale, seed, step, loss);
  float host = 0.0f;
  device_->CopyToHost(loss, 1, &host);
  return static_cast<double>(host);
}

absl::Status LoraTrainingGraph::ForwardBackward(const MicroBatch& b, const float* params,
                                                float* grads, float loss_scale, uint64_t seed,
                                                uint64_t step, float* loss_sum) {
  RETURN_IF_ERROR(Prepare(b));
  Run(b, params, grads, loss_scale, seed, step, loss_sum);
  return absl::OkStatus();
}

void LoraTrainingGraph::Run(const MicroBatch& b, const float* params, float* grads,
                            float loss_scale, uint64_t seed, uint64_t step, float* loss_sum) {
  const LlamaConfig& cfg = model_->config();
  const int64_t n = b.rows * b.seq_len, h = cfg.hidden_size, L = cfg.num_hidden_layers;
  const bool ckpt = options_.activation_checkpointing;
  device_->Embedding(model_->embed(), h, b.tokens.data(), n, buf_->xs[0]->data());
  for (int64_t l = 0; l < L; ++l) {
    LayerCache& c = buf_->caches[ckpt ? 0 : l];
    LayerForward(l, buf_->xs[l]->data(), b, params, true, seed, step, c, buf_->xs[l + 1]->data());
  }
  device_->RmsNorm(buf_->xs[L]->data(), model_->final_norm(), n, h, cfg.rms_norm_eps,
                   buf_->xf->data(), buf_->invf->data());
  float* logits = buf_->logits->data();
  device_->MatmulTransposed(model_->lm_head(), cfg.vocab_size, h, buf_->xf->data(), n, logits);
  device_->CrossEntropyForwardBackward(logits, b.targets.data(), n, cfg.vocab_size, loss_scale,
                                       loss_sum);
  // d(xf) = dlogits E (the head is frozen), then the final norm.
  float* d_cur = buf_->d_a->data();
  device_->Gemm(false, false, n, h, cfg.vocab_size, 1.0f, logits, cfg.vocab_size, model_->lm_head(),
                h, 0.0f, buf_->dxn->data(), h);
  device_->RmsNormBackward(buf_->xs[L]->data(), model_->final_norm(), buf_->invf->data(),
                           buf_->dxn->data(), n, h, d_cur);
  for (int64_t l = L - 1; l >= 0; --l) {
    LayerCache& c = buf_->caches[ckpt ? 0 : l];
    if (ckpt) {  // recompute this layer's activations (same dropout streams); output unused
      LayerForward(l, buf_->xs[l]->data(), b, params, true, seed, step, c, buf_->xf->data());
    }
    float* dx = d_cur == buf_->d_a->data() ? buf_->d_b->data() : buf_->d_a->data();
    LayerBackward(l, b, params, grads, seed, step, c, d_cur, dx, /*recomputed=*/ckpt);
    d_cur = dx;
  }
}

absl::StatusOr<double> LoraTrainingGraph::Loss(const MicroBatch& b, const float* params) {
  RETURN_IF_ERROR(Prepare(b));
  const LlamaConfig& cfg = model_->config();
  const int64_t n = b.rows * b.seq_len, h = cfg.hidden_size, L = cfg.num_hidden_layers;
  device_->Embedding(model_->embed(), h, b.tokens.data(), n, buf_->xs[0]->data());
  for (int64_t l = 0; l < L; ++l) {
    LayerCache& c = buf_->caches[options_.activation_checkpointing ? 0 : l];
    LayerForward(l, buf_->xs[l]->data(), b, params, false, 0, 0, c, buf_->xs[l + 1]->data());
  }
  device_->RmsNorm(buf_->xs[L]->data(), model_->final_norm(), n, h, cfg.rms_norm_eps,
                   buf_->xf->data());
  device_->MatmulTransposed(model_->lm_head(), cfg.vocab_size, h, buf_->xf->data(), n,
                            buf_->logits->data());
  return device_->CrossEntropyLoss(buf_->logits->data(), b.targets.data(), n, cfg.vocab_size);
}

}  // namespace qlorad
