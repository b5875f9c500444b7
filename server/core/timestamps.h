// The current time as a protobuf Timestamp, to the microsecond or better. Protobuf's own
// TimeUtil::GetCurrentTime (3.21, as Debian 12 ships it) has whole seconds only, so records
// made within one second tied: jobs queued again at a restart lost their order, and a model
// registered again at once looked like the copy already loaded.
#pragma once

#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/time_util.h>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace qlorad::core {

inline google::protobuf::Timestamp NowTimestamp() {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(absl::Now()));
}

inline absl::Time FromTimestamp(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(google::protobuf::util::TimeUtil::TimestampToNanoseconds(t));
}

}  // namespace qlorad::core
