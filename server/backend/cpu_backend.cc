#include "server/backend/cpu_backend.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "kernels/cpu/cpu_gemm.h"

namespace marlin::backend {
namespace {

class CpuWeight : public PreparedWeight {
 public:
  CpuWeight(std::unique_ptr<CpuGemm> gemm, uint64_t bytes)
      : PreparedWeight(gemm->shape(), bytes), gemm_(std::move(gemm)) {}
  const CpuGemm& gemm() const { return *gemm_; }

 private:
  std::unique_ptr<CpuGemm> gemm_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(int lanes, int threads_per_lane) {
  if (lanes < 1) return absl::InvalidArgumentError(absl::StrCat("lanes must be >= 1, got ", lanes));
  if (threads_per_lane < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads per lane must be >= 0, got ", threads_per_lane));
  }
  if (threads_per_lane == 0) {
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads_per_lane = std::max(1, hw / lanes);
  }
  return std::unique_ptr<CpuBackend>(new CpuBackend(lanes, threads_per_lane));
}

std::string CpuBackend::device_name() const {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "model name")) {
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        return absl::StrCat("cpu: ", absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
    }
  }
  return "cpu";
}

uint64_t CpuBackend::BytesFor(const WeightShape& shape) const { return PackedBytes(shape); }

absl::StatusOr<std::shared_ptr<const PreparedWeight>> CpuBackend::Prepare(
    const PackedWeight& weight) {
  absl::StatusOr<std::unique_ptr<CpuGemm>> gemm = CpuGemm::Create(weight, threads_);
  if (!gemm.ok()) return gemm.status();
  const uint64_t bytes = (*gemm)->host_bytes();
  return std::make_shared<CpuWeight>(*std::move(gemm), bytes);
}

absl::Status CpuBackend::Run(int lane, const PreparedWeight& weight,
                             absl::Span<const BatchSlice> slices, int64_t rows) {
  if (lane < 0 || lane >= lanes()) {
    return absl::InvalidArgumentError(absl::StrCat("lane ", lane, " out of range"));
  }
  const auto& w = static_cast<const CpuWeight&>(weight);
  const int64_t k = w.shape().k;
  const int64_t n = w.shape().n;
  auto aligned = [](const void* p) {
    return reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) == 0;
  };
  if (slices.size() == 1 && slices[0].rows == rows && aligned(slices[0].x) &&
      aligned(slices[0].y)) {
    // One request (batching off, or a quiet server): no gather or scatter, straight from the
    // request's bytes into the answer's.
    return w.gemm().Run(static_cast<const uint16_t*>(slices[0].x), rows,
                        static_cast<uint16_t*>(slices[0].y));
  }
  Lane& l = lanes_[lane];
  const size_t x_elems = static_cast<size_t>(rows * k);
  const size_t y_elems = static_cast<size_t>(rows * n);
  if (l.x.size() < x_elems) l.x.resize(x_elems);
  if (l.y.size() < y_elems) l.y.resize(y_elems);
  int64_t at = 0;
  for (const BatchSlice& s : slices) {
    std::memcpy(l.x.data() + at * k, s.x, static_cast<size_t>(s.rows * k) * sizeof(uint16_t));
    at += s.rows;
  }
  if (at != rows) {
    return absl::InternalError(absl::StrCat("batch slices hold ", at, " rows, expected ", rows));
  }
  if (absl::Status st = w.gemm().Run(l.x.data(), rows, l.y.data()); !st.ok()) return st;
  at = 0;
  for (const BatchSlice& s : slices) {
    std::memcpy(s.y, l.y.data() + at * n, static_cast<size_t>(s.rows * n) * sizeof(uint16_t));
    at += s.rows;
  }
  return absl::OkStatus();
}

}  // namespace marlin::backend
