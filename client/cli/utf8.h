// Text that goes into the API's string fields must be UTF-8 (protobuf refuses anything else on
// the daemon's side, and the client would only see the call fail). Command-line arguments and
// file names on Linux are bytes, so qloractl checks or repairs them first.
#pragma once

#include <string>
#include <string_view>

#include "engine/utf8.h"

namespace qlorad::ctl {

// IsUtf8 (well-formed: no overlong forms, surrogates or values past U+10FFFF) is engine/utf8.h's.
using ::qlorad::IsUtf8;

// `text` with each ill-formed part replaced by U+FFFD, as Python's decode("utf-8", "replace")
// does (the maximal subpart of a broken character is one U+FFFD), so that both clients name a
// file the same: for names, where the readable part is worth keeping.
std::string ToValidUtf8(std::string_view text);

}  // namespace qlorad::ctl
