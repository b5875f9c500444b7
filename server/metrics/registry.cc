#include "server/metrics/registry.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace qlorad::metrics {
namespace {

// Escaped for the exposition format: backslash and newline, and in label values the quote.
std::string Escape(const std::string& v, bool label_value) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (c == '"' && label_value)
      out += "\\\"";
    else
      out += c;
  }
  return out;
}

std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrFormat("%.0f", v);
  // The shortest of 15..17 significant digits that reads back as the same double.
  for (int digits = 15; digits < 17; ++digits) {
    const std::string text = absl::StrFormat("%.*g", digits, v);
    if (std::strtod(text.c_str(), nullptr) == v) return text;
  }
  return absl::StrFormat("%.17g", v);
}

std::string LabelSet(const std::vector<std::string>& names, const std::vector<std::string>& values,
                     const std::string& extra_name = "", const std::string& extra_value = "") {
  if (names.empty() && extra_name.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", names[i], "=\"", Escape(values[i], true), "\"");
  }
  if (!extra_name.empty()) {
    absl::StrAppend(&out, names.empty() ? "" : ",", extra_name, "=\"", extra_value, "\"");
  }
  return out + "}";
}

}  // namespace

void Registry::Declare(const std::string& name, Type type, const std::string& help,
                       std::vector<std::string> label_names, std::vector<double> buckets) {
  absl::MutexLock lock(&mu_);
  if (families_.count(name)) return;
  Family f;
  f.type = type;
  f.help = help;
  f.label_names = std::move(label_names);
  f.bounds = std::move(buckets);
  families_.emplace(name, std::move(f));
}

Registry::Family* Registry::Find(const std::string& name,
                                 const std::vector<std::string>& label_values) {
  auto it = families_.find(name);
  if (it == families_.end() || it->second.label_names.size() != label_values.size()) {
    std::fprintf(stderr, "qlorad: metrics: %s used with undeclared name or labels\n", name.c_str());
    return nullptr;
  }
  return &it->second;
}

void Registry::Add(const std::string& name, const std::vector<std::string>& labels, double delta) {
  absl::MutexLock lock(&mu_);
  Family* f = Find(name, labels);
  if (f == nullptr || (f->type == Type::kCounter && delta < 0)) return;
  f->series[labels].value += delta;
}

void Registry::Set(const std::string& name, const std::vector<std::string>& labels, double value) {
  absl::MutexLock lock(&mu_);
  Family* f = Find(name, labels);
  if (f == nullptr || f->type == Type::kHistogram) return;  // counters: read from elsewhere
  f->series[labels].value = value;
}

void Registry::Observe(const std::string& name, const std::vector<std::string>& labels,
                       double value) {
  absl::MutexLock lock(&mu_);
  Family* f = Find(name, labels);
  if (f == nullptr || f->type != Type::kHistogram) return;
  Series& s = f->series[labels];
  if (s.buckets.empty()) s.buckets.assign(f->bounds.size(), 0);
  for (size_t i = 0; i < f->bounds.size(); ++i) {
    if (value <= f->bounds[i]) ++s.buckets[i];
  }
  ++s.count;
  s.sum += value;
}

void Registry::Remove(const std::string& name, const std::vector<std::string>& labels) {
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it != families_.end()) it->second.series.erase(labels);
}

void Registry::AddCollector(std::function<void(Registry&)> collector) {
  absl::MutexLock lock(&mu_);
  collectors_.push_back(std::move(collector));
}

std::string Registry::Serialize() {
  std::vector<std::function<void(Registry&)>> collectors;
  {
    absl::MutexLock lock(&mu_);
    collectors = collectors_;
  }
  for (auto& c : collectors) c(*this);
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    const char* type = f.type == Type::kCounter ? "counter"
                       : f.type == Type::kGauge ? "gauge"
                                                : "histogram";
    absl::StrAppend(&out, "# HELP ", name, " ", Escape(f.help, false), "\n# TYPE ", name, " ", type,
                    "\n");
    for (const auto& [labels, s] : f.series) {
      if (f.type != Type::kHistogram) {
        absl::StrAppend(&out, name, LabelSet(f.label_names, labels), " ", Number(s.value), "\n");
        continue;
      }
      for (size_t i = 0; i < f.bounds.size(); ++i) {
        absl::StrAppend(&out, name, "_bucket",
                        LabelSet(f.label_names, labels, "le", Number(f.bounds[i])), " ",
                        s.buckets.empty() ? 0 : s.buckets[i], "\n");
      }
      absl::StrAppend(&out, name, "_bucket", LabelSet(f.label_names, labels, "le", "+Inf"), " ",
                      s.count, "\n");
      absl::StrAppend(&out, name, "_sum", LabelSet(f.label_names, labels), " ", Number(s.sum),
                      "\n");
      absl::StrAppend(&out, name, "_count", LabelSet(f.label_names, labels), " ", s.count, "\n");
    }
  }
  return out;
}

}  // namespace qlorad::metrics
