// absl-lite (see status.h): StatusOr<T>, a T or the Status that says why there is none.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"

namespace absl {

template <typename T>
class StatusOr {
 public:
  StatusOr(const Status& s) : status_(s) { CheckNotOk(); }        // NOLINT: implicit, as Abseil's
  StatusOr(Status&& s) : status_(std::move(s)) { CheckNotOk(); }  // NOLINT
  template <typename U = T,
            typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                        !std::is_same_v<std::decay_t<U>, StatusOr> &&
                                        !std::is_same_v<std::decay_t<U>, Status>>>
  StatusOr(U&& v) : value_(std::forward<U>(v)) {}  // NOLINT
  template <typename U,
            typename = std::enable_if_t<!std::is_same_v<T, U> && std::is_constructible_v<T, U&&>>>
  StatusOr(StatusOr<U>&& other)  // NOLINT: e.g. unique_ptr<Derived> to unique_ptr<Base>
      : status_(other.status()) {
    if (other.ok()) value_.emplace(std::move(other).value());
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const& { return status_; }
  Status status() && { return std::move(status_); }

  T& value() & { return Checked(), *value_; }
  const T& value() const& { return Checked(), *value_; }
  T&& value() && { return Checked(), std::move(*value_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  template <typename U>
  T value_or(U&& fallback) const& {
    return ok() ? *value_ : static_cast<T>(std::forward<U>(fallback));
  }

 private:
  void CheckNotOk() {
    if (status_.ok()) status_ = InternalError("an OK status was given to StatusOr without a value");
  }
  void Checked() const {
    if (!ok()) {
      std::fprintf(stderr, "StatusOr::value() of an error: %s\n", status_.ToString().c_str());
      std::abort();
    }
  }

  Status status_;
  std::optional<T> value_;
};

}  // namespace absl
