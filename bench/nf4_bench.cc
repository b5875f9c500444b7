// NF4 + double quantization dequantization throughput on the CPU, next to the machine's own
// memory copy bandwidth. Bytes are counted as read + written:
//   dequantize: n/2 packed + n/64 absmax_q + n/16384*4 nested (read) + 4n float32 (written)
//   memcpy:     size read + size written
// Run: build/bench/nf4_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "engine/device.h"
#include "engine/nf4_tensor.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/nf4.h"

namespace qlorad {
namespace {

std::vector<float> Gaussian(int64_t n) {
  std::mt19937 rng(42);
  std::normal_distribution<float> g(0.0f, 0.02f);
  std::vector<float> x(n);
  for (auto& v : x) v = g(rng);
  return x;
}

void BM_MemcpyBandwidth(benchmark::State& state) {
  const int64_t bytes = state.range(0) << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * bytes);
}
BENCHMARK(BM_MemcpyBandwidth)->Arg(64)->Arg(256)->UseRealTime();

// The same copy split across the OpenMP threads the dequantization uses: the fair ceiling.
void BM_ParallelCopyBandwidth(benchmark::State& state) {
  const int64_t bytes = state.range(0) << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  constexpr int64_t kChunk = 1 << 20;
  for (auto _ : state) {
#pragma omp parallel for schedule(static)
    for (int64_t off = 0; off < bytes; off += kChunk) {
      std::memcpy(dst.data() + off, src.data() + off, std::min(kChunk, bytes - off));
    }
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * bytes);
}
BENCHMARK(BM_ParallelCopyBandwidth)->Arg(256)->UseRealTime();

// A [rows, 4096] weight: rows=4096 is a LLaMA-7B attention projection, 11008 its MLP.
void BM_Nf4DqDequantize(benchmark::State& state) {
  const int64_t n = state.range(0) * 4096;
  const std::vector<float> x = Gaussian(n);
  auto t = QuantizeNf4(x.data(), {state.range(0), 4096});
  std::vector<float> out(n);
  for (auto _ : state) {
    t->DequantizeTo(out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const int64_t bytes = t->StorageBytes() + 4 * n;
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["params/s"] =
      benchmark::Counter(static_cast<double>(n) * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Nf4DqDequantize)->Arg(4096)->Arg(11008)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_Nf4DqQuantize(benchmark::State& state) {
  const int64_t n = state.range(0) * 4096;
  const std::vector<float> x = Gaussian(n);
  for (auto _ : state) {
    auto t = QuantizeNf4(x.data(), {state.range(0), 4096});
    benchmark::DoNotOptimize(t);
  }
  state.SetBytesProcessed(state.iterations() * 4 * n);
}
BENCHMARK(BM_Nf4DqQuantize)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond);

// One token through an NF4 linear [rows, 4096] (generation's step): the CPU device's fused
// decode-as-you-read product (fused:1) against dequantizing the weight whole and then a GEMV
// over it (fused:0, what the device did before). Bytes are the weight's storage, read once.
void BM_Nf4LinearOneToken(benchmark::State& state) {
  const int64_t rows = state.range(0), in = 4096;
  const std::vector<float> w = Gaussian(rows * in);
  auto t = QuantizeNf4(w.data(), {rows, in});
  const std::vector<float> x = Gaussian(in);
  std::vector<float> y(rows), dense(rows * in);
  auto device = CreateCpuDevice();
  auto lin = device->UploadLinear(&*t, nullptr, rows, in);
  if (!lin.ok()) {
    state.SkipWithError("upload failed");
    return;
  }
  for (auto _ : state) {
    if (state.range(1) != 0) {
      device->Linear(**lin, x.data(), 1, y.data());
    } else {
      t->DequantizeTo(dense.data());
      kernels::GemmF32(false, true, 1, rows, in, 1.0f, x.data(), in, dense.data(), in, 0.0f,
                       y.data(), rows);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * t->StorageBytes());
  state.counters["params/s"] = benchmark::Counter(
      static_cast<double>(rows * in) * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Nf4LinearOneToken)
    ->ArgsProduct({{4096, 11008}, {0, 1}})
    ->ArgNames({"rows", "fused"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace qlorad

BENCHMARK_MAIN();
