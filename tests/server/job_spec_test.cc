#include "server/core/job_spec.h"

#include "gtest/gtest.h"

namespace qlorad::core {
namespace {

v1::Model TinyModel() {
  v1::Model m;
  m.set_name("tiny");
  auto* a = m.mutable_architecture();
  a->set_hidden_size(64);
  a->set_intermediate_size(172);
  a->set_num_hidden_layers(5);
  a->set_num_attention_heads(8);
  a->set_num_key_value_heads(4);
  a->set_vocab_size(512);
  a->set_max_position_embeddings(512);
  return m;
}

TEST(JobSpecTest, DefaultsAreTheEnginesAndEveryValueIsRecorded) {
  auto r = ResolveHyperparameters({}, TinyModel(), {}, false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rank(), 16);
  EXPECT_FLOAT_EQ(r->alpha(), 32.0f);
  EXPECT_FLOAT_EQ(r->dropout(), 0.05f);
  EXPECT_EQ(r->target_modules_size(), 7);
  EXPECT_DOUBLE_EQ(r->learning_rate(), 2e-4);
  EXPECT_EQ(r->schedule(), "cosine");
  EXPECT_EQ(r->epochs(), 1);
  EXPECT_EQ(r->max_steps(), 0);
  EXPECT_EQ(r->batch_size(), 8);
  EXPECT_EQ(r->seq_len(), 512);  // min(512, the model's context)
  EXPECT_TRUE(r->has_seed());
  EXPECT_DOUBLE_EQ(r->max_grad_norm(), 1.0);
  EXPECT_TRUE(r->gradient_checkpointing());
}

TEST(JobSpecTest, ErrorsNameTheField) {
  struct Case {
    std::function<void(v1::Hyperparameters&)> set;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](auto& h) { h.set_rank(0); }, "hyperparameters.rank"},
      {[](auto& h) { h.set_rank(257); }, "hyperparameters.rank"},
      {[](auto& h) { h.set_learning_rate(-1); }, "hyperparameters.learning_rate"},
      {[](auto& h) { h.set_dropout(1.0f); }, "hyperparameters.dropout"},
      {[](auto& h) { h.set_alpha(1e38f); }, "hyperparameters.alpha"},  // inf once exported
      {[](auto& h) { h.set_weight_decay(1e30); }, "hyperparameters.weight_decay"},
      {[](auto& h) { h.set_grad_accum(0); }, "hyperparameters.grad_accum"},
      {[](auto& h) { h.set_max_grad_norm(-1); }, "hyperparameters.max_grad_norm"},
      {[](auto& h) { h.set_epochs(0); }, "hyperparameters.epochs"},
      {[](auto& h) { h.set_epochs(1001); }, "hyperparameters.epochs"},
      {[](auto& h) { h.set_schedule("step"); }, "hyperparameters.schedule"},
      {[](auto& h) { h.add_target_modules("qq_proj"); }, "hyperparameters.target_modules"},
      {[](auto& h) { h.set_seq_len(513); }, "hyperparameters.seq_len"},
      {[](auto& h) { h.set_batch_size(0); }, "hyperparameters.batch_size"},
      {[](auto& h) {
         h.set_epochs(2);
         h.set_max_steps(5);
       },
       "hyperparameters.max_steps"},
      {[](auto& h) { h.set_early_stopping_patience(2); },
       "hyperparameters.early_stopping_patience"},
      {[](auto& h) { h.set_eval_every(10); }, "hyperparameters.eval_every"},
  };
  for (const Case& c : cases) {
    v1::Hyperparameters h;
    c.set(h);
    auto r = ResolveHyperparameters(h, TinyModel(), {}, false);
    ASSERT_FALSE(r.ok()) << c.field;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(std::string(r.status().message()).rfind(c.field + ":", 0), 0u) << r.status();
  }
}

TEST(JobSpecTest, MemoryEstimateGrowsWithBatchAndRank) {
  auto small = ResolveHyperparameters({}, TinyModel(), {}, false);
  v1::Hyperparameters big_req;
  big_req.set_batch_size(32);
  big_req.set_rank(64);
  auto big = ResolveHyperparameters(big_req, TinyModel(), {}, false);
  ASSERT_TRUE(small.ok() && big.ok());
  const LlamaConfig c = ConfigFromModel(TinyModel());
  EXPECT_GT(JobMemoryBytes(c, *big, CpuAttentionSavedPerRow(c, *big), false),
            3 * JobMemoryBytes(c, *small, CpuAttentionSavedPerRow(c, *small), false));
  // The LoRA state alone: r (in + out) per adapted linear, 20 bytes a parameter.
  EXPECT_GT(JobMemoryBytes(c, *small, CpuAttentionSavedPerRow(c, *small), false),
            20 * 16 * (64 + 64) * 5);
}

// A Llama-7B-shaped job at seq 2048. A kept layer holds, per token, 2 + 3 h + 2 kv + 2 im +
// 7 r floats plus the CPU's attention probabilities (heads x seq): 108,286 floats, 0.887 GB for
// 2048 tokens. Keeping all 32 layers: 28.4 GB, with the 33 layer inputs (1.11 GB), the logits
// and the one-layer gradient buffers (0.96 GB), the LoRA state (40M parameters, 0.8 GB) and
// the dequantization workspace (0.48 GB): 31.7 GB. Checkpointing keeps one layer: 4.2 GB.
TEST(JobSpecTest, GradientCheckpointingShrinksTheMemoryEstimate) {
  v1::Model m = TinyModel();
  auto* a = m.mutable_architecture();
  a->set_hidden_size(4096);
  a->set_intermediate_size(11008);
  a->set_num_hidden_layers(32);
  a->set_num_attention_heads(32);
  a->set_num_key_value_heads(32);
  a->set_vocab_size(32000);
  a->set_max_position_embeddings(4096);
  v1::Hyperparameters h;
  h.set_seq_len(2048);
  h.set_batch_size(1);
  auto ckpt = ResolveHyperparameters(h, m, {}, false);
  h.set_gradient_checkpointing(false);
  auto full = ResolveHyperparameters(h, m, {}, false);
  ASSERT_TRUE(ckpt.ok() && full.ok());
  EXPECT_FALSE(full->gradient_checkpointing());
  const LlamaConfig c = ConfigFromModel(m);
  const int64_t gb = 1000 * 1000 * 1000;
  auto on_cpu = [&](const v1::Hyperparameters& r) {
    return JobMemoryBytes(c, r, CpuAttentionSavedPerRow(c, r), false);
  };
  EXPECT_GT(on_cpu(*full), 31 * gb);
  EXPECT_LT(on_cpu(*full), 32 * gb);
  EXPECT_GT(on_cpu(*ckpt), 4 * gb);
  EXPECT_LT(on_cpu(*ckpt), gb * 9 / 2);
  // On a flash-attention GPU a row keeps one log-sum-exp per (head, query), 32 x 2048 floats,
  // instead of the 512 MiB of probabilities: the 32 kept layers hold 11.2 GB and the job
  // 14.5 GB.
  const int64_t flash = JobMemoryBytes(c, *full, 32 * 2048, false);
  EXPECT_GT(flash, 14 * gb);
  EXPECT_LT(flash, 15 * gb);
  // With bf16 activations (a GPU's default), per token of the 2048: each of the 32 layers keeps
  // 46,592 bf16 values (its input, q, k, v, attention output, residual, gate, up) and 146
  // float32 ones (1/rms twice, x A^T for seven modules at r 16, 32 log-sum-exps): 93,768 bytes,
  // 6.145 GB in all. Besides them, in bf16 the last layer's output, one layer's norm and SwiGLU
  // outputs and ten gradient buffers (10 x 4,096 + 3 x 11,008 values: 148 KB a token), and in
  // float32 the head and scratch (the final norm's output and its float32 input, 1/rms, 32,000
  // logits, dh, the 11,008-wide LoRA dropout scratch: 205 KB a token): 0.72 GB. The 39,976,960
  // LoRA parameters at 20 bytes (0.80 GB), the largest layer's dequantization workspace
  // (11,008^2 floats, 0.485 GB) and the dA partial sums (32 blocks of 64 tokens, 16 x 11,008
  // floats each: 0.023 GB): 8.17 GB.
  const int64_t flash_bf16 = JobMemoryBytes(c, *full, 32 * 2048, /*bf16_activations=*/true);
  EXPECT_GT(flash_bf16, gb * 81 / 10);
  EXPECT_LT(flash_bf16, gb * 82 / 10);
  EXPECT_TRUE(TrainerOptionsFrom(*ckpt).activation_checkpointing);
  EXPECT_FALSE(TrainerOptionsFrom(*full).activation_checkpointing);
}

TEST(JobSpecTest, FingerprintIgnoresMapOrderButNotValues) {
  v1::CreateJobRequest a, b;
  (*a.mutable_labels())["x"] = "1";
  (*a.mutable_labels())["y"] = "2";
  (*b.mutable_labels())["y"] = "2";
  (*b.mutable_labels())["x"] = "1";
  EXPECT_EQ(RequestFingerprint(a), RequestFingerprint(b));
  b.mutable_hyperparameters()->set_rank(4);
  EXPECT_NE(RequestFingerprint(a), RequestFingerprint(b));
}

}  // namespace
}  // namespace qlorad::core
