// ImportGptq: symmetric GPTQ checkpoints (AutoGPTQ / GPTQ-for-LLaMa 4-bit) to a QuantizedWeight.
//
// Element (k, n) is nibble k % 8 of qweight[(k / 8) * N + n]; it stores u = q + z_real where the
// real zero point z_real is 8 for symmetric checkpoints. Older exporters store z_real - 1 = 7 in
// qzeros (the "minus one" convention), newer ones store 8; both give q = u - 8.
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "kernels/format/weight_format.h"

namespace marlin {
namespace {

absl::Status CheckSize(absl::string_view name, size_t got, int64_t expected,
                       absl::string_view dims) {
  if (got == static_cast<uint64_t>(expected)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("GPTQ ", name, " has ", got, " elements, expected ", dims, " = ", expected));
}

int Nibble(int32_t word, int64_t index) {
  return static_cast<int>((static_cast<uint32_t>(word) >> (4 * (index % 8))) & 0xf);
}

}  // namespace

absl::StatusOr<QuantizedWeight> ImportGptq(const WeightShape& shape, const GptqTensors& tensors) {
  if (absl::Status st = ValidateShape(shape); !st.ok()) return st;
  const int64_t k_dim = shape.k;
  const int64_t n_dim = shape.n;
  const int64_t groups = shape.num_groups();
  const std::string dims =
      absl::StrCat("K=", k_dim, " N=", n_dim, " group_size=", shape.group_size);
  if (absl::Status st = CheckSize("qweight", tensors.qweight.size(), k_dim / 8 * n_dim,
                                  absl::StrCat("[K/8, N] for ", dims));
      !st.ok()) {
    return st;
  }
  if (absl::Status st = CheckSize("scales", tensors.scales.size(), groups * n_dim,
                                  absl::StrCat("[K/G, N] for ", dims));
      !st.ok()) {
    return st;
  }
  if (absl::Status st = CheckSize("qzeros", tensors.qzeros.size(), groups * (n_dim / 8),
                                  absl::StrCat("[K/G, N/8] for ", dims));
      !st.ok()) {
    return st;
  }
  if (!tensors.g_idx.empty()) {
    if (absl::Status st = CheckSize("g_idx", tensors.g_idx.size(), k_dim, "[K] (or empty)");
        !st.ok()) {
      return st;
    }
    for (int64_t i = 0; i < k_dim; ++i) {
      if (tensors.g_idx[i] != i / shape.group_rows()) {
        return absl::InvalidArgumentError(
            absl::StrCat("act-order g_idx not supported: g_idx[", i, "] = ", tensors.g_idx[i],
                         ", expected ", i / shape.group_rows(), " (row / group_size)"));
      }
    }
  }
  // Every stored zero must be 7 or every one 8; the first zero decides which.
  const int first_zero = Nibble(tensors.qzeros[0], 0);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t n = 0; n < n_dim; ++n) {
      const int z = Nibble(tensors.qzeros[g * (n_dim / 8) + n / 8], n);
      if ((first_zero != 7 && first_zero != 8) || z != first_zero) {
        return absl::InvalidArgumentError(absl::StrCat(
            "asymmetric GPTQ checkpoints are not supported: stored zero point of group ", g,
            ", column ", n, " is ", z,
            (first_zero == 7 || first_zero == 8)
                ? absl::StrCat(" but group 0, column 0 has ", first_zero)
                : "",
            "; only all-7 (minus-one convention) or all-8 zeros are symmetric"));
      }
    }
  }
  for (int64_t i = 0; i < groups * n_dim; ++i) {
    if (!std::isfinite(HalfToFloat(tensors.scales[i]))) {
      return absl::InvalidArgumentError(absl::StrCat("GPTQ scale of group ", i / n_dim, ", column ",
                                                     i % n_dim, " is not finite"));
    }
  }
  QuantizedWeight out;
  out.shape = shape;
  out.scales.assign(tensors.scales.begin(), tensors.scales.end());
  out.q.resize(static_cast<size_t>(k_dim * n_dim));
  for (int64_t k = 0; k < k_dim; ++k) {
    for (int64_t n = 0; n < n_dim; ++n) {
      out.q[k * n_dim + n] =
          static_cast<int8_t>(Nibble(tensors.qweight[(k / 8) * n_dim + n], k) - 8);
    }
  }
  return out;
}

}  // namespace marlin
