// libFuzzer target: the .safetensors reader (kernels/io) on arbitrary bytes; every tensor of a
// file that parses is read back.
#include <cstdint>
#include <cstdlib>

#include "kernels/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<marlin::io::SafetensorsFile> f =
      marlin::io::ParseSafetensors(absl::Span<const uint8_t>(data, size));
  if (!f.ok()) return 0;
  for (const std::string& name : f->names()) {
    absl::StatusOr<marlin::io::Tensor> t = f->Get(name);
    if (!t.ok()) std::abort();  // a listed tensor must be readable
    if (!t->Validate().ok()) std::abort();
  }
  return 0;
}
