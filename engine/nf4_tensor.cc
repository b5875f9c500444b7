#include "engine/nf4_tensor.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/nf4.h"

namespace qlorad {

int64_t Nf4StorageBytes(int64_t numel, const Nf4Options& o) {
  const int64_t blocks = (numel + o.blocksize - 1) / o.blocksize;
  if (!o.double_quant) return (numel + 1) / 2 + 4 * blocks;
  const int64_t nested = (blocks + o.nested_blocksize - 1) / o.nested_blocksize;
  return (numel + 1) / 2 + blocks + 4 * nested + 4;
}

int64_t Nf4Tensor::StorageBytes() const {
  int64_t bytes = static_cast<int64_t>(packed.size());
  if (double_quant) {
    bytes +=
        static_cast<int64_t>(absmax_q.size()) + 4 * static_cast<int64_t>(nested_absmax.size()) + 4;
  } else {
    bytes += 4 * static_cast<int64_t>(absmax.size());
  }
  return bytes;
}

std::vector<float> Nf4Tensor::BlockAbsmax() const {
  if (!double_quant) return absmax;
  std::vector<float> out(absmax_q.size());
  kernels::DequantizeBlockwise8(absmax_q.data(), nested_absmax.data(),
                                static_cast<int64_t>(absmax_q.size()), nested_blocksize,
                                kernels::SignedDynamicMap().data(), offset, out.data());
  return out;
}

void Nf4Tensor::DequantizeTo(float* out) const {
  if (double_quant) {
    kernels::Nf4DequantizeDoubleQuant(packed.data(), absmax_q.data(), nested_absmax.data(),
                                      kernels::SignedDynamicMap().data(), offset, numel, blocksize,
                                      nested_blocksize, out);
  } else {
    kernels::Nf4DequantizeBlockwise(packed.data(), absmax.data(), numel, blocksize, out);
  }
}

std::vector<float> Nf4Tensor::Dequantize() const {
  std::vector<float> out(numel);
  DequantizeTo(out.data());
  return out;
}

absl::Status Nf4Tensor::Validate() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  auto bad = [](std::string what) { return absl::InvalidArgumentError(std::move(what)); };
  if (n != numel)
    return bad(absl::StrCat("NF4 tensor: shape holds ", n, " values, numel is ", numel));
  if (blocksize <= 0 || blocksize % 2 != 0)
    return bad(absl::StrCat("NF4 tensor: bad blocksize ", blocksize));
  if (static_cast<int64_t>(packed.size()) != (numel + 1) / 2) {
    return bad(
        absl::StrCat("NF4 tensor: ", packed.size(), " packed bytes, expected ", (numel + 1) / 2));
  }
  const int64_t blocks = num_blocks();
  if (double_quant) {
    if (nested_blocksize <= 0) return bad("NF4 tensor: bad nested blocksize");
    const int64_t nested = (blocks + nested_blocksize - 1) / nested_blocksize;
    if (static_cast<int64_t>(absmax_q.size()) != blocks) {
      return bad(absl::StrCat("NF4 tensor: ", absmax_q.size(),
                              " quantized absmax values, expected ", blocks));
    }
    if (static_cast<int64_t>(nested_absmax.size()) != nested) {
      return bad(absl::StrCat("NF4 tensor: ", nested_absmax.size(),
                              " nested absmax values, expected ", nested));
    }
  } else if (static_cast<int64_t>(absmax.size()) != blocks) {
    return bad(absl::StrCat("NF4 tensor: ", absmax.size(), " absmax values, expected ", blocks));
  }
  return absl::OkStatus();
}

absl::StatusOr<Nf4Tensor> QuantizeNf4(const float* x, std::vector<int64_t> shape,
                                      const Nf4Options& options) {
  Nf4Tensor t;
  t.shape = std::move(shape);
  t.numel = 1;
  for (int64_t d : t.shape) t.numel *= d;
  if (options.blocksize <= 0 || options.blocksize % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("NF4 blocksize must be a positive even number, got ", options.blocksize));
  }
  if (options.double_quant && options.nested_blocksize <= 0) {
    return absl::InvalidArgumentError("nested blocksize must be positive");
  }
  if (t.numel == 0) return absl::InvalidArgumentError("cannot quantize an empty tensor");
  t.blocksize = options.blocksize;
  t.double_quant = options.double_quant;
  t.nested_blocksize = options.nested_blocksize;
  t.packed.assign((t.numel + 1) / 2, 0);
  std::vector<float> absmax(t.num_blocks());
  kernels::Nf4QuantizeBlockwise(x, t.numel, t.blocksize, t.packed.data(), absmax.data());
  if (!t.double_quant) {
    t.absmax = std::move(absmax);
    return t;
  }
  // Double quantization: centre the absmax values on their mean, then 8-bit blockwise.
  double sum = 0.0;
  for (float a : absmax) sum += a;
  t.offset = static_cast<float>(sum / static_cast<double>(absmax.size()));
  for (float& a : absmax) a -= t.offset;
  const int64_t blocks = t.num_blocks();
  t.absmax_q.resize(blocks);
  t.nested_absmax.resize((blocks + t.nested_blocksize - 1) / t.nested_blocksize);
  kernels::QuantizeBlockwise8(absmax.data(), blocks, t.nested_blocksize,
                              kernels::SignedDynamicMap().data(), t.absmax_q.data(),
                              t.nested_absmax.data());
  return t;
}

}  // namespace qlorad
