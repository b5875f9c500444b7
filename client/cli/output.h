// What qloractl prints: protobuf messages as one line of canonical proto3 JSON (-o json), and
// for people (-o text) aligned tables and "key: value" lines with readable sizes and times.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"

namespace qlorad::ctl {

enum class OutputFormat { kText, kJson };

// Prints `message` as one line of JSON on stdout (lowerCamelCase names, defaults omitted).
absl::Status PrintJson(const google::protobuf::Message& message);

// Columns padded to their widest cell, two spaces apart, on stdout.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// "key: value" lines with the values aligned, on stdout.
void PrintFields(const std::vector<std::pair<std::string, std::string>>& fields);

// 1536 -> "1.5 KiB".
std::string FormatBytes(int64_t bytes);
// 1234567 -> "1.23M" (K, M, B, T); below 1000 the number itself.
std::string FormatCount(int64_t count);
// RFC 3339 in UTC, second precision; "-" for an unset time.
std::string FormatTime(const google::protobuf::Timestamp& time);
// 3725.4 -> "01:02:05" (hours grow past 99 as needed).
std::string FormatClock(double seconds);
// Shortest readable form of a double: 0.0001234 -> "0.0001234", 2 -> "2".
std::string FormatNumber(double value);

// Whether stderr is a terminal (for the live progress line).
bool StderrIsTerminal();

}  // namespace qlorad::ctl
