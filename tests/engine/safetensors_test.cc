#include "engine/safetensors.h"

#include <cstring>
#include <fstream>

#include "engine/mapped_file.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::TempDir;

TEST(Safetensors, RoundTripAllDtypes) {
  const std::string dir = TempDir("st_roundtrip");
  SafetensorsWriter w;
  w.SetMetadata("format", "pt");
  w.AddF32("a", {2, 3}, {1, 2, 3, 4, 5, 6.5f});
  w.AddF32As("b", DType::kBF16, {2}, {1.0f, -2.0f});
  w.AddF32As("c", DType::kF16, {1, 2}, {0.5f, 3.0f});
  const uint8_t bytes[3] = {1, 2, 255};
  w.Add("d", DType::kU8, {3, 1}, bytes, 3);
  ASSERT_TRUE(w.WriteTo(dir + "/x.safetensors").ok());

  auto f = SafetensorsFile::Open(dir + "/x.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ((*(*f)->ReadF32("a")), (std::vector<float>{1, 2, 3, 4, 5, 6.5f}));
  EXPECT_EQ((*(*f)->ReadF32("b")), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ((*(*f)->ReadF32("c")), (std::vector<float>{0.5f, 3.0f}));
  const SafetensorsEntry* d = *(*f)->Get("d");
  EXPECT_EQ(d->shape, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(std::memcmp(d->data, bytes, 3), 0);
  EXPECT_EQ((*f)->ReadF32("d").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*f)->Get("zzz").status().code(), absl::StatusCode::kNotFound);
}

std::string WithHeader(const std::string& json, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t len = json.size();
  std::memcpy(out.data(), &len, 8);
  return out + json + std::string(data_bytes, '\0');
}

void ExpectInvalid(const std::string& contents, const std::string& needle) {
  const std::string path = TempDir("st_bad") + "/bad.safetensors";
  ASSERT_TRUE(WriteStringToFile(path, contents).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status();
  EXPECT_NE(f.status().message().find("bad.safetensors"), std::string::npos) << f.status();
}

TEST(Safetensors, RejectsMalformedFilesWithClearErrors) {
  ExpectInvalid("abc", "shorter");
  ExpectInvalid(WithHeader("{", 0), "not a JSON object");
  std::string huge(8, '\xff');
  ExpectInvalid(huge + "{}", "exceeds file size");
  ExpectInvalid(WithHeader(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
                "outside");
  ExpectInvalid(WithHeader(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16),
                "'w' holds 16 bytes");
  ExpectInvalid(WithHeader(R"({"w":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}})", 1),
                "unsupported tensor dtype");
  ExpectInvalid(WithHeader(R"({"w":{"shape":[1]}})", 0), "lacks dtype");
  // 2^62 elements of 4 bytes: the product wraps to 0, the size of the empty range given.
  ExpectInvalid(
      WithHeader(R"({"w":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,0]}})",
                 0),
      "'w' holds 0 bytes");
}

TEST(Safetensors, MissingFileIsNotFound) {
  EXPECT_EQ(SafetensorsFile::Open("/nonexistent/x.safetensors").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qlorad
