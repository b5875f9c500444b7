#include "kernels/cpu/gemm.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace qlorad::kernels {
namespace {

// Double-precision reference, row-major, op(A) [m,k], op(B) [k,n].
std::vector<double> Reference(bool ta, bool tb, int m, int n, int k, const std::vector<float>& a,
                              const std::vector<float>& b) {
  std::vector<double> c(m * n, 0.0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      for (int p = 0; p < k; ++p) {
        const double av = ta ? a[p * m + i] : a[i * k + p];
        const double bv = tb ? b[j * k + p] : b[p * n + j];
        c[i * n + j] += av * bv;
      }
  return c;
}

class GemmTest : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(GemmTest, MatchesDoubleReferenceWithAlphaBeta) {
  const auto [ta, tb] = GetParam();
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist;
  // Small shapes, and shapes large enough that the BLAS path splits the output across threads
  // (by rows when m >= n, by columns otherwise).
  const int shapes[][3] = {{0, 0, 0},     {0, 0, 0},     {0, 0, 0},     {0, 0, 0},
                           {300, 70, 40}, {45, 260, 33}, {129, 131, 37}};
  for (int trial = 0; trial < 7; ++trial) {
    int m = 1 + rng() % 37, n = 1 + rng() % 41, k = 1 + rng() % 53;
    if (shapes[trial][0] != 0) {
      m = shapes[trial][0];
      n = shapes[trial][1];
      k = shapes[trial][2];
    }
    std::vector<float> a(m * k), b(k * n), c0(m * n);
    for (auto& v : a) v = dist(rng);
    for (auto& v : b) v = dist(rng);
    for (auto& v : c0) v = dist(rng);
    const std::vector<double> ref = Reference(ta, tb, m, n, k, a, b);
    for (int impl = 0; impl < 2; ++impl) {
      std::vector<float> c = c0;
      const int lda = ta ? m : k, ldb = tb ? k : n;
      if (impl == 0) {
        GemmF32(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, 2.0f, c.data(), n);
      } else {
        GemmF32Portable(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, 2.0f, c.data(), n);
      }
      for (int i = 0; i < m * n; ++i) {
        ASSERT_NEAR(c[i], 0.5 * ref[i] + 2.0 * c0[i], 1e-4 * (1 + std::abs(ref[i])))
            << (impl ? "portable" : GemmBackendName()) << " m=" << m << " n=" << n << " k=" << k;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTransposes, GemmTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()));

}  // namespace
}  // namespace qlorad::kernels
