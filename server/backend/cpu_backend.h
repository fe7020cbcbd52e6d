// The CPU backend: CpuGemm over gathered rows. Bit-exact with CpuGemm on the same packed weight,
// so the end-to-end tests compare server answers against it bit for bit.
//
//   ASSIGN_OR_RETURN(auto cpu, CpuBackend::Create(/*lanes=*/2, /*threads_per_lane=*/1));
#ifndef MARLIN_SERVER_BACKEND_CPU_BACKEND_H_
#define MARLIN_SERVER_BACKEND_CPU_BACKEND_H_

#include <memory>
#include <vector>

#include "server/backend/backend.h"

namespace marlin::backend {

class CpuBackend : public Backend {
 public:
  // threads_per_lane 0 = hardware threads / lanes (at least 1).
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(int lanes, int threads_per_lane);

  std::string name() const override { return "cpu"; }
  std::string device_name() const override;
  DeviceMemory memory() const override { return HostMemory(); }
  uint64_t BytesFor(const WeightShape& shape) const override;
  absl::StatusOr<std::shared_ptr<const PreparedWeight>> Prepare(
      const PackedWeight& weight) override;
  int lanes() const override { return static_cast<int>(lanes_.size()); }
  absl::Status Run(int lane, const PreparedWeight& weight, absl::Span<const BatchSlice> slices,
                   int64_t rows) override;

 private:
  // Per-lane scratch, grown to the largest batch seen and then reused.
  struct Lane {
    std::vector<uint16_t> x;
    std::vector<uint16_t> y;
  };
  CpuBackend(int lanes, int threads) : lanes_(lanes), threads_(threads) {}
  std::vector<Lane> lanes_;
  int threads_;
};

}  // namespace marlin::backend

#endif  // MARLIN_SERVER_BACKEND_CPU_BACKEND_H_
