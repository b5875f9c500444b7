#include "server/grpc/call.h"

#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/status_macros.h"
#include "server/metrics/names.h"

namespace qlorad::server {

std::string ShortenedMessage(absl::string_view message) {
  if (message.size() <= kMaxStatusMessageBytes) return std::string(message);
  size_t cut = kMaxStatusMessageBytes;
  // Not inside a UTF-8 character: back to the first byte of the one the cut falls in.
  while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat(message.substr(0, cut), "... (", message.size() - cut, " bytes more)");
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), ShortenedMessage(s.message()));
}

Call::Call(grpc::ServerContext* context, const char* method, const Node& node)
    : context_(context),
      method_(method),
      tenants_(*node.tenants),
      metrics_(node.metrics.get()),
      calls_(node.calls.get()),
      log_limiter_(node.log_limiter.get()),
      start_(std::chrono::steady_clock::now()) {}

Call::~Call() {
  if (counted_) calls_->End(tenant_->name);
  const auto end = std::chrono::steady_clock::now();
  const double ms = std::chrono::duration<double, std::milli>(end - start_).count();
  if (metrics_ != nullptr) {  // every call, logged or not
    metrics_->Add(metrics::kGrpcRequests, {method_, absl::StatusCodeToString(result_.code())}, 1);
    metrics_->Observe(metrics::kGrpcDuration, {method_}, ms / 1000.0);
  }
  int64_t dropped = 0;
  if (log_limiter_ != nullptr &&
      !log_limiter_->Allow(tenant_ ? tenant_->name : "-", end, &dropped)) {
    return;
  }
  // logfmt: one line per call, values quoted when they may hold spaces.
  std::string line = absl::StrCat(
      "ts=", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
      " level=", result_.ok() ? "info" : "warn", " msg=rpc method=", method_,
      " tenant=", tenant_ ? tenant_->name : "-", " peer=", context_->peer(),
      " code=", absl::StatusCodeToString(result_.code()), " ms=", absl::StrFormat("%.1f", ms));
  if (!result_.ok()) {
    // Quotes and control bytes (a client's ids and names reach errors) cannot break the line
    // or reach the operator's terminal.
    std::string error = ShortenedMessage(result_.message());
    for (char& ch : error) {
      if (ch == '"') ch = '\'';
      if (absl::ascii_iscntrl(static_cast<unsigned char>(ch))) ch = ' ';
    }
    absl::StrAppend(&line, " error=\"", error, "\"");
  }
  // Lines of this key left out since its last one (a flood of its calls).
  if (dropped > 0) absl::StrAppend(&line, " lines_dropped_before=", dropped);
  std::fprintf(stderr, "%s\n", line.c_str());
}

absl::Status Call::Authenticate() {
  const auto& md = context_->client_metadata();
  auto it = md.find("authorization");
  std::string_view header;
  if (it != md.end()) header = std::string_view(it->second.data(), it->second.size());
  auto tenant = tenants_.Authenticate(header);
  if (!tenant.ok()) return tenant.status();
  tenant_ = *tenant;
  if (calls_ != nullptr && !counted_) {
    RETURN_IF_ERROR(calls_->Begin(tenant_->name));
    counted_ = true;
  }
  return absl::OkStatus();
}

absl::Status Call::AuthenticateAdmin() {
  if (absl::Status s = Authenticate(); !s.ok()) return s;
  if (!tenant_->admin) {
    return absl::PermissionDeniedError(
        absl::StrCat(method_, " needs an admin key; tenant '", tenant_->name, "' is not an admin"));
  }
  return absl::OkStatus();
}

grpc::Status Call::Finish(const absl::Status& s) {
  result_ = s;
  return ToGrpc(s);
}

}  // namespace qlorad::server
