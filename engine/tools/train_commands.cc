// qlora-engine train | eval | merge.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/dataset.h"
#include "engine/device.h"
#include "engine/device_adapter.h"
#include "engine/device_select.h"
#include "engine/evaluate.h"
#include "engine/hf_model_io.h"
#include "engine/llama_model.h"
#include "engine/mapped_file.h"
#include "engine/model_source.h"
#include "engine/peft_adapter.h"
#include "engine/status_macros.h"
#include "engine/tools/args.h"
#include "engine/tools/commands.h"
#include "engine/tools/output_path.h"
#include "engine/trainer.h"
#include "nlohmann/json.hpp"

namespace qlorad {
namespace fs = std::filesystem;
namespace {

std::string Clock(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds));
  return absl::StrFormat("%02d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
}

absl::StatusOr<std::vector<TokenizedExample>> ReadExamples(const std::string& path,
                                                           const Tokenizer& tok) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return TokenizeJsonl(text, tok, path);
}

struct LoadedModel {
  ModelSource source;  // tokenizer and original config
  std::unique_ptr<Device> device;
  std::unique_ptr<LlamaModel> model;
};

// The model on the device `--device` names (default cpu); an error names the flag.
absl::StatusOr<std::unique_ptr<Device>> DeviceFromArgs(const Args& a, int64_t threads) {
  auto device = OpenDevice(a.Get("device", "cpu"), static_cast<int>(threads));
  if (!device.ok()) {
    return absl::Status(device.status().code(),
                        absl::StrCat("--device: ", device.status().message()));
  }
  return device;
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path, bool fp32, const Args& a,
                                      int64_t threads) {
  LoadedModel m;
  ASSIGN_OR_RETURN(m.source, OpenModelSource(path));
  if (!m.source.tokenizer)
    return absl::FailedPreconditionError(absl::StrCat(path, " has no tokenizer.model"));
  if (fp32 && !m.source.prequantized.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " holds 4-bit weights; --fp32 needs the original model"));
  }
  ASSIGN_OR_RETURN(m.device, DeviceFromArgs(a, threads));
  ModelOptions mo;
  mo.quantize = !fp32;
  LlamaWeights weights = m.source.weights;  // keep the config in `source`
  ASSIGN_OR_RETURN(m.model, LlamaModel::Create(std::move(weights), m.device.get(), mo,
                                               std::move(m.source.prequantized)));
  m.source.weights = LlamaWeights{m.source.weights.config, {}, {}, {}, {}};
  return m;
}

// The flag that sets a TrainerOptions field, for its errors ("--lr: must be in (0, 1], ...").
std::string FlagOf(const std::string& field) {
  if (field == "learning_rate") return "--lr";
  if (field == "target_modules") return "--targets";
  if (field == "early_stopping_patience") return "--early-stopping";
  std::string flag = "--" + field;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

}  // namespace

absl::Status TrainCommand(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args a, Args::Parse(argc, argv,
                                       {"model",
                                        "data",
                                        "valid",
                                        "out",
                                        "rank",
                                        "alpha",
                                        "dropout",
                                        "targets",
                                        "lr",
                                        "schedule",
                                        "warmup-ratio",
                                        "epochs",
                                        "max-steps",
                                        "batch-size",
                                        "grad-accum",
                                        "seq-len",
                                        "seed",
                                        "resume",
                                        "eval-every",
                                        "early-stopping",
                                        "checkpoint-every",
                                        "checkpoint-dir",
                                        "weight-decay",
                                        "max-grad-norm",
                                        "threads",
                                        "device"},
                                       {"packing", "rslora", "fp32", "activation-checkpointing",
                                        "no-activation-checkpointing", "export-rslora-as-plain"}));
  ASSIGN_OR_RETURN(std::string model_path, a.Required("model"));
  ASSIGN_OR_RETURN(std::string data_path, a.Required("data"));
  ASSIGN_OR_RETURN(std::string out, a.Required("out"));
  RETURN_IF_ERROR(CheckOutput(out, {model_path, a.Get("resume", "")}));
  // Checked now, not at the first checkpoint (hours in).
  const std::string checkpoint_dir =
      a.Get("checkpoint-dir", (fs::path(out) / "checkpoint").string());
  RETURN_IF_ERROR(Trainer::CanSaveCheckpointIn(checkpoint_dir));
  if (a.Has("epochs") && a.Has("max-steps"))
    return absl::InvalidArgumentError("give --epochs or --max-steps, not both");
  TrainerOptions o;
  ASSIGN_OR_RETURN(o.lora.rank, a.Integer("rank", 16));
  ASSIGN_OR_RETURN(double alpha, a.Number("alpha", 2.0 * o.lora.rank));
  ASSIGN_OR_RETURN(double dropout, a.Number("dropout", 0.05));
  o.lora.alpha = static_cast<float>(alpha);
  o.lora.dropout = static_cast<float>(dropout);
  o.lora.use_rslora = a.Has("rslora");
  ASSIGN_OR_RETURN(o.lora.target_modules, ParseTargetModules(a.Get("targets", "all-linear")));
  ASSIGN_OR_RETURN(o.learning_rate, a.Number("lr", 2e-4));
  ASSIGN_OR_RETURN(o.schedule, ParseLrSchedule(a.Get("schedule", "cosine")));
  ASSIGN_OR_RETURN(o.warmup_ratio, a.Number("warmup-ratio", 0.03));
  ASSIGN_OR_RETURN(o.epochs, a.Integer("epochs", 1));
  ASSIGN_OR_RETURN(o.max_steps, a.Integer("max-steps", 0));
  // 0 is how the options say "not given"; given, each must be at least 1.
  if (a.Has("epochs") && o.epochs < 1)
    return absl::InvalidArgumentError("--epochs: must be at least 1");
  if (a.Has("max-steps") && o.max_steps < 1)
    return absl::InvalidArgumentError("--max-steps: must be at least 1");
  ASSIGN_OR_RETURN(o.batch_size, a.Integer("batch-size", 8));
  ASSIGN_OR_RETURN(o.grad_accum, a.Integer("grad-accum", 1));
  ASSIGN_OR_RETURN(o.eval_every, a.Integer("eval-every", 0));
  ASSIGN_OR_RETURN(o.early_stopping_patience, a.Integer("early-stopping", 0));
  // As the daemon's jobs: evaluations need a validation set, and were dropped without one.
  for (const auto& [flag, value] : {std::pair{"eval-every", o.eval_every},
                                    std::pair{"early-stopping", o.early_stopping_patience}}) {
    if (value > 0 && !a.Has("valid"))
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " needs --valid"));
  }
  ASSIGN_OR_RETURN(o.weight_decay, a.Number("weight-decay", 0.0));
  ASSIGN_OR_RETURN(o.max_grad_norm, a.Number("max-grad-norm", 1.0));
  // On by default, as the daemon's jobs (gradient_checkpointing): a run that fits there fits here.
  if (a.Has("activation-checkpointing") && a.Has("no-activation-checkpointing")) {
    return absl::InvalidArgumentError(
        "give --activation-checkpointing or --no-activation-checkpointing, not both");
  }
  o.activation_checkpointing = !a.Has("no-activation-checkpointing");
  // A seed is always recorded: the user's, the resumed checkpoint's, or a fresh one printed
  // with the run.
  ASSIGN_OR_RETURN(int64_t seed, a.Integer("seed", -1));
  if (a.Has("seed") && seed < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seed: must be >= 0 (leave it out for a fresh one), got ", seed));
  }
  if (seed < 0 && a.Has("resume")) {
    ASSIGN_OR_RETURN(const uint64_t recorded, Trainer::CheckpointSeed(a.Get("resume", "")));
    seed = static_cast<int64_t>(recorded);  // written from a non-negative int64 seed
  }
  o.seed = seed >= 0 ? static_cast<uint64_t>(seed) : (std::random_device{}() & 0x7FFFFFFF);
  ASSIGN_OR_RETURN(int64_t checkpoint_every, a.Integer("checkpoint-every", 0));
  ASSIGN_OR_RETURN(int64_t threads, a.Integer("threads", 0));
  for (const auto& [flag, value] :
       {std::pair{"checkpoint-every", checkpoint_every}, std::pair{"threads", threads}}) {
    if (value < 0)
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": must be >= 0, got ", value));
  }
  RETURN_IF_ERROR(o.Validate(FlagOf));

  ASSIGN_OR_RETURN(LoadedModel m, LoadModel(model_path, a.Has("fp32"), a, threads));
  const LlamaConfig& config = m.model->config();
  ASSIGN_OR_RETURN(int64_t seq_len,
                   a.Integer("seq-len", std::min<int64_t>(512, config.max_position_embeddings)));
  // Checked before the data is read and tokenized (minutes for a large set).
  if (seq_len < 2 || seq_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--seq-len: must be in [2, ",
                                                   config.max_position_embeddings,
                                                   "] for this model, got ", seq_len));
  }
  RowOptions ro{seq_len, a.Has("packing")};
  ASSIGN_OR_RETURN(auto train_examples, ReadExamples(data_path, *m.source.tokenizer));
  ASSIGN_OR_RETURN(auto train_rows, BuildRows(train_examples, ro, data_path));
  std::vector<TrainingRow> valid_rows;
  std::vector<TokenizedExample> valid_examples;
  if (a.Has("valid")) {
    const std::string valid_path = a.Get("valid", "");
    ASSIGN_OR_RETURN(valid_examples, ReadExamples(valid_path, *m.source.tokenizer));
    ASSIGN_OR_RETURN(valid_rows, BuildRows(valid_examples, ro, valid_path));
  }
  ASSIGN_OR_RETURN(auto trainer,
                   Trainer::Create(m.model.get(), std::move(train_rows), std::move(valid_rows), o));
  if (a.Has("resume")) RETURN_IF_ERROR(trainer->LoadCheckpoint(a.Get("resume", "")));
  std::fprintf(stderr,
               "qlora-engine train: %s base (%s), %zu examples, %lld steps, LoRA r=%lld alpha=%g "
               "dropout=%g on %zu "
               "module kinds: %lld trainable parameters, seed %llu%s\n",
               m.model->quantized() ? "NF4+DQ" : "fp32", model_path.c_str(), train_examples.size(),
               static_cast<long long>(trainer->total_steps()), static_cast<long long>(o.lora.rank),
               o.lora.alpha, o.lora.dropout, o.lora.target_modules.size(),
               static_cast<long long>(trainer->layout().num_params()),
               static_cast<unsigned long long>(o.seed),
               a.Has("resume") ? absl::StrCat(", resumed at step ", trainer->step()).c_str() : "");
  std::vector<nlohmann::json> history;
  auto on_step = [&](const StepReport& r) {
    if (r.repeated) {  // a resumed checkpoint's step, with the evaluation cut from it
      if (r.eval_loss) {
        std::fprintf(stderr, "step %lld/%lld | eval %.4f (the evaluation the checkpoint left)\n",
                     static_cast<long long>(r.step), static_cast<long long>(r.total_steps),
                     *r.eval_loss);
        history.push_back({{"step", r.step}, {"eval_loss", *r.eval_loss}});
      }
      return true;
    }
    std::string line = absl::StrFormat(
        "step %lld/%lld | epoch %lld | loss %.4f | lr %.2e | grad %.3f | %.0f tok/s | eta %s",
        r.step, r.total_steps, r.epoch + 1, r.loss, r.learning_rate, r.grad_norm,
        r.tokens_per_second, Clock(r.eta_seconds));
    nlohmann::json h = {{"step", r.step}, {"loss", r.loss}, {"lr", r.learning_rate}};
    if (r.eval_loss) {
      absl::StrAppendFormat(&line, " | eval %.4f", *r.eval_loss);
      h["eval_loss"] = *r.eval_loss;
    }
    std::fprintf(stderr, "%s\n", line.c_str());
    history.push_back(h);
    return true;
  };
  RETURN_IF_ERROR(trainer->Run(on_step, checkpoint_every, checkpoint_dir));
  PeftExportOptions eo;
  eo.base_model_name_or_path = model_path;
  eo.rewrite_rslora_alpha = a.Has("export-rslora-as-plain");
  ASSIGN_OR_RETURN(std::vector<float> params, trainer->ReadParams());
  RETURN_IF_ERROR(SavePeftAdapter(out, config, trainer->options().lora, params, eo));
  // Our own record of the run, next to (never inside) adapter_config.json.
  nlohmann::ordered_json summary = {{"base_model", model_path},
                                    {"base_quantized", m.model->quantized()},
                                    {"seed", o.seed},
                                    {"rank", o.lora.rank},
                                    {"alpha", o.lora.alpha},
                                    {"dropout", o.lora.dropout},
                                    {"target_modules", o.lora.target_modules},
                                    {"use_rslora", o.lora.use_rslora},
                                    {"learning_rate", o.learning_rate},
                                    {"schedule", LrScheduleName(o.schedule)},
                                    {"warmup_ratio", o.warmup_ratio},
                                    {"epochs", o.epochs},
                                    {"max_steps", o.max_steps},
                                    {"batch_size", o.batch_size},
                                    {"grad_accum", o.grad_accum},
                                    {"seq_len", seq_len},
                                    {"packing", ro.packing},
                                    {"weight_decay", o.weight_decay},
                                    {"max_grad_norm", o.max_grad_norm},
                                    {"steps", trainer->step()},
                                    {"total_steps", trainer->total_steps()},
                                    {"stopped_early", trainer->stopped_early()},
                                    {"trainable_parameters", trainer->layout().num_params()},
                                    {"history", history}};
  if (trainer->best_eval_loss()) summary["best_eval_loss"] = *trainer->best_eval_loss();
  RETURN_IF_ERROR(WriteStringToFile(
      (fs::path(out) / "training_summary.json").string(),
      summary.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n"));
  std::fprintf(stderr, "wrote PEFT adapter to %s%s\n", out.c_str(),
               trainer->stopped_early() ? " (stopped early: best validation loss kept)" : "");
  return absl::OkStatus();
}

absl::Status EvalCommand(int argc, char** argv) {
  ASSIGN_OR_RETURN(
      Args a, Args::Parse(argc, argv, {"model", "data", "adapter", "seq-len", "threads", "device"},
                          {"fp32"}));
  ASSIGN_OR_RETURN(std::string model_path, a.Required("model"));
  ASSIGN_OR_RETURN(std::string data_path, a.Required("data"));
  ASSIGN_OR_RETURN(int64_t threads, a.Integer("threads", 0));
  ASSIGN_OR_RETURN(LoadedModel m, LoadModel(model_path, a.Has("fp32"), a, threads));
  ASSIGN_OR_RETURN(int64_t seq_len,
                   a.Integer("seq-len", m.model->config().max_position_embeddings));
  ASSIGN_OR_RETURN(auto examples, ReadExamples(data_path, *m.source.tokenizer));
  std::unique_ptr<DeviceAdapter> adapter;
  if (a.Has("adapter")) {
    ASSIGN_OR_RETURN(PeftAdapter peft, LoadPeftAdapter(a.Get("adapter", ""), m.model->config()));
    ASSIGN_OR_RETURN(adapter, DeviceAdapter::Create(m.device.get(), m.model->config(), peft.config,
                                                    peft.params));
  }
  ASSIGN_OR_RETURN(EvalResult r, EvaluateExamples(*m.model, examples, seq_len,
                                                  adapter ? adapter->weights() : nullptr));
  std::printf("loss %.4f perplexity %.3f (%lld target tokens in %lld examples%s)\n", r.loss,
              r.perplexity, static_cast<long long>(r.target_tokens),
              static_cast<long long>(r.examples), adapter ? ", with adapter" : "");
  return absl::OkStatus();
}

absl::Status MergeCommand(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args a, Args::Parse(argc, argv, {"model", "adapter", "out", "dtype"}, {}));
  ASSIGN_OR_RETURN(std::string model_path, a.Required("model"));
  ASSIGN_OR_RETURN(std::string adapter_path, a.Required("adapter"));
  ASSIGN_OR_RETURN(std::string out, a.Required("out"));
  RETURN_IF_ERROR(CheckOutput(out, {model_path, adapter_path}));
  const std::string dtype_name = a.Get("dtype", "float32");
  DType dtype;
  if (dtype_name == "float32")
    dtype = DType::kF32;
  else if (dtype_name == "bfloat16")
    dtype = DType::kBF16;
  else if (dtype_name == "float16")
    dtype = DType::kF16;
  else
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype must be float32, bfloat16 or float16, got '", dtype_name, "'"));
  ASSIGN_OR_RETURN(ModelSource src, OpenModelSource(model_path));
  if (!src.prequantized.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        model_path,
        " holds 4-bit weights: merge into the 16-bit original model, not the NF4 copy"));
  }
  ASSIGN_OR_RETURN(PeftAdapter peft, LoadPeftAdapter(adapter_path, src.weights.config));
  RETURN_IF_ERROR(MergeAdapter(src.weights, peft.config, peft.params));
  RETURN_IF_ERROR(
      SaveHfModel(src.weights, src.tokenizer ? src.tokenizer->serialized_proto() : "", out, dtype));
  std::fprintf(stderr, "wrote merged model to %s\n", out.c_str());
  return absl::OkStatus();
}

}  // namespace qlorad
