// CpuGemm: the weight re-laid as 64-column nibble panels plus float scales; one ParallelFor item
// per panel, so every output element is computed by one thread in one fixed order.
#include "kernels/cpu/cpu_gemm.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "kernels/cpu/cpu_gemm_kernels.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/format/weight_format.h"

namespace marlin {

using cpu_internal::kPanelN;
using cpu_internal::kPanelRowBytes;

namespace {
constexpr int kMaxThreads = 1024;
// Largest M * K and M * N accepted by Run (keeps every index far from overflow).
constexpr int64_t kMaxElements = int64_t{1} << 40;
}  // namespace

struct CpuGemm::Impl {
  WeightShape shape;
  CpuKernel kernel = CpuKernel::kPortable;
  std::vector<uint8_t> nibbles;  // N/64 panels of K rows of 32 bytes
  std::vector<float> scales;     // num_groups x N, logical order
  std::unique_ptr<ThreadPool> pool;
};

CpuGemm::CpuGemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CpuGemm::~CpuGemm() = default;

bool CpuGemm::Avx2Supported() { return cpu_internal::Avx2Supported(); }

absl::StatusOr<std::unique_ptr<CpuGemm>> CpuGemm::Create(const PackedWeight& packed,
                                                         int num_threads) {
  return Create(packed, CpuGemmOptions{.num_threads = num_threads, .kernel = CpuKernel::kAuto});
}

absl::StatusOr<std::unique_ptr<CpuGemm>> CpuGemm::Create(const PackedWeight& packed,
                                                         const CpuGemmOptions& options) {
  if (options.num_threads < 0 || options.num_threads > kMaxThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads must be in [0, ", kMaxThreads, "], got ", options.num_threads));
  }
  CpuKernel kernel = options.kernel;
  if (kernel == CpuKernel::kAuto) {
    kernel = Avx2Supported() ? CpuKernel::kAvx2 : CpuKernel::kPortable;
  } else if (kernel == CpuKernel::kAvx2 && !Avx2Supported()) {
    return absl::FailedPreconditionError("this CPU lacks AVX2, FMA or F16C");
  }
  // Unpack validates the shape and the sizes.
  absl::StatusOr<QuantizedWeight> logical = Unpack(packed);
  if (!logical.ok()) return logical.status();
  const WeightShape& shape = packed.shape;
  auto impl = std::make_unique<Impl>();
  impl->shape = shape;
  impl->kernel = kernel;
  impl->nibbles.resize(static_cast<size_t>(shape.k * shape.n / 2));
  for (int64_t p = 0; p < shape.n / kPanelN; ++p) {
    for (int64_t k = 0; k < shape.k; ++k) {
      const int8_t* q = &logical->q[k * shape.n + p * kPanelN];
      uint8_t* row = &impl->nibbles[(p * shape.k + k) * kPanelRowBytes];
      for (int64_t b = 0; b < kPanelRowBytes; ++b) {
        row[b] = static_cast<uint8_t>((q[b] + 8) | ((q[b + 32] + 8) << 4));
      }
    }
  }
  impl->scales.resize(logical->scales.size());
  for (size_t i = 0; i < logical->scales.size(); ++i) {
    impl->scales[i] = HalfToFloat(logical->scales[i]);
  }
  int threads = options.num_threads;
  if (threads == 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  impl->pool = std::make_unique<ThreadPool>(threads);
  return std::unique_ptr<CpuGemm>(new CpuGemm(std::move(impl)));
}

absl::Status CpuGemm::Run(const uint16_t* x, int64_t m, uint16_t* y) const {
  const WeightShape& shape = impl_->shape;
  if (m < 0) return absl::InvalidArgumentError(absl::StrCat("M must be >= 0, got ", m));
  if (m == 0) return absl::OkStatus();
  if (x == nullptr || y == nullptr) return absl::InvalidArgumentError("x and y must not be null");
  if (m > kMaxElements / shape.k || m > kMaxElements / shape.n) {
    return absl::InvalidArgumentError(
        absl::StrCat("M=", m, " is too large for K=", shape.k, " N=", shape.n));
  }
  const bool avx2 = impl_->kernel == CpuKernel::kAvx2;
  std::vector<float> xf(static_cast<size_t>(m * shape.k));
  (avx2 ? cpu_internal::HalfToFloatAvx2 : cpu_internal::HalfToFloatPortable)(x, m * shape.k,
                                                                             xf.data());
  const auto panel_fn = avx2 ? cpu_internal::PanelAvx2 : cpu_internal::PanelPortable;
  impl_->pool->ParallelFor(shape.n / kPanelN, [&](int64_t p) {
    std::vector<float> acc(static_cast<size_t>(m * kPanelN));
    cpu_internal::PanelArgs args;
    args.x = xf.data();
    args.m = m;
    args.k = shape.k;
    args.nibbles = impl_->nibbles.data() + p * shape.k * kPanelRowBytes;
    args.scales = impl_->scales.data() + p * kPanelN;
    args.scale_stride = shape.n;
    args.group_rows = shape.group_rows();
    args.acc = acc.data();
    args.y = y + p * kPanelN;
    args.y_stride = shape.n;
    panel_fn(args);
  });
  return absl::OkStatus();
}

const WeightShape& CpuGemm::shape() const { return impl_->shape; }

uint64_t CpuGemm::host_bytes() const {
  return impl_->nibbles.size() + impl_->scales.size() * sizeof(float);
}

CpuKernel CpuGemm::kernel() const { return impl_->kernel; }

int CpuGemm::num_threads() const { return impl_->pool->num_threads(); }

std::vector<double> ReferenceGemmF64(absl::Span<const uint16_t> x, int64_t m,
                                     const QuantizedWeight& w) {
  const int64_t k_dim = w.shape.k;
  const int64_t n_dim = w.shape.n;
  if (!ValidateShape(w.shape).ok() || m < 0 || x.size() != static_cast<uint64_t>(m * k_dim) ||
      w.q.size() != static_cast<uint64_t>(k_dim * n_dim) ||
      w.scales.size() != static_cast<uint64_t>(w.shape.num_groups() * n_dim)) {
    return {};
  }
  std::vector<double> deq(static_cast<size_t>(k_dim * n_dim));
  for (int64_t k = 0; k < k_dim; ++k) {
    for (int64_t n = 0; n < n_dim; ++n) {
      deq[k * n_dim + n] =
          DequantizeElement(w.q[k * n_dim + n], w.scales[(k / w.shape.group_rows()) * n_dim + n]);
    }
  }
  std::vector<double> out(static_cast<size_t>(m * n_dim), 0.0);
  for (int64_t i = 0; i < m; ++i) {
    double* row = &out[i * n_dim];
    for (int64_t k = 0; k < k_dim; ++k) {
      const double xv = HalfToFloat(x[i * k_dim + k]);
      const double* d = &deq[k * n_dim];
      for (int64_t n = 0; n < n_dim; ++n) row[n] += xv * d[n];
    }
  }
  return out;
}

}  // namespace marlin
