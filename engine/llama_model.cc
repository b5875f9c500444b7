#include "engine/llama_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace qlorad {

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(
    LlamaWeights weights, Device* device, const ModelOptions& options,
    std::map<std::string, Nf4Tensor> prequantized) {
  auto m = std::unique_ptr<LlamaModel>(new LlamaModel());
  m->config_ = weights.config;
  m->device_ = device;
  m->quantized_ = options.quantize || !prequantized.empty();
  const LlamaConfig& c = m->config_;
  // Linear weights may be absent from `weights` when they come prequantized or are made random.
  const bool random_linears = options.random_linear_scale > 0.0f;
  for (const TensorSlot& slot : TensorSlots(weights)) {
    if (slot.is_linear && (prequantized.count(slot.name) || (random_linears && slot.data->empty())))
      continue;
    int64_t n = 1;
    for (int64_t d : slot.shape) n *= d;
    if (static_cast<int64_t>(slot.data->size()) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", slot.name, " has ", slot.data->size(), " values, expected ", n));
    }
  }
  auto place_linear = [&](const std::string& module_path, std::vector<float>& values, int64_t out,
                          int64_t in,
                          uint64_t stream) -> absl::StatusOr<std::unique_ptr<DeviceLinear>> {
    const std::string name = module_path + ".weight";
    m->linear_params_ += out * in;
    std::unique_ptr<DeviceLinear> placed;
    if (auto it = prequantized.find(name); it != prequantized.end()) {
      if (it->second.numel != out * in) {
        return absl::InvalidArgumentError(absl::StrCat(
            "prequantized ", name, " has ", it->second.numel, " values, expected ", out * in));
      }
      ASSIGN_OR_RETURN(placed, device->UploadLinear(&it->second, nullptr, out, in));
    } else if (random_linears && values.empty()) {
      ASSIGN_OR_RETURN(placed, device->RandomLinear(out, in, options.random_linear_seed, stream,
                                                    options.random_linear_scale, options.nf4));
      m->quantized_ = true;  // RandomLinear quantizes
    } else if (options.quantize) {
      ASSIGN_OR_RETURN(placed, device->QuantizeLinear(values, out, in, options.nf4));
    } else {
      ASSIGN_OR_RETURN(placed, device->UploadLinear(nullptr, &values, out, in));
    }
    m->linear_bytes_ += placed->bytes();
    std::vector<float>().swap(values);  // free the float32 copy as we go
    return placed;
  };
  ASSIGN_OR_RETURN(m->embed_, device->UploadF32(weights.embed_tokens));
  ASSIGN_OR_RETURN(m->norm_, device->UploadF32(weights.norm));
  if (!c.tie_word_embeddings) {
    ASSIGN_OR_RETURN(m->lm_head_, device->UploadF32(weights.lm_head));
  }
  m->layers_.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LlamaLayerWeights& src = weights.layers[l];
    Layer& dst = m->layers_[l];
    ASSIGN_OR_RETURN(dst.input_norm, device->UploadF32(src.input_layernorm));
    ASSIGN_OR_RETURN(dst.post_norm, device->UploadF32(src.post_attention_layernorm));
    for (int mod = 0; mod < 7; ++mod) {
      const auto [in, out] = LinearShape(c, mod);
      std::vector<float>* values[7] = {&src.q_proj,    &src.k_proj,  &src.v_proj,   &src.o_proj,
                                       &src.gate_proj, &src.up_proj, &src.down_proj};
      ASSIGN_OR_RETURN(dst.linear[mod], place_linear(LinearModulePath(l, kLinearModuleNames[mod]),
                                                     *values[mod], out, in, 1 + 7 * l + mod));
    }
  }
  return m;
}

absl::StatusOr<std::unique_ptr<LlamaModel::KvCache>> LlamaModel::NewKvCache(
    int64_t capacity) const {
  if (capacity <= 0) return absl::InvalidArgumentError("KV cache capacity must be positive");
  auto cache = std::make_unique<KvCache>();
  cache->capacity_ = capacity;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    ASSIGN_OR_RETURN(auto k, device_->Alloc(capacity * config_.kv_dim()));
    ASSIGN_OR_RETURN(auto v, device_->Alloc(capacity * config_.kv_dim()));
    cache->k_.push_back(std::move(k));
    cache->v_.push_back(std::move(v));
  }
  return cache;
}

const float* LlamaModel::lm_head() const {
  return config_.tie_word_embeddings ? embed_->data() : lm_head_->data();
}

void LlamaModel::ApplyLinear(int64_t layer, int module, const float* x, int64_t tokens, float* y,
                             const LoraWeights* lora, float* scratch) {
  const DeviceLinear& w = *layers_[layer].linear[module];
  device_->Linear(w, x, tokens, y);
  const LoraSlot* slot = lora != nullptr ? lora->layout->Find(layer, module) : nullptr;
  if (slot == nullptr) return;
  const int64_t r = lora->rank;
  // h = x A^T [tokens, r]; y += s h B^T.
  device_->Gemm(false, true, tokens, r, slot->in, 1.0f, x, slot->in, lora->params + slot->a_offset,
                slot->in, 0.0f, scratch, r);
  device_->Gemm(false, true, tokens, slot->out, r, lora->scale, scratch, r,
                lora->params + slot->b_offset, r, 1.0f, y, slot->out);
}

absl::Status LlamaModel::Forward(const std::vector<int32_t>& tokens, KvCache* cache,
                                 bool all_logits, std::vector<float>* logits,
                                 const LoraWeights* lora) {
  const LlamaConfig& c = config_;
  const int64_t T = static_cast<int64_t>(tokens.size());
  if (T == 0) return absl::InvalidArgumentError("no tokens to run");
  if (cache->length_ + T > cache->capacity_) {
    return absl::OutOfRangeError(absl::StrCat(
        "sequence of ", cache->length_ + T, " tokens exceeds the KV cache of ", cache->capacity_));
  }
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[t], " at position ", t,
                                                     " is outside the vocabulary of ",
                                                     c.vocab_size));
    }
  }
  const int64_t h = c.hidden_size, kv = c.kv_dim(), im = c.intermediate_size, hd = c.head_dim();
  const int64_t pos0 = cache->length_;
  std::vector<int32_t> positions(T);
  std::iota(positions.begin(), positions.end(), static_cast<int32_t>(pos0));

  ASSIGN_OR_RETURN(auto x, device_->Alloc(T * h));
  ASSIGN_OR_RETURN(auto xn, device_->Alloc(T * h));
  ASSIGN_OR_RETURN(auto q, device_->Alloc(T * h));
  ASSIGN_OR_RETURN(auto attn, device_->Alloc(T * h));
  ASSIGN_OR_RETURN(auto proj, device_->Alloc(T * h));
  ASSIGN_OR_RETURN(auto gate, device_->Alloc(T * im));
  ASSIGN_OR_RETURN(auto up, device_->Alloc(T * im));
  ASSIGN_OR_RETURN(auto lora_scratch, device_->Alloc(lora != nullptr ? T * lora->rank : 0));
  float* ls = lora_scratch->data();

  device_->Embedding(embed_->data(), h, tokens.data(), T, x->data());
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = layers_[l];
    float* kc = cache->k_[l]->data() + pos0 * kv;
    float* vc = cache->v_[l]->data() + pos0 * kv;
    device_->RmsNorm(x->data(), L.input_norm->data(), T, h, c.rms_norm_eps, xn->data());
    ApplyLinear(l, 0, xn->data(), T, q->data(), lora, ls);
    ApplyLinear(l, 1, xn->data(), T, kc, lora, ls);
    ApplyLinear(l, 2, xn->data(), T, vc, lora, ls);
    device_->Rope(q->data(), positions.data(), T, c.num_attention_heads, hd, c.rope_theta);
    device_->Rope(kc, positions.data(), T, c.num_key_value_heads, hd, c.rope_theta);
    AttentionDims dims{T, pos0 + T, pos0, c.num_attention_heads, c.num_key_value_heads, hd};
    device_->CausalAttention(q->data(), cache->k_[l]->data(), cache->v_[l]->data(), dims,
                             attn->data());
    ApplyLinear(l, 3, attn->data(), T, proj->data(), lora, ls);
    device_->AddInPlace(x->data(), proj->data(), T * h);
    device_->RmsNorm(x->data(), L.post_norm->data(), T, h, c.rms_norm_eps, xn->data());
    ApplyLinear(l, 4, xn->data(), T, gate->data(), lora, ls);
    ApplyLinear(l, 5, xn->data(), T, up->data(), lora, ls);
    device_->Swiglu(gate->data(), up->data(), T * im, gate->data());
    ApplyLinear(l, 6, gate->data(), T, proj->data(), lora, ls);
    device_->AddInPlace(x->data(), proj->data(), T * h);
  }
  cache->length_ += T;
  const int64_t rows = all_logits ? T : 1;
  const float* last = x->data() + (T - rows) * h;
  device_->RmsNorm(last, norm_->data(), rows, h, c.rms_norm_eps, xn->data());
  // A failure the layers met (a scratch buffer refused) is this call's: taken here, not left on
  // the device for the next call, where the allocation below returns early. No wait while sound.
  RETURN_IF_ERROR(device_->TakeError());
  ASSIGN_OR_RETURN(auto out, device_->Alloc(rows * c.vocab_size));
  device_->MatmulTransposed(lm_head(), c.vocab_size, h, xn->data(), rows, out->data());
  logits->resize(rows * c.vocab_size);
  device_->CopyToHost(out->data(), rows * c.vocab_size, logits->data());
  return device_->TakeError();  // a failed device's logits are NaN: never sampled from
}

absl::StatusOr<double> MeanNll(LlamaModel& model, const std::vector<int32_t>& tokens,
                               const LoraWeights* lora) {
  if (tokens.size() < 2) return absl::InvalidArgumentError("need at least two tokens to score");
  ASSIGN_OR_RETURN(auto cache, model.NewKvCache(static_cast<int64_t>(tokens.size())));
  std::vector<float> logits;
  RETURN_IF_ERROR(model.Forward(tokens, cache.get(), /*all_logits=*/true, &logits, lora));
  const int64_t V = model.config().vocab_size;
  double total = 0.0;
  for (size_t t = 0; t + 1 < tokens.size(); ++t) {
    const float* row = logits.data() + t * V;
    const float mx = *std::max_element(row, row + V);
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(row[i]) - mx);
    total += (std::log(sum) + mx) - row[tokens[t + 1]];
  }
  return total / static_cast<double>(tokens.size() - 1);
}

}  // namespace qlorad
