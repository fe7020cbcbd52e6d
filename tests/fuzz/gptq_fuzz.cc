// libFuzzer target: ImportGptq (kernels/format) on arbitrary shapes and tensor contents, including
// tensors whose sizes do not match the shape.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <vector>

#include "kernels/format/weight_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  marlin::WeightShape shape;
  shape.k = in.ConsumeBool() ? 64 * in.ConsumeIntegralInRange<int64_t>(1, 4)
                             : in.ConsumeIntegralInRange<int64_t>(-8, 600);
  shape.n = in.ConsumeBool() ? 64 * in.ConsumeIntegralInRange<int64_t>(1, 4)
                             : in.ConsumeIntegralInRange<int64_t>(-8, 600);
  shape.group_size = in.ConsumeBool() ? 128 : in.ConsumeBool() ? -1 : in.ConsumeIntegral<int>();
  const bool exact = in.ConsumeIntegralInRange<int>(0, 7) != 0;
  const int64_t groups =
      shape.group_size > 0 && shape.k > 0 ? (shape.k + shape.group_size - 1) / shape.group_size : 1;
  auto count = [&](int64_t want) -> size_t {
    if (exact && want >= 0 && want <= (1 << 20)) return static_cast<size_t>(want);
    return in.ConsumeIntegralInRange<size_t>(0, 4096);
  };
  const int64_t kk = shape.k > 0 ? shape.k : 0, nn = shape.n > 0 ? shape.n : 0;
  std::vector<int32_t> qweight(count(kk / 8 * nn));
  std::vector<uint16_t> scales(count(groups * nn));
  std::vector<int32_t> qzeros(count(groups * (nn / 8)));
  std::vector<int32_t> g_idx(in.ConsumeBool() ? count(kk) : 0);
  // Zeros symmetric (8 or 7 in every nibble) most of the time, so that import proceeds.
  const int32_t zero_word = in.ConsumeBool() ? int32_t(0x88888888u) : int32_t(0x77777777);
  const bool random_zeros = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  for (int32_t& v : qweight) v = in.ConsumeIntegral<int32_t>();
  for (uint16_t& v : scales) v = in.ConsumeIntegral<uint16_t>();
  for (int32_t& v : qzeros) v = random_zeros ? in.ConsumeIntegral<int32_t>() : zero_word;
  const bool trivial = in.ConsumeBool();
  for (size_t i = 0; i < g_idx.size(); ++i) {
    g_idx[i] = trivial && shape.group_size > 0 ? static_cast<int32_t>(i / shape.group_size)
                                               : in.ConsumeIntegral<int32_t>();
  }
  absl::StatusOr<marlin::QuantizedWeight> q =
      marlin::ImportGptq(shape, {qweight, scales, qzeros, g_idx});
  if (q.ok()) (void)marlin::Pack(*q);
  return 0;
}
