// qloractl's UTF-8 check and repair. The repaired strings are what CPython 3.11's
// bytes.decode("utf-8", "replace") gives for the same bytes (the Python client's rule).
#include "client/cli/utf8.h"

#include <string>
#include <utility>

#include "gtest/gtest.h"

namespace qlorad::ctl {
namespace {

TEST(Utf8, WellFormedTextPassesUnchanged) {
  for (const std::string text : {"", "abc",
                                 "donn\xC3\xA9"
                                 "es",
                                 "\xE2\x82\xAC", "\xF0\x9F\x98\xBA ok", "\xF4\x8F\xBF\xBF"}) {
    EXPECT_TRUE(IsUtf8(text)) << text;
    EXPECT_EQ(ToValidUtf8(text), text);
  }
}

TEST(Utf8, IllFormedPartsBecomeOneReplacementEachAsInPython) {
  const std::string r = "\xEF\xBF\xBD";  // U+FFFD
  const std::pair<std::string, std::string> cases[] = {
      {"donn\xE9"
       "es",
       "donn" + r + "es"},  // Latin-1
      {"\xE2\x82", r},      // cut short: one
      {"\xE2\x82x", r + "x"},
      {"\xF0\x9F\x98", r},
      {"\xE0\x80\xAF", r + r + r},          // overlong
      {"\xED\xA0\x80", r + r + r},          // a surrogate
      {"\xF4\x90\x80\x80", r + r + r + r},  // past U+10FFFF
      {"\xC0\xAF", r + r},
      {"\xFF\xFE", r + r},
      {"a\x80"
       "b",
       "a" + r + "b"},  // a lone continuation byte
  };
  for (const auto& [bytes, repaired] : cases) {
    EXPECT_FALSE(IsUtf8(bytes)) << bytes;
    EXPECT_EQ(ToValidUtf8(bytes), repaired) << bytes;
    EXPECT_TRUE(IsUtf8(ToValidUtf8(bytes)));
  }
}

}  // namespace
}  // namespace qlorad::ctl
