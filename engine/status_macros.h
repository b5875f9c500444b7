// RETURN_IF_ERROR / ASSIGN_OR_RETURN: Debian's Abseil (20220623) does not ship them.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QLORAD_CONCAT_INNER(a, b) a##b
#define QLORAD_CONCAT(a, b) QLORAD_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status qlorad_status_ = (expr);          \
    if (!qlorad_status_.ok()) return qlorad_status_; \
  } while (0)

#define QLORAD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, expr) \
  QLORAD_ASSIGN_OR_RETURN_IMPL(QLORAD_CONCAT(qlorad_statusor_, __LINE__), lhs, expr)
