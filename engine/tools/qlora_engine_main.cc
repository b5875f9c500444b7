// qlora-engine: the engine without the daemon.
//   qlora-engine convert-llama2c --checkpoint FILE --tokenizer FILE --out DIR
//   qlora-engine quantize --model DIR|FILE.gguf --out DIR [--no-double-quant]
//   qlora-engine generate --model DIR|FILE.gguf [--prompt TEXT] [--max-tokens N]
//                         [--temperature T] [--top-p P] [--seed S] [--fp32]
// Errors go to stderr with a non-zero exit status; `generate` prints only the text on stdout.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/device.h"
#include "engine/device_adapter.h"
#include "engine/device_select.h"
#include "engine/generate.h"
#include "engine/llama2c.h"
#include "engine/llama_model.h"
#include "engine/model_source.h"
#include "engine/nf4_checkpoint.h"
#include "engine/peft_adapter.h"
#include "engine/status_macros.h"
#include "engine/text_stream.h"
#include "engine/tools/args.h"
#include "engine/tools/commands.h"
#include "engine/tools/output_path.h"

namespace qlorad {
namespace {

constexpr char kUsage[] =
    "usage: qlora-engine <command> [options]\n"
    "commands:\n"
    "  convert-llama2c --checkpoint FILE --tokenizer FILE --out DIR\n"
    "      llama2.c checkpoint + tokenizer (tokenizer.model or llama2.c .bin) -> Hugging Face dir\n"
    "  quantize --model DIR|FILE.gguf --out DIR [--no-double-quant]\n"
    "      write the bitsandbytes 4-bit (NF4) layout; prints bits/param and the weight error\n"
    "  generate --model DIR|FILE.gguf [--prompt TEXT] [--max-tokens N (64)] [--temperature T (0)]\n"
    "           [--top-p P] [--seed S] [--fp32] [--device cpu|cuda:N|auto]\n"
    "           [--adapter DIR]\n"
    "      print generated text (base weights NF4 + double quantization unless --fp32)\n"
    "  train --model DIR|FILE.gguf --data FILE.jsonl [--valid FILE.jsonl] --out DIR [--rank R]\n"
    "        [--alpha A] [--dropout P] [--targets LIST|all-linear] [--lr LR]\n"
    "        [--schedule cosine|linear|constant] [--warmup-ratio X] [--epochs N | --max-steps N]\n"
    "        [--batch-size B] [--grad-accum G] [--seq-len T] [--packing] [--seed S] [--resume "
    "DIR]\n"
    "        [--eval-every N] [--early-stopping N] [--checkpoint-every N] [--checkpoint-dir DIR]\n"
    "        [--weight-decay W] [--max-grad-norm G] [--rslora] [--export-rslora-as-plain]\n"
    "        [--activation-checkpointing] [--fp32] [--threads N] [--device cpu|cuda:N|auto]\n"
    "      train a LoRA adapter on the NF4 base; writes a PEFT adapter directory at --out\n"
    "  eval --model DIR|FILE.gguf --data FILE.jsonl [--adapter DIR] [--seq-len T] [--fp32]\n"
    "       [--device cpu|cuda:N|auto]\n"
    "      loss per target token and perplexity\n"
    "  merge --model DIR --adapter DIR --out DIR [--dtype float32|bfloat16|float16]\n"
    "      merge the adapter into the original (not NF4) weights; writes a Hugging Face dir\n";

absl::Status ConvertLlama2c(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args a, Args::Parse(argc, argv, {"checkpoint", "tokenizer", "out"}, {}));
  ASSIGN_OR_RETURN(std::string ck, a.Required("checkpoint"));
  ASSIGN_OR_RETURN(std::string tok, a.Required("tokenizer"));
  ASSIGN_OR_RETURN(std::string out, a.Required("out"));
  RETURN_IF_ERROR(CheckOutput(out, {ck, tok}));
  RETURN_IF_ERROR(ConvertLlama2cToHf(ck, tok, out));
  std::cerr << "wrote Hugging Face model to " << out << "\n";
  return absl::OkStatus();
}

absl::Status Quantize(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args a, Args::Parse(argc, argv, {"model", "out"}, {"no-double-quant"}));
  ASSIGN_OR_RETURN(std::string model, a.Required("model"));
  ASSIGN_OR_RETURN(std::string out, a.Required("out"));
  RETURN_IF_ERROR(CheckOutput(out, {model}));
  ASSIGN_OR_RETURN(ModelSource src, OpenModelSource(model));
  if (!src.prequantized.empty())
    return absl::FailedPreconditionError(absl::StrCat(model, " is already 4-bit quantized"));
  // Keep the originals of the linear weights to measure the quantization error.
  std::map<std::string, std::vector<float>> originals;
  for (const TensorSlot& s : TensorSlots(src.weights)) {
    if (s.is_linear) originals[s.name] = *s.data;
  }
  Nf4Options options;
  options.double_quant = !a.Has("no-double-quant");
  ASSIGN_OR_RETURN(
      auto quantized,
      SaveNf4Checkpoint(src.weights, src.tokenizer ? src.tokenizer->serialized_proto() : "", out,
                        options));
  int64_t params = 0, bytes = 0;
  double sq_err = 0.0, sq_ref = 0.0, max_err = 0.0;
  for (const auto& [name, t] : quantized) {
    params += t.numel;
    bytes += t.StorageBytes();
    const std::vector<float> deq = t.Dequantize();
    const std::vector<float>& ref = originals[name];
    for (size_t i = 0; i < deq.size(); ++i) {
      const double e = static_cast<double>(deq[i]) - ref[i];
      sq_err += e * e;
      sq_ref += static_cast<double>(ref[i]) * ref[i];
      max_err = std::max(max_err, std::fabs(e));
    }
  }
  std::printf("quantized %zu linear weights, %lld parameters, %lld bytes: %.4f bits/param (%s)\n",
              quantized.size(), static_cast<long long>(params), static_cast<long long>(bytes),
              8.0 * bytes / params, options.double_quant ? "NF4 + double quantization" : "NF4");
  std::printf("error against the original weights: rms %.6g, relative rms %.4f, max abs %.6g\n",
              std::sqrt(sq_err / params), std::sqrt(sq_err / sq_ref), max_err);
  std::printf("wrote %s\n", out.c_str());
  return absl::OkStatus();
}

absl::Status GenerateCommand(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args a, Args::Parse(argc, argv,
                                       {"model", "prompt", "max-tokens", "temperature", "top-p",
                                        "seed", "threads", "adapter", "device"},
                                       {"fp32"}));
  ASSIGN_OR_RETURN(std::string model_path, a.Required("model"));
  SamplingOptions so;
  // The daemon's Generate defaults: 64 tokens, greedy.
  ASSIGN_OR_RETURN(so.max_new_tokens, a.Integer("max-tokens", 64));
  ASSIGN_OR_RETURN(double temperature, a.Number("temperature", 0.0));
  ASSIGN_OR_RETURN(double top_p, a.Number("top-p", 1.0));
  ASSIGN_OR_RETURN(int64_t seed, a.Integer("seed", 0));
  ASSIGN_OR_RETURN(int64_t threads, a.Integer("threads", 0));
  so.temperature = static_cast<float>(temperature);
  so.top_p = static_cast<float>(top_p);
  so.seed = static_cast<uint64_t>(seed);
  RETURN_IF_ERROR(ValidateSamplingOptions(so));

  ASSIGN_OR_RETURN(ModelSource src, OpenModelSource(model_path));
  if (!src.tokenizer)
    return absl::FailedPreconditionError(absl::StrCat(model_path, " has no tokenizer.model"));
  ModelOptions mo;
  mo.quantize = !a.Has("fp32");
  if (a.Has("fp32") && !src.prequantized.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(model_path, " holds 4-bit weights; --fp32 needs the original model"));
  }
  auto opened = OpenDevice(a.Get("device", "cpu"), static_cast<int>(threads));
  if (!opened.ok()) {
    return absl::Status(opened.status().code(),
                        absl::StrCat("--device: ", opened.status().message()));
  }
  std::unique_ptr<Device> device = std::move(*opened);
  const Tokenizer& tok = *src.tokenizer;
  const LlamaConfig config = src.weights.config;
  ASSIGN_OR_RETURN(auto model, LlamaModel::Create(std::move(src.weights), device.get(), mo,
                                                  std::move(src.prequantized)));
  std::unique_ptr<DeviceAdapter> adapter;
  if (a.Has("adapter")) {
    ASSIGN_OR_RETURN(PeftAdapter peft, LoadPeftAdapter(a.Get("adapter", ""), config));
    ASSIGN_OR_RETURN(adapter,
                     DeviceAdapter::Create(device.get(), config, peft.config, peft.params));
  }
  std::vector<int32_t> prompt = {tok.bos_id()};
  const std::string prompt_text = a.Get("prompt", "");
  if (!prompt_text.empty()) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok.Encode(prompt_text));
    prompt.insert(prompt.end(), ids.begin(), ids.end());
  }
  ASSIGN_OR_RETURN(TextStream stream, TextStream::Start(tok, prompt));  // the prompt: not printed
  absl::Status stream_status;
  auto on_token = [&](int32_t id) {
    auto text = stream.Push(id);
    if (!text.ok()) {
      stream_status = text.status();
      return false;
    }
    std::fputs(text->c_str(), stdout);
    std::fflush(stdout);
    return true;
  };
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(GenerationResult r,
                   Generate(*model, prompt, so, on_token, adapter ? adapter->weights() : nullptr));
  RETURN_IF_ERROR(stream_status);
  ASSIGN_OR_RETURN(const std::string rest, stream.Rest());
  std::fputs(rest.c_str(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);  // the text before the timing line on a shared terminal
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "[%zu tokens in %.2f s, %.1f tokens/s, %s, %s]\n", r.tokens.size(), secs,
               r.tokens.size() / std::max(secs, 1e-9), model->quantized() ? "NF4+DQ" : "fp32",
               device->name().c_str());
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  absl::Status s;
  // The commands return errors; an exception that still escapes (a library's, a bug) is reported
  // as one rather than aborting the process with a core dump.
  try {
    if (cmd == "convert-llama2c") {
      s = ConvertLlama2c(argc - 2, argv + 2);
    } else if (cmd == "quantize") {
      s = Quantize(argc - 2, argv + 2);
    } else if (cmd == "generate") {
      s = GenerateCommand(argc - 2, argv + 2);
    } else if (cmd == "train") {
      s = TrainCommand(argc - 2, argv + 2);
    } else if (cmd == "eval") {
      s = EvalCommand(argc - 2, argv + 2);
    } else if (cmd == "merge") {
      s = MergeCommand(argc - 2, argv + 2);
    } else {
      std::fprintf(stderr, "qlora-engine: unknown command '%s'\n%s", cmd.c_str(), kUsage);
      return 2;
    }
  } catch (const std::exception& e) {
    s = absl::InternalError(absl::StrCat("unexpected error: ", e.what()));
  }
  if (!s.ok()) {
    std::fprintf(stderr, "qlora-engine %s: %s\n", cmd.c_str(), std::string(s.message()).c_str());
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}

}  // namespace
}  // namespace qlorad

int main(int argc, char** argv) { return qlorad::Main(argc, argv); }
