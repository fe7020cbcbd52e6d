// The null backend: answers zeros of the right size without computing or storing anything.
//
// It is a measuring tool, not a product: with it the server's throughput is the ceiling set by
// gRPC, protobuf and the batcher, so a load test against it says how much of the latency and
// throughput of the real backends is transport. Never use it to serve answers.
#ifndef MARLIN_SERVER_BACKEND_NULL_BACKEND_H_
#define MARLIN_SERVER_BACKEND_NULL_BACKEND_H_

#include <memory>

#include "server/backend/backend.h"

namespace marlin::backend {

class NullBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<NullBackend>> Create(int lanes);

  std::string name() const override { return "null"; }
  std::string device_name() const override { return "none (null backend: answers zeros)"; }
  DeviceMemory memory() const override { return HostMemory(); }
  uint64_t BytesFor(const WeightShape& shape) const override { return 0; }
  absl::StatusOr<std::shared_ptr<const PreparedWeight>> Prepare(
      const PackedWeight& weight) override;
  int lanes() const override { return lanes_; }
  absl::Status Run(int lane, const PreparedWeight& weight, absl::Span<const BatchSlice> slices,
                   int64_t rows) override;

 private:
  explicit NullBackend(int lanes) : lanes_(lanes) {}
  int lanes_;
};

}  // namespace marlin::backend

#endif  // MARLIN_SERVER_BACKEND_NULL_BACKEND_H_
