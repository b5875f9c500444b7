// absl-lite (see ../status/status.h): absl::string_view is std::string_view.
#pragma once

#include <string_view>

namespace absl {
using std::string_view;
}  // namespace absl
