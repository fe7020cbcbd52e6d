// libFuzzer target: the UploadWeight protocol (UploadAssembler) and the decoding of every source
// (dense FP16/FP32 quantization, GPTQ import, packed), fed arbitrary message sequences. The input
// chooses a header (consistent sizes and checksums most of the time, so that decoding is reached),
// then a sequence of chunks, stray headers and empty messages.
#include <fuzzer/FuzzedDataProvider.h>
#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "server/service/upload_assembler.h"

namespace {

using marlin::SourceBytes;
using marlin::UploadAssembler;

uint32_t Crc(const std::string& data) {
  return static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0),
                                     reinterpret_cast<const Bytef*>(data.data()),
                                     static_cast<uInt>(data.size())));
}

// Small dimensions most of the time (multiples of the tile sizes), anything sometimes.
int64_t Dim(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      return in.ConsumeIntegral<int64_t>();
    case 1:
      return in.ConsumeIntegralInRange<int64_t>(0, 1024);
    default:
      return 64 * in.ConsumeIntegralInRange<int64_t>(1, 6);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  marlin::v1::UploadHeader h;
  h.set_weight_id("fuzz");
  h.set_source(static_cast<marlin::v1::WeightSource>(in.ConsumeIntegralInRange<int>(-1, 5)));
  h.set_layout(static_cast<marlin::v1::DenseLayout>(in.ConsumeIntegralInRange<int>(-1, 3)));
  h.set_k(Dim(in));
  h.set_n(Dim(in));
  const int group_choice = in.ConsumeIntegralInRange<int>(0, 3);
  h.set_group_size(group_choice == 0 ? 0 : group_choice == 1 ? 128 : group_choice == 2 ? -1 : 64);
  h.set_has_g_idx(in.ConsumeBool());
  const bool consistent = in.ConsumeIntegralInRange<int>(0, 7) != 0;
  const bool crc_right = in.ConsumeIntegralInRange<int>(0, 7) != 0;

  // The payload: the rest of the input repeated up to the size the header implies (bounded).
  std::string payload = in.ConsumeRandomLengthString(1 << 16);
  marlin::SourceSpec spec;
  spec.shape = {.k = h.k(), .n = h.n(), .group_size = h.group_size() == 0 ? 128 : h.group_size()};
  spec.kind = static_cast<marlin::SourceKind>(std::abs(h.source() % 4));
  spec.has_g_idx = h.has_g_idx();
  if (consistent) {
    absl::StatusOr<uint64_t> expected = SourceBytes(spec);
    if (expected.ok() && *expected <= (4u << 20)) {
      std::string full;
      full.reserve(*expected);
      while (full.size() < *expected) {
        full.append(payload.empty() ? std::string(1, '\x08') : payload);
      }
      full.resize(*expected);
      payload = std::move(full);
    }
    h.set_total_bytes(payload.size());
  } else {
    h.set_total_bytes(in.ConsumeIntegral<uint64_t>());
  }
  h.set_crc32(crc_right ? Crc(payload) : in.ConsumeIntegral<uint32_t>());

  UploadAssembler a;
  if (in.ConsumeIntegralInRange<int>(0, 15) != 0) (void)a.OnHeader(h);
  size_t at = 0;
  while (at < payload.size() && in.remaining_bytes() > 0) {
    switch (in.ConsumeIntegralInRange<int>(0, 15)) {
      case 0:
        (void)a.OnHeader(h);  // a second header
        break;
      case 1:
        (void)a.OnChunk("");
        break;
      default: {
        const size_t n = in.ConsumeIntegralInRange<size_t>(1, payload.size() - at);
        if (!a.OnChunk(absl::string_view(payload).substr(at, n)).ok()) return 0;
        at += n;
      }
    }
  }
  if (in.ConsumeBool() && at < payload.size()) {
    if (!a.OnChunk(absl::string_view(payload).substr(at)).ok()) return 0;
  }
  if (!a.CheckComplete().ok()) return 0;
  absl::StatusOr<marlin::PackedWeight> packed = a.Decode();
  if (packed.ok() && packed->shape.k != h.k()) std::abort();  // decoded the shape it was given
  return 0;
}
