// A fresh, empty folder per test (named after the test), for the stores' RocksDB databases.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace qlorad::testing {

inline std::string FreshTestDir(const std::string& kind) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("qlorad_" + kind + "_" + std::to_string(::getpid()) + "_" +
                                     info->test_suite_name() + "_" + info->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace qlorad::testing
