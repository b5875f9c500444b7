#include "server/core/inference_runner.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/dataset.h"
#include "engine/device_adapter.h"
#include "engine/evaluate.h"
#include "engine/generate.h"
#include "engine/peft_adapter.h"
#include "engine/status_macros.h"
#include "engine/text_stream.h"
#include "server/core/ids.h"
#include "server/metrics/names.h"

namespace qlorad::core {
namespace fs = std::filesystem;
namespace {

// The request's text as tokens: BOS and its prompt, or its messages in the chat layout jobs
// train on (ChatPromptTokens), ending with the assistant's header.
absl::StatusOr<std::vector<int32_t>> PromptTokens(const v1::GenerateRequest& req,
                                                  const Tokenizer& tok) {
  if (req.messages_size() == 0) {
    std::vector<int32_t> prompt = {tok.bos_id()};
    if (!req.prompt().empty()) {
      ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok.Encode(req.prompt()));
      prompt.insert(prompt.end(), ids.begin(), ids.end());
    }
    return prompt;
  }
  std::vector<ChatTurn> turns;
  for (const v1::ChatMessage& m : req.messages()) turns.push_back({m.role(), m.content()});
  return ChatPromptTokens(turns, tok);
}

absl::StatusOr<v1::Model> FindModel(ModelStore* models, const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("model: required");
  auto m = models->Get(name);
  if (absl::IsNotFound(m.status()) || absl::IsInvalidArgument(m.status()))
    return absl::NotFoundError(absl::StrCat("model: no base model named '", name, "'"));
  return m;
}

// The tenant's adapter (known to exist) read from the store and placed on `device`.
absl::StatusOr<std::unique_ptr<DeviceAdapter>> LoadAdapter(AdapterStore* adapters, Device* device,
                                                           const std::string& tenant,
                                                           const std::string& id,
                                                           const LlamaConfig& config,
                                                           const std::string& scratch) {
  const std::string dir = (fs::path(scratch) / NewId("load")).string();
  absl::Status exported = adapters->ExportToDir(tenant, id, dir);
  absl::StatusOr<PeftAdapter> peft =
      exported.ok() ? LoadPeftAdapter(dir, config) : absl::StatusOr<PeftAdapter>(exported);
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!exported.ok()) return exported;  // deleted meanwhile, or a storage error: as it is
  if (!peft.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "adapter_id: adapter '", id, "' does not fit this model: ", peft.status().message()));
  }
  return DeviceAdapter::Create(device, config, peft->config, peft->params);
}

}  // namespace

InferenceRunner::InferenceRunner(ModelStore* models, DatasetStore* datasets, AdapterStore* adapters,
                                 std::string scratch_dir, int threads, int cached_adapters,
                                 int cached_models)
    : InferenceRunner(models, datasets, adapters, std::move(scratch_dir), CreateCpuDevice(threads),
                      cached_adapters, cached_models) {}

InferenceRunner::InferenceRunner(ModelStore* models, DatasetStore* datasets, AdapterStore* adapters,
                                 std::string scratch_dir, std::unique_ptr<Device> device,
                                 int cached_adapters, int cached_models)
    : models_(models),
      datasets_(datasets),
      adapters_(adapters),
      scratch_dir_(std::move(scratch_dir)),
      device_name_(device->name()),
      cached_adapters_(std::max(0, cached_adapters)),
      cached_models_(std::max(1, cached_models)) {
  absl::MutexLock lock(&mu_);
  device_ = std::move(device);
  pool_ = std::make_unique<ModelPool>(device_.get());
  PublishUsage();
}

void InferenceRunner::PublishUsage() {
  Usage u;
  u.memory = device_->memory_usage();
  u.models_loaded = pool_->LoadedCount();
  absl::MutexLock lock(&usage_mu_);
  usage_ = u;
}

InferenceRunner::Usage InferenceRunner::usage() const {
  absl::MutexLock lock(&usage_mu_);
  return usage_;
}

void InferenceRunner::CollectMetrics(metrics::Registry& r) const {
  const Usage u = usage();
  const std::string device = device_name_.substr(0, device_name_.find(' '));
  for (const auto& [category, bytes] : MemoryCategories(u.memory)) {
    r.Set(metrics::kInferenceMemory, {device, category}, static_cast<double>(bytes));
  }
  if (u.memory.peak_held > 0) {
    r.Set(metrics::kInferenceMemoryPeak, {device}, static_cast<double>(u.memory.peak_held));
  }
  r.Set(metrics::kInferenceModelsLoaded, {device}, u.models_loaded);
}

absl::StatusOr<InferenceRunner::Loaded> InferenceRunner::Load(const std::string& tenant,
                                                              const v1::Model& model,
                                                              const std::string& adapter_id) {
  Loaded l;
  if (!adapter_id.empty()) {
    // Always asked of the store first (a deleted adapter is never served from the cache), and
    // before the base model is loaded, so that a wrong pairing costs no load.
    auto meta = adapters_->Get(tenant, adapter_id);
    if (absl::IsNotFound(meta.status()) || absl::IsInvalidArgument(meta.status()))
      return absl::NotFoundError(absl::StrCat("adapter_id: no adapter '", adapter_id, "'"));
    if (!meta.ok()) return meta.status();
    // An adapter is a correction to the weights it was trained on: on another base model of
    // the same shape (a chat variant, say) it loads without complaint and answers wrongly.
    if (!meta->base_model().empty() && meta->base_model() != model.name()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "adapter_id: adapter '", adapter_id, "' was trained on base model '", meta->base_model(),
          "', not '", model.name(), "'; ask with model '", meta->base_model(), "'"));
    }
  }
  const std::string key = ModelPool::Key(model);
  if (!pool_->IsLoaded(key)) {
    // Room for it: the base models served least recently go (requests run one at a time, so
    // none is in use; an adapter placed for a dropped model goes with it, by its weak_ptr).
    std::set<std::string> keep;
    for (const std::string& recent : recent_models_) {
      if (static_cast<int>(keep.size()) + 1 >= cached_models_) break;
      keep.insert(recent);
    }
    pool_->EvictUnused(keep);
    ++model_loads_;
  }
  ASSIGN_OR_RETURN(l.model, pool_->Acquire(model));
  recent_models_.remove(key);
  recent_models_.push_front(key);
  // Only the most recent cached_models_ keys are ever read: a node asked about many models
  // (deleted ones too) keeps a short list.
  if (static_cast<int>(recent_models_.size()) > cached_models_)
    recent_models_.resize(cached_models_);
  if (!adapter_id.empty()) {
    ASSIGN_OR_RETURN(l.adapter, Adapter(tenant, adapter_id, l.model));
  }
  return l;
}

absl::StatusOr<std::shared_ptr<const DeviceAdapter>> InferenceRunner::Adapter(
    const std::string& tenant, const std::string& id, const std::shared_ptr<PooledModel>& model) {
  // An entry counts only for the base model the pool serves now: a model registered anew under
  // the same name (perhaps of another shape) is a new pooled model.
  const std::string key = AdapterKey(tenant, id);
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if (it->key == key && it->model.lock() == model) {
      cache_.splice(cache_.begin(), cache_, it);  // now the most recently used
      return cache_.front().adapter;
    }
  }
  ASSIGN_OR_RETURN(
      std::unique_ptr<DeviceAdapter> placed,
      LoadAdapter(adapters_, device_.get(), tenant, id, model->model->config(), scratch_dir_));
  ++adapter_loads_;
  std::shared_ptr<const DeviceAdapter> adapter = std::move(placed);
  if (cached_adapters_ > 0) {
    std::erase_if(cache_, [&](const CachedAdapter& e) { return e.key == key; });  // stale model
    cache_.push_front({key, model, adapter});
    if (static_cast<int>(cache_.size()) > cached_adapters_) cache_.pop_back();
  }
  return adapter;
}

int64_t InferenceRunner::adapter_loads() const {
  absl::MutexLock lock(&mu_);
  return adapter_loads_;
}

int64_t InferenceRunner::model_loads() const {
  absl::MutexLock lock(&mu_);
  return model_loads_;
}

int InferenceRunner::models_loaded() const {
  absl::MutexLock lock(&mu_);
  return pool_->LoadedCount();
}

std::string InferenceRunner::AdapterKey(const std::string& tenant, const std::string& id) {
  return id.empty() ? "" : absl::StrCat(tenant, "/", id);
}

absl::Status InferenceRunner::WithRoom(const std::string& model, const std::string& adapter_key,
                                       const std::function<absl::Status()>& attempt,
                                       const bool& answered) {
  absl::Status s = attempt();
  if (!absl::IsResourceExhausted(s) || answered) return s;
  const auto others = std::erase_if(
      cache_, [&](const CachedAdapter& e) { return e.key != adapter_key; });  // freed now: unused
  const int64_t freed = pool_->EvictUnused({model}) + device_->ReleaseScratch();
  if (freed == 0 && others == 0) return s;  // it does not fit even alone
  return attempt();
}

InferenceRunner::Turn::~Turn() {
  if (!held_) return;
  absl::MutexLock lock(&runner_->turn_mu_);
  runner_->turn_taken_ = false;
  runner_->last_served_ = tenant_;
}

uint64_t InferenceRunner::NextTicket() const {
  if (waiting_.empty()) return 0;
  auto next = waiting_.upper_bound(last_served_);
  if (next == waiting_.end()) next = waiting_.begin();
  return next->second.front();
}

void InferenceRunner::Forget(const std::string& tenant, uint64_t ticket) {
  auto it = waiting_.find(tenant);
  if (it == waiting_.end()) return;
  std::deque<uint64_t>& tickets = it->second;
  tickets.erase(std::remove(tickets.begin(), tickets.end(), ticket), tickets.end());
  if (tickets.empty()) waiting_.erase(it);
}

int InferenceRunner::waiting_requests() const {
  absl::MutexLock lock(&turn_mu_);
  int n = 0;
  for (const auto& [tenant, tickets] : waiting_) n += static_cast<int>(tickets.size());
  return n;
}

absl::Status InferenceRunner::Turn::Wait(const std::function<bool()>& client_left) {
  InferenceRunner* r = runner_;
  absl::MutexLock lock(&r->turn_mu_);
  std::deque<uint64_t>& mine = r->waiting_[tenant_];
  if (static_cast<int>(mine.size()) >= kMaxWaitingPerTenant) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant '", tenant_, "' has ", kMaxWaitingPerTenant,
        " generation or evaluation requests waiting for the device already; wait for them"));
  }
  const uint64_t ticket = ++r->last_ticket_;
  mine.push_back(ticket);
  struct Mine {
    InferenceRunner* r;
    uint64_t ticket;
  } me{r, ticket};
  const absl::Condition my_turn(
      +[](Mine* m) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return !m->r->turn_taken_ && m->r->NextTicket() == m->ticket;
      },
      &me);
  while (!r->turn_mu_.AwaitWithTimeout(my_turn, absl::Milliseconds(100))) {
    if (client_left && client_left()) {
      r->Forget(tenant_, ticket);
      return absl::CancelledError("the client left while waiting for the device");
    }
  }
  r->Forget(tenant_, ticket);
  r->turn_taken_ = true;
  held_ = true;
  return absl::OkStatus();
}

absl::StatusOr<InferenceRunner::Generated> InferenceRunner::Generate(
    const std::string& tenant, const v1::GenerateRequest& req,
    const std::function<bool(const std::string&, int64_t)>& on_text,
    const std::function<bool()>& client_left) {
  ASSIGN_OR_RETURN(v1::Model model, FindModel(models_, req.model()));
  SamplingOptions options;
  if (req.max_tokens() < 0) {
    return absl::InvalidArgumentError("max_tokens: must be positive (0 or unset: 64)");
  }
  options.max_new_tokens = req.max_tokens() > 0 ? req.max_tokens() : 64;
  if (options.max_new_tokens > 4096) return absl::InvalidArgumentError("max_tokens: at most 4096");
  options.temperature = req.temperature();
  options.top_p = req.top_p() == 0.0f ? 1.0f : req.top_p();  // 0: unset
  // Unset: a fresh seed, so that sampling twice gives two texts (0 for everyone gave one).
  if (req.has_seed()) {
    options.seed = req.seed();
  } else {
    std::random_device entropy;
    options.seed = (uint64_t{entropy()} << 32) | entropy();
  }
  if (absl::Status s = ValidateSamplingOptions(options); !s.ok()) {
    return absl::InvalidArgumentError(s.message());
  }
  // A prompt far longer than the context is refused before it is tokenized (megabytes of
  // text would take gigabytes to tokenize): no token of a vocabulary we load spans more
  // than 64 bytes of text in practice, so such a prompt cannot fit.
  const int64_t context = model.architecture().max_position_embeddings();
  if (context > 0 && static_cast<int64_t>(req.prompt().size()) > 64 * context) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", req.prompt().size(),
                                                   " bytes, far more than the model's context of ",
                                                   context, " tokens"));
  }
  if (req.messages_size() > 0) {
    if (!req.prompt().empty()) {
      return absl::InvalidArgumentError("messages: give prompt or messages, not both");
    }
    int64_t bytes = 0;
    for (int i = 0; i < req.messages_size(); ++i) {
      // Checked before the turn is waited for; ChatPromptTokens checks it again.
      RETURN_IF_ERROR(CheckChatRole(i, req.messages(i).role()));
      bytes += static_cast<int64_t>(req.messages(i).content().size()) + 16;  // + its header
    }
    if (context > 0 && bytes > 64 * context) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages: ", bytes, " bytes, far more than the model's context of ",
                       context, " tokens"));
    }
  }
  Turn turn(this, tenant);
  RETURN_IF_ERROR(turn.Wait(client_left));
  absl::MutexLock lock(&mu_);
  device_->EnterThread();  // this gRPC thread computes with the device's thread count
  const PublishOnExit publish{this};
  bool answered = false;  // text went to the client: a second try would repeat it
  Generated done;
  RETURN_IF_ERROR(WithRoom(
      ModelPool::Key(model), AdapterKey(tenant, req.adapter_id()),
      [&]() -> absl::Status {
        SamplingOptions so = options;
        ASSIGN_OR_RETURN(Loaded loaded, Load(tenant, model, req.adapter_id()));
        const std::shared_ptr<PooledModel>& pooled = loaded.model;
        const std::shared_ptr<const DeviceAdapter>& adapter = loaded.adapter;
        const LlamaConfig& config = pooled->model->config();
        const Tokenizer& tok = *pooled->tokenizer;
        ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptTokens(req, tok));
        if (static_cast<int64_t>(prompt.size()) + so.max_new_tokens >
            config.max_position_embeddings) {
          so.max_new_tokens = std::max<int64_t>(
              0, config.max_position_embeddings - static_cast<int64_t>(prompt.size()));
          if (so.max_new_tokens == 0) {
            return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt.size(),
                                                           " tokens fill the model's context of ",
                                                           config.max_position_embeddings));
          }
        }
        ASSIGN_OR_RETURN(TextStream stream, TextStream::Start(tok, prompt));
        absl::Status stream_status;
        bool client_left = false;
        int64_t generated = 0;
        auto on_token = [&](int32_t id) {
          ++generated;
          auto text = stream.Push(id);
          if (!text.ok()) {
            stream_status = text.status();
            return false;
          }
          if (text->empty()) return true;
          answered = true;
          if (!on_text(*text, generated)) {
            client_left = true;
            return false;
          }
          return true;
        };
        ASSIGN_OR_RETURN(GenerationResult r,
                         qlorad::Generate(*pooled->model, prompt, so, on_token,
                                          adapter ? adapter->weights() : nullptr));
        RETURN_IF_ERROR(stream_status);
        if (client_left) return absl::CancelledError("the client left");
        ASSIGN_OR_RETURN(const std::string rest, stream.Rest());
        if (!rest.empty()) {
          answered = true;
          if (!on_text(rest, generated)) return absl::CancelledError("the client left");
        }
        done.finish_reason = r.stopped_at_eos ? "eos" : "max_tokens";
        done.seed = so.seed;
        done.tokens = static_cast<int64_t>(r.tokens.size());
        return absl::OkStatus();
      },
      answered));
  return done;
}

absl::StatusOr<v1::EvaluateResponse> InferenceRunner::Evaluate(
    const std::string& tenant, const v1::EvaluateRequest& req,
    const std::function<bool()>& client_left) {
  ASSIGN_OR_RETURN(v1::Model model, FindModel(models_, req.model()));
  if (req.dataset_id().empty()) return absl::InvalidArgumentError("dataset_id: required");
  auto dataset = datasets_->Get(tenant, req.dataset_id());
  if (absl::IsNotFound(dataset.status()) || absl::IsInvalidArgument(dataset.status()))
    return absl::NotFoundError(absl::StrCat("dataset_id: no dataset '", req.dataset_id(), "'"));
  if (!dataset.ok()) return dataset.status();
  if (dataset->bytes() > max_evaluate_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset_id: ", dataset->bytes(), " bytes; Evaluate reads at most ", max_evaluate_bytes_,
        " (it holds the device for every tenant): evaluate a sample, or give the data to a job "
        "as its validation_dataset"));
  }
  Turn turn(this, tenant);
  RETURN_IF_ERROR(turn.Wait(client_left));
  // Read only now: calls waiting for the turn hold no dataset in memory.
  auto content = datasets_->Content(tenant, req.dataset_id());
  if (absl::IsNotFound(content.status()))
    return absl::NotFoundError(absl::StrCat("dataset_id: no dataset '", req.dataset_id(), "'"));
  if (!content.ok()) return content.status();
  absl::MutexLock lock(&mu_);
  device_->EnterThread();  // this gRPC thread computes with the device's thread count
  const PublishOnExit publish{this};
  v1::EvaluateResponse out;
  RETURN_IF_ERROR(WithRoom(
      ModelPool::Key(model), AdapterKey(tenant, req.adapter_id()),
      [&]() -> absl::Status {
        ASSIGN_OR_RETURN(Loaded loaded, Load(tenant, model, req.adapter_id()));
        const std::shared_ptr<PooledModel>& pooled = loaded.model;
        const std::shared_ptr<const DeviceAdapter>& adapter = loaded.adapter;
        const LlamaConfig& config = pooled->model->config();
        auto examples = TokenizeJsonl(*content, *pooled->tokenizer, req.dataset_id());
        if (!examples.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat("dataset_id: ", examples.status().message()));
        }
        int64_t tokens = 0;
        for (const TokenizedExample& ex : *examples) tokens += ex.tokens.size();
        if (tokens > max_evaluate_tokens_) {
          return absl::InvalidArgumentError(absl::StrCat(
              "dataset_id: ", tokens, " tokens; Evaluate reads at most ", max_evaluate_tokens_,
              " (it holds the device for every tenant): evaluate a sample, or give the data to a "
              "job as its validation_dataset"));
        }
        ASSIGN_OR_RETURN(EvalResult r,
                         EvaluateExamples(*pooled->model, *examples, config.max_position_embeddings,
                                          adapter ? adapter->weights() : nullptr, client_left));
        out.set_loss(r.loss);
        out.set_perplexity(r.perplexity);
        out.set_target_tokens(r.target_tokens);
        out.set_examples(r.examples);
        return absl::OkStatus();
      },
      /*answered=*/false));
  return out;
}

}  // namespace qlorad::core
