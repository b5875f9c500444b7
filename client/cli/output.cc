#include "client/cli/output.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"

namespace qlorad::ctl {

absl::Status PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;  // canonical proto3 mapping, one line
  auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot print ", message.GetTypeName(), " as JSON: ", status.ToString()));
  }
  std::cout << json << "\n" << std::flush;
  return absl::OkStatus();
}

void Table::Print() const {
  std::vector<size_t> widths;
  for (const auto& row : rows_) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows_) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line.append(widths[c] - row[c].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
  std::cout << std::flush;
}

void PrintFields(const std::vector<std::pair<std::string, std::string>>& fields) {
  size_t width = 0;
  for (const auto& [key, value] : fields) width = std::max(width, key.size());
  for (const auto& [key, value] : fields) {
    std::cout << key << ":" << std::string(width - key.size() + 1, ' ') << value << "\n";
  }
  std::cout << std::flush;
}

std::string FormatBytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (std::fabs(value) >= 1024 && unit + 1 < 5) {
    value /= 1024;
    ++unit;
  }
  if (unit == 0) return absl::StrCat(bytes, " B");
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string FormatCount(int64_t count) {
  static constexpr const char* kSuffixes[] = {"", "K", "M", "B", "T"};
  double value = static_cast<double>(count);
  int suffix = 0;
  while (std::fabs(value) >= 1000 && suffix + 1 < 5) {
    value /= 1000;
    ++suffix;
  }
  if (suffix == 0) return absl::StrCat(count);
  return absl::StrFormat("%.2f%s", value, kSuffixes[suffix]);
}

std::string FormatTime(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(time.seconds()),
                          absl::UTCTimeZone());
}

std::string FormatClock(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--:--";
  int64_t total = static_cast<int64_t>(std::llround(std::min(seconds, 1e12)));
  return absl::StrFormat("%02d:%02d:%02d", total / 3600, total / 60 % 60, total % 60);
}

std::string FormatNumber(double value) { return absl::StrFormat("%g", value); }

bool StderrIsTerminal() { return isatty(STDERR_FILENO) == 1; }

}  // namespace qlorad::ctl
