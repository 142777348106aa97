// KernelStatus: the error type of kernels/. kernels/ cannot use absl (the GPU machine lacks it), so it
// carries its own minimal status with the same codes; tiering/ converts it to absl::Status in one place
// (tiering/kernel_status.h). Nothing in kernels/ throws.
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace kvtier {

enum class KernelCode : int {
  kOk = 0,
  kInvalidArgument = 3,
  kOutOfRange = 11,
  kFailedPrecondition = 9,
  kUnavailable = 14,
  kInternal = 13,
};

class [[nodiscard]] KernelStatus {
 public:
  KernelStatus() = default;
  KernelStatus(KernelCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static KernelStatus Ok() { return {}; }
  bool ok() const { return code_ == KernelCode::kOk; }
  KernelCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  KernelCode code_ = KernelCode::kOk;
  std::string message_;
};

inline KernelStatus InvalidArgument(std::string m) { return {KernelCode::kInvalidArgument, std::move(m)}; }
inline KernelStatus OutOfRange(std::string m) { return {KernelCode::kOutOfRange, std::move(m)}; }
inline KernelStatus Unavailable(std::string m) { return {KernelCode::kUnavailable, std::move(m)}; }
inline KernelStatus InternalError(std::string m) { return {KernelCode::kInternal, std::move(m)}; }

// A value or the status that explains why there is none.
template <class T>
class [[nodiscard]] KernelOr {
 public:
  KernelOr(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  KernelOr(KernelStatus status) : status_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return value_.has_value(); }
  const KernelStatus& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  KernelStatus status_;
  std::optional<T> value_;
};

}  // namespace kvtier

#define KVTIER_RETURN_IF_KERNEL_ERROR(expr)         \
  do {                                              \
    ::kvtier::KernelStatus _kvtier_st = (expr);     \
    if (!_kvtier_st.ok()) return _kvtier_st;        \
  } while (0)
