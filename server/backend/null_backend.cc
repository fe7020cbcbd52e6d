#include "server/backend/null_backend.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace marlin::backend {
namespace {

class NullWeight : public PreparedWeight {
 public:
  explicit NullWeight(const WeightShape& shape) : PreparedWeight(shape, 0) {}
};

}  // namespace

absl::StatusOr<std::unique_ptr<NullBackend>> NullBackend::Create(int lanes) {
  if (lanes < 1) return absl::InvalidArgumentError(absl::StrCat("lanes must be >= 1, got ", lanes));
  return std::unique_ptr<NullBackend>(new NullBackend(lanes));
}

absl::StatusOr<std::shared_ptr<const PreparedWeight>> NullBackend::Prepare(
    const PackedWeight& weight) {
  if (absl::Status st = ValidateShape(weight.shape); !st.ok()) return st;
  return std::make_shared<NullWeight>(weight.shape);
}

absl::Status NullBackend::Run(int lane, const PreparedWeight& weight,
                              absl::Span<const BatchSlice> slices, int64_t rows) {
  const int64_t n = weight.shape().n;
  for (const BatchSlice& s : slices) {
    std::memset(s.y, 0, static_cast<size_t>(s.rows * n) * sizeof(uint16_t));
  }
  return absl::OkStatus();
}

}  // namespace marlin::backend
