// libFuzzer target: the .npy reader (kernels/io) on arbitrary bytes; a parsed tensor must be
// valid and serialize back.
#include <cstdint>
#include <cstdlib>

#include "kernels/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<marlin::io::Tensor> t =
      marlin::io::ParseNpy(absl::Span<const uint8_t>(data, size));
  if (!t.ok()) return 0;
  if (!t->Validate().ok()) std::abort();
  absl::StatusOr<std::vector<uint8_t>> again = marlin::io::SerializeNpy(*t);
  if (again.ok()) {
    absl::StatusOr<marlin::io::Tensor> back = marlin::io::ParseNpy(*again);
    if (!back.ok() || back->data != t->data || back->shape != t->shape) std::abort();
  }
  return 0;
}
