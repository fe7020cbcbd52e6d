#include "server/backend/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/logging/log.h"

namespace marlin::backend {
namespace {

constexpr size_t kAlign = 256;
size_t RoundUp(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

class CudaWeight : public PreparedWeight {
 public:
  CudaWeight(const WeightShape& shape, cuda::DeviceBuffer qweight, cuda::DeviceBuffer scales,
             cuda::DeviceLayout layout)
      : PreparedWeight(shape, qweight.size() + scales.size()),
        qweight_(std::move(qweight)),
        scales_(std::move(scales)),
        layout_(layout) {}
  cuda::DeviceWeight view() const {
    return cuda::DeviceWeight{qweight_.get(), scales_.as<__half>(), shape(), layout_};
  }

 private:
  cuda::DeviceBuffer qweight_;
  cuda::DeviceBuffer scales_;
  cuda::DeviceLayout layout_;  // how qweight_'s words lie (converted once, after the upload)
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const BackendOptions& options) {
  const int count = cuda::DeviceCount();
  if (count == 0) return absl::UnavailableError("--backend=cuda: no CUDA device is visible");
  if (options.cuda_device < 0 || options.cuda_device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", options.cuda_device, " out of range (", count, " visible)"));
  }
  if (options.lanes < 1) return absl::InvalidArgumentError("--cuda-streams must be >= 1");
  MARLIN_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.cuda_device));
  cudaDeviceProp prop{};
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, options.cuda_device));
  const int64_t rows = std::max(options.max_batch_rows, options.max_rows_per_request);
  // Initial staging for `rows` x 4096 in and out; grows on the first larger batch.
  const size_t initial = RoundUp(static_cast<size_t>(std::max<int64_t>(rows, 1)) * 4096 * 2);
  std::vector<std::unique_ptr<Lane>> lanes;
  for (int i = 0; i < options.lanes; ++i) {
    absl::StatusOr<cuda::Stream> stream = cuda::Stream::Create();
    if (!stream.ok()) return stream.status();
    absl::StatusOr<cuda::GemmWorkspace> ws = cuda::GemmWorkspace::Create(options.cuda_device);
    if (!ws.ok()) return ws.status();
    auto lane = std::unique_ptr<Lane>(new Lane{*std::move(stream), *std::move(ws), {}, {}, {}, {}});
    if (absl::Status st = Reserve(*lane, initial, initial); !st.ok()) return st;
    lanes.push_back(std::move(lane));
  }
  MARLIN_LOG(kInfo, "cuda backend ready")
      .Kv("device", options.cuda_device)
      .Kv("name", prop.name)
      .Kv("sm", prop.multiProcessorCount)
      .Kv("streams", options.lanes);
  if (!lanes.empty() && lanes.front()->workspace.cublas() == nullptr) {
    MARLIN_LOG(kWarning, "tall batches run on the kernels: no cuBLAS for the dequant-cublas path")
        .Kv("error", lanes.front()->workspace.cublas_status());
  }
  return std::unique_ptr<CudaBackend>(
      new CudaBackend(options.cuda_device, prop.name, std::move(lanes)));
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  for (auto& lane : lanes_) lane->stream.Synchronize().IgnoreError();
}

DeviceMemory CudaBackend::memory() const {
  DeviceMemory mem;
  size_t free = 0, total = 0;
  if (cudaSetDevice(device_) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess) {
    mem.total = total;
    mem.free = free;
  }
  return mem;
}

uint64_t CudaBackend::BytesFor(const WeightShape& shape) const {
  return RoundUp(static_cast<size_t>(shape.k * shape.n / 2)) +
         RoundUp(static_cast<size_t>(shape.num_groups() * shape.n) * sizeof(uint16_t));
}

absl::Status CudaBackend::Fail(absl::Status status) {
  if (!status.ok() && status.code() != absl::StatusCode::kInvalidArgument &&
      status.code() != absl::StatusCode::kResourceExhausted) {
    if (healthy_.exchange(false)) {
      MARLIN_LOG(kError, "cuda backend unhealthy; reporting NOT_SERVING").Kv("error", status);
    }
  }
  return status;
}

absl::StatusOr<std::shared_ptr<const PreparedWeight>> CudaBackend::Prepare(
    const PackedWeight& weight) {
  if (absl::Status st = ValidateShape(weight.shape); !st.ok()) return st;
  if (!healthy()) return absl::UnavailableError("CUDA device is unhealthy");
  MARLIN_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const size_t q_bytes = weight.qweight.size();
  const size_t s_bytes = weight.scales.size() * sizeof(uint16_t);
  absl::StatusOr<cuda::DeviceBuffer> q = cuda::DeviceBuffer::Create(RoundUp(q_bytes));
  if (!q.ok()) return Fail(q.status());
  absl::StatusOr<cuda::DeviceBuffer> s = cuda::DeviceBuffer::Create(RoundUp(s_bytes));
  if (!s.ok()) return Fail(s.status());
  // The upload runs on a stream of its own and is waited for: a cudaMemcpy from pageable memory
  // may return before its DMA lands, and the lanes' non-blocking streams do not wait for it.
  absl::StatusOr<cuda::Stream> upload = cuda::Stream::Create();
  if (!upload.ok()) return Fail(upload.status());
  if (absl::Status st = cuda::CudaStatus(cudaMemcpyAsync(q->get(), weight.qweight.data(), q_bytes,
                                                         cudaMemcpyHostToDevice, upload->get()),
                                         "cudaMemcpyAsync(qweight)");
      !st.ok()) {
    return Fail(st);
  }
  if (absl::Status st = cuda::CudaStatus(cudaMemcpyAsync(s->get(), weight.scales.data(), s_bytes,
                                                         cudaMemcpyHostToDevice, upload->get()),
                                         "cudaMemcpyAsync(scales)");
      !st.ok()) {
    return Fail(st);
  }
  // The words rearranged for the kernel path this device runs (the Hopper path reads them
  // without shared-memory bank conflicts in kWordMajorTiles).
  const cuda::DeviceLayout layout =
      cuda::FastestDeviceLayout(lanes_.front()->workspace.compute_capability());
  if (absl::Status st = cuda::ConvertDeviceLayout(
          q->get(), weight.shape, cuda::DeviceLayout::kPacked, layout, upload->get());
      !st.ok()) {
    return Fail(st);
  }
  if (absl::Status st = upload->Synchronize(); !st.ok()) return Fail(st);
  return std::make_shared<CudaWeight>(weight.shape, *std::move(q), *std::move(s), layout);
}

absl::Status CudaBackend::Reserve(Lane& lane, size_t x_bytes, size_t y_bytes) {
  auto grow = [](auto& buf, size_t bytes, auto create) -> absl::Status {
    if (buf.size() >= bytes) return absl::OkStatus();
    auto fresh = create(RoundUp(bytes));
    if (!fresh.ok()) return fresh.status();
    buf = *std::move(fresh);
    return absl::OkStatus();
  };
  auto pinned = [](size_t b) { return cuda::PinnedBuffer::Create(b); };
  auto device = [](size_t b) { return cuda::DeviceBuffer::Create(b); };
  if (absl::Status st = grow(lane.x_host, x_bytes, pinned); !st.ok()) return st;
  if (absl::Status st = grow(lane.y_host, y_bytes, pinned); !st.ok()) return st;
  if (absl::Status st = grow(lane.x_dev, x_bytes, device); !st.ok()) return st;
  return grow(lane.y_dev, y_bytes, device);
}

absl::Status CudaBackend::Run(int lane_index, const PreparedWeight& weight,
                              absl::Span<const BatchSlice> slices, int64_t rows) {
  if (lane_index < 0 || lane_index >= lanes()) {
    return absl::InvalidArgumentError(absl::StrCat("lane ", lane_index, " out of range"));
  }
  if (!healthy()) return absl::UnavailableError("CUDA device is unhealthy");
  const auto& w = static_cast<const CudaWeight&>(weight);
  Lane& lane = *lanes_[lane_index];
  const int64_t k = w.shape().k;
  const int64_t n = w.shape().n;
  const size_t x_bytes = static_cast<size_t>(rows * k) * 2;
  const size_t y_bytes = static_cast<size_t>(rows * n) * 2;
  MARLIN_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (absl::Status st = Reserve(lane, x_bytes, y_bytes); !st.ok()) return Fail(st);
  // Gather on the host while other lanes' kernels run.
  auto* x_host = lane.x_host.as<uint8_t>();
  size_t at = 0;
  for (const BatchSlice& s : slices) {
    const size_t bytes = static_cast<size_t>(s.rows * k) * 2;
    std::memcpy(x_host + at, s.x, bytes);
    at += bytes;
  }
  if (at != x_bytes) {
    return absl::InternalError(
        absl::StrCat("batch slices hold ", at, " bytes, expected ", x_bytes));
  }
  cudaStream_t stream = lane.stream.get();
  if (absl::Status st = cuda::CudaStatus(
          cudaMemcpyAsync(lane.x_dev.get(), x_host, x_bytes, cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync(H2D)");
      !st.ok()) {
    return Fail(st);
  }
  if (absl::Status st = cuda::Gemm(lane.x_dev.as<__half>(), rows, w.view(), lane.y_dev.as<__half>(),
                                   lane.workspace, stream);
      !st.ok()) {
    return Fail(st);
  }
  if (absl::Status st = cuda::CudaStatus(cudaMemcpyAsync(lane.y_host.get(), lane.y_dev.get(),
                                                         y_bytes, cudaMemcpyDeviceToHost, stream),
                                         "cudaMemcpyAsync(D2H)");
      !st.ok()) {
    return Fail(st);
  }
  if (absl::Status st = lane.stream.Synchronize(); !st.ok()) return Fail(st);
  const auto* y_host = lane.y_host.as<const uint8_t>();
  at = 0;
  for (const BatchSlice& s : slices) {
    const size_t bytes = static_cast<size_t>(s.rows * n) * 2;
    std::memcpy(s.y, y_host + at, bytes);
    at += bytes;
  }
  return absl::OkStatus();
}

}  // namespace marlin::backend
