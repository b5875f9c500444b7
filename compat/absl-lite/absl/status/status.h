// absl-lite: the few Abseil status and string helpers that the engine's compute core uses
// (engine/CMakeLists.txt, qlorad_engine_core), written for this project with Abseil's names and
// meanings, so that the same sources build on a machine without Abseil (the lent GPU machine).
// CMake uses it only there, never beside the real Abseil.
#pragma once

#include <ostream>
#include <string>
#include <string_view>

namespace absl {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

std::string_view StatusCodeName(StatusCode code);

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string_view message)
      : code_(code), message_(code == StatusCode::kOk ? "" : std::string(message)) {}
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  std::string_view message() const { return message_; }
  std::string ToString() const {
    return ok() ? "OK" : std::string(StatusCodeName(code_)) + ": " + message_;
  }
  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }
  friend bool operator!=(const Status& a, const Status& b) { return !(a == b); }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kCancelled:
      return "CANCELLED";
    case StatusCode::kUnknown:
      return "UNKNOWN";
    case StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound:
      return "NOT_FOUND";
    case StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case StatusCode::kAborted:
      return "ABORTED";
    case StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case StatusCode::kInternal:
      return "INTERNAL";
    case StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case StatusCode::kDataLoss:
      return "DATA_LOSS";
    case StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

inline std::ostream& operator<<(std::ostream& os, const Status& s) { return os << s.ToString(); }

inline Status OkStatus() { return Status(); }

#define QLORAD_ABSL_LITE_ERROR(Name, Code)                                              \
  inline Status Name##Error(std::string_view m) { return Status(StatusCode::Code, m); } \
  inline bool Is##Name(const Status& s) { return s.code() == StatusCode::Code; }
QLORAD_ABSL_LITE_ERROR(Cancelled, kCancelled)
QLORAD_ABSL_LITE_ERROR(Unknown, kUnknown)
QLORAD_ABSL_LITE_ERROR(InvalidArgument, kInvalidArgument)
QLORAD_ABSL_LITE_ERROR(DeadlineExceeded, kDeadlineExceeded)
QLORAD_ABSL_LITE_ERROR(NotFound, kNotFound)
QLORAD_ABSL_LITE_ERROR(AlreadyExists, kAlreadyExists)
QLORAD_ABSL_LITE_ERROR(PermissionDenied, kPermissionDenied)
QLORAD_ABSL_LITE_ERROR(ResourceExhausted, kResourceExhausted)
QLORAD_ABSL_LITE_ERROR(FailedPrecondition, kFailedPrecondition)
QLORAD_ABSL_LITE_ERROR(Aborted, kAborted)
QLORAD_ABSL_LITE_ERROR(OutOfRange, kOutOfRange)
QLORAD_ABSL_LITE_ERROR(Unimplemented, kUnimplemented)
QLORAD_ABSL_LITE_ERROR(Internal, kInternal)
QLORAD_ABSL_LITE_ERROR(Unavailable, kUnavailable)
QLORAD_ABSL_LITE_ERROR(DataLoss, kDataLoss)
QLORAD_ABSL_LITE_ERROR(Unauthenticated, kUnauthenticated)
#undef QLORAD_ABSL_LITE_ERROR

}  // namespace absl
