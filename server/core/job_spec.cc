#include "server/core/job_spec.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/llama_weights.h"
#include "engine/lora.h"
#include "engine/lora_training.h"
#include "engine/lr_schedule.h"
#include "engine/status_macros.h"
#include "kernels/lora_dropout_body.h"
#include "server/core/tenants.h"

namespace qlorad::core {
namespace {

absl::Status Bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("hyperparameters.", field, ": ", what));
}

int64_t ModelContext(const v1::Model& model) {
  const int64_t ctx = model.architecture().max_position_embeddings();
  return ctx > 0 ? ctx : 2048;
}

}  // namespace

LlamaConfig ConfigFromModel(const v1::Model& model) {
  const v1::ModelArchitecture& a = model.architecture();
  LlamaConfig c;
  c.hidden_size = a.hidden_size();
  c.intermediate_size = a.intermediate_size();
  c.num_hidden_layers = a.num_hidden_layers();
  c.num_attention_heads = a.num_attention_heads();
  c.num_key_value_heads = a.num_key_value_heads();
  c.vocab_size = a.vocab_size();
  c.max_position_embeddings = ModelContext(model);
  c.tie_word_embeddings = a.tie_word_embeddings();
  c.rope_theta = a.rope_theta();
  c.rms_norm_eps = a.rms_norm_eps();
  return c;
}

v1::Limits LimitsFor(const ServerLimits& limits, const v1::Model* model) {
  v1::Limits l;
  l.set_max_rank(limits.max_rank);
  l.set_max_seq_len(model ? std::min(limits.max_seq_len, ModelContext(*model))
                          : limits.max_seq_len);
  l.set_max_batch_size(limits.max_batch_size);
  for (const char* m : kLinearModuleNames) l.add_target_modules(m);
  return l;
}

absl::StatusOr<v1::Hyperparameters> ResolveHyperparameters(const v1::Hyperparameters& req,
                                                           const v1::Model& model,
                                                           const ServerLimits& limits,
                                                           bool has_validation_set) {
  v1::Hyperparameters r;
  const int64_t max_seq = std::min(limits.max_seq_len, ModelContext(model));

  r.set_rank(req.has_rank() ? req.rank() : 16);
  if (r.rank() < 1 || r.rank() > limits.max_rank) {
    return Bad("rank", absl::StrCat("must be in [1, ", limits.max_rank, "], got ", r.rank()));
  }
  // Value ranges the engine keeps (TrainerOptions::Validate) are checked last, on the whole;
  // here the defaults, this server's limits and what needs the model or the datasets.
  r.set_alpha(req.has_alpha() ? req.alpha() : 2.0f * static_cast<float>(r.rank()));
  r.set_dropout(req.has_dropout() ? req.dropout() : 0.05f);

  const std::string targets =
      req.target_modules().empty() ? "all-linear" : absl::StrJoin(req.target_modules(), ",");
  auto parsed = ParseTargetModules(targets);
  if (!parsed.ok()) return Bad("target_modules", std::string(parsed.status().message()));
  for (const std::string& m : *parsed) r.add_target_modules(m);

  r.set_learning_rate(req.has_learning_rate() ? req.learning_rate() : 2e-4);
  r.set_schedule(req.has_schedule() ? req.schedule() : "cosine");
  if (!ParseLrSchedule(r.schedule()).ok())
    return Bad("schedule",
               absl::StrCat("must be cosine, linear or constant, got '", r.schedule(), "'"));
  r.set_warmup_ratio(req.has_warmup_ratio() ? req.warmup_ratio() : 0.03);

  if (req.has_epochs() && req.has_max_steps())
    return Bad("max_steps", "give epochs or max_steps, not both");
  r.set_max_steps(req.has_max_steps() ? req.max_steps() : 0);
  if (r.max_steps() < 0 || r.max_steps() > limits.max_total_steps)
    return Bad("max_steps",
               absl::StrCat("must be in [1, ", limits.max_total_steps, "], got ", r.max_steps()));
  if (req.has_max_steps() && r.max_steps() == 0) return Bad("max_steps", "must be at least 1");
  r.set_epochs(req.has_epochs() ? req.epochs() : (r.max_steps() > 0 ? 0 : 1));
  if (req.has_epochs() && r.epochs() < 1)
    return Bad("epochs", absl::StrCat("must be at least 1, got ", r.epochs()));

  r.set_batch_size(req.has_batch_size() ? req.batch_size() : 8);
  if (r.batch_size() < 1 || r.batch_size() > limits.max_batch_size) {
    return Bad("batch_size",
               absl::StrCat("must be in [1, ", limits.max_batch_size, "], got ", r.batch_size()));
  }
  r.set_grad_accum(req.has_grad_accum() ? req.grad_accum() : 1);
  r.set_seq_len(req.has_seq_len() ? req.seq_len() : std::min<int64_t>(512, max_seq));
  if (r.seq_len() < 2 || r.seq_len() > max_seq) {
    return Bad("seq_len", absl::StrCat("must be in [2, ", max_seq, "] for model '", model.name(),
                                       "', got ", r.seq_len()));
  }
  r.set_weight_decay(req.has_weight_decay() ? req.weight_decay() : 0.0);
  // A seed is always recorded, so that a job can be repeated exactly.
  r.set_seed(req.has_seed() ? req.seed() : (std::random_device{}() & 0x7FFFFFFF));
  r.set_packing(req.has_packing() && req.packing());
  r.set_eval_every(req.has_eval_every() ? req.eval_every() : 0);
  if (r.eval_every() > 0 && !has_validation_set)
    return Bad("eval_every", "needs a validation_dataset");
  r.set_early_stopping_patience(req.has_early_stopping_patience() ? req.early_stopping_patience()
                                                                  : 0);
  if (r.early_stopping_patience() > 0 && !has_validation_set)
    return Bad("early_stopping_patience", "needs a validation_dataset");
  r.set_max_grad_norm(req.has_max_grad_norm() ? req.max_grad_norm() : 1.0);
  r.set_use_rslora(req.has_use_rslora() && req.use_rslora());
  r.set_gradient_checkpointing(!req.has_gradient_checkpointing() || req.gradient_checkpointing());
  RETURN_IF_ERROR(TrainerOptionsFrom(r).Validate(
      [](const std::string& field) { return absl::StrCat("hyperparameters.", field); }));
  return r;
}

TrainerOptions TrainerOptionsFrom(const v1::Hyperparameters& r) {
  TrainerOptions o;
  o.lora.rank = r.rank();
  o.lora.alpha = r.alpha();
  o.lora.dropout = r.dropout();
  o.lora.target_modules.assign(r.target_modules().begin(), r.target_modules().end());
  o.lora.use_rslora = r.use_rslora();
  o.activation_checkpointing = r.gradient_checkpointing();
  o.learning_rate = r.learning_rate();
  o.schedule = ParseLrSchedule(r.schedule()).value_or(LrSchedule::kCosine);
  o.warmup_ratio = r.warmup_ratio();
  o.epochs = r.epochs();
  o.max_steps = r.max_steps();
  o.batch_size = r.batch_size();
  o.grad_accum = r.grad_accum();
  o.max_grad_norm = r.max_grad_norm();
  o.weight_decay = r.weight_decay();
  o.seed = r.seed();
  o.eval_every = r.eval_every();
  o.early_stopping_patience = r.early_stopping_patience();
  return o;
}

RowOptions RowOptionsFrom(const v1::Hyperparameters& r) { return {r.seq_len(), r.packing()}; }

int64_t CpuAttentionSavedPerRow(const LlamaConfig& c, const v1::Hyperparameters& r) {
  return AttentionProbabilityFloats(
      {r.seq_len(), c.num_attention_heads, c.num_key_value_heads, c.head_dim()});
}

int64_t JobMemoryBytes(const LlamaConfig& c, const v1::Hyperparameters& r,
                       int64_t attention_saved_per_row, bool bf16_activations) {
  LoraConfig lora = TrainerOptionsFrom(r).lora;
  const LoraLayout layout(c, lora);
  const int64_t params = layout.num_params();
  // The training graph's own buffer list.
  const int64_t activations =
      LoraTrainingGraph::ActivationBytes(c, lora.rank, r.gradient_checkpointing(), r.batch_size(),
                                         r.seq_len(), attention_saved_per_row, bf16_activations);
  // The largest layer's dequantization workspace, and the partial sums of dA, one set per block
  // of tokens, that a GPU's fused LoRA dropout keeps (kernels/cuda/lora_dropout.h's
  // LoraDropoutPartialFloats, from the same block count).
  const int64_t widest = std::max(c.hidden_size, c.intermediate_size);
  const int64_t tokens = r.batch_size() * r.seq_len();
  const int64_t workspace =
      widest * widest * 4 + kernels::lora::GradTokenBlocks(tokens) * lora.rank * widest * 4;
  return params * 20 + activations + workspace;
}

std::string RequestFingerprint(const v1::CreateJobRequest& request) {
  std::string bytes;
  google::protobuf::io::StringOutputStream out(&bytes);
  google::protobuf::io::CodedOutputStream coded(&out);
  coded.SetSerializationDeterministic(true);
  request.SerializeToCodedStream(&coded);
  coded.Trim();
  return Sha256Hex(bytes);
}

}  // namespace qlorad::core
