#include "engine/device_select.h"

#include <string>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine/cuda_device.h"
#include "gtest/gtest.h"

namespace qlorad {
namespace {

bool IsCpu(const Device& d) { return d.name().rfind("cpu (", 0) == 0; }

TEST(OpenFirstUsableGpu, PassesOverCardsThatCannotServeAndSaysWhy) {
  // No machine has a card 999, and "gpu0" is no GPU name: both are skipped, never fatal.
  std::vector<std::string> why;
  std::unique_ptr<Device> d = OpenFirstUsableGpu({"cuda:999", "gpu0"}, 1, &why);
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(IsCpu(*d)) << d->name();
  ASSERT_EQ(why.size(), 2u);
  EXPECT_EQ(why[0].rfind("cuda:999: ", 0), 0u) << why[0];
  EXPECT_EQ(why[1].rfind("gpu0: ", 0), 0u) << why[1];
}

TEST(OpenFirstUsableGpu, NoCandidateIsTheCpu) {
  std::vector<std::string> why;
  std::unique_ptr<Device> d = OpenFirstUsableGpu({}, 1, &why);
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(IsCpu(*d));
  EXPECT_TRUE(why.empty());  // nothing was passed over
}

TEST(OpenDevice, NamesWhatIsNotADevice) {
  for (const std::string spec : {"gpu", "cuda:", "cuda:x", "cuda:1234", "cpu:1", ""}) {
    auto d = OpenDevice(spec, 1);
    ASSERT_FALSE(d.ok()) << spec;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << spec;
    EXPECT_NE(std::string(d.status().message()).find("'" + spec + "'"), std::string::npos)
        << d.status();
  }
}

// Where no GPU can serve (this machine, CI), auto is the CPU and says why on stderr; on a card,
// OpenFirstUsableGpu is checked by tests/gpu/cuda_train_step_gpu_test.cc.
TEST(OpenDevice, AutoWithoutAGpuIsTheCpuAndSaysWhy) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a CUDA device is here: the GPU check covers auto";
  ::testing::internal::CaptureStderr();
  auto d = OpenDevice("auto", 1);
  const std::string said = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(IsCpu(**d)) << (*d)->name();
  EXPECT_EQ(said.rfind("device auto: ", 0), 0u) << said;
  EXPECT_GT(said.size(), std::string("device auto: \n").size()) << said;  // with a reason
  auto cpu = OpenDevice("cpu", 1);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(IsCpu(**cpu));
}

#ifdef _OPENMP
// A CPU device computes with its own thread count on whichever thread uses it: the daemon makes
// its inference device on the main thread and computes on gRPC threads, which had all the cores.
TEST(CpuDevice, ItsThreadCountHoldsOnTheThreadThatComputes) {
  const int all = omp_get_num_procs();
  std::unique_ptr<Device> d = CreateCpuDevice(1);
  int before = 0, entered = 0;
  std::thread other([&] {
    omp_set_num_threads(all + 3);  // a thread that had other settings
    before = omp_get_max_threads();
    d->EnterThread();
    entered = omp_get_max_threads();
  });
  other.join();
  EXPECT_EQ(before, all + 3);
  EXPECT_EQ(entered, 1);
}
#endif

}  // namespace
}  // namespace qlorad
