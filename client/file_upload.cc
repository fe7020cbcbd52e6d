// Client uploads from tensor files (.npy, .safetensors), on top of Client::Upload.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"
#include "kernels/io/npy.h"
#include "kernels/io/safetensors.h"
#include "kernels/io/tensor.h"

namespace marlin {
namespace {

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

// The upload source of a 2-D F16/F32 tensor in `layout`.
absl::StatusOr<UploadSource> DenseSource(io::DType dtype, const std::vector<int64_t>& shape,
                                         absl::Span<const uint8_t> data, WeightLayout layout,
                                         absl::string_view what) {
  UploadSource source;
  if (dtype == io::DType::kF16) {
    source.kind = WeightSourceKind::kDenseFp16;
  } else if (dtype == io::DType::kF32) {
    source.kind = WeightSourceKind::kDenseFp32;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(what, ": dtype ",
                                                   io::SafetensorsDTypeName(dtype),
                                                   " is not a weight type (want F16 or F32)"));
  }
  if (shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shape ", ShapeText(shape), " is not 2-D"));
  }
  source.layout = layout;
  source.k = layout == WeightLayout::kKN ? shape[0] : shape[1];
  source.n = layout == WeightLayout::kKN ? shape[1] : shape[0];
  source.pieces.push_back(data);
  return source;
}

absl::StatusOr<io::TensorView> GptqTensor(const io::SafetensorsFile& file, const std::string& name,
                                          io::DType dtype, std::vector<int64_t> shape,
                                          const std::string& path) {
  absl::StatusOr<io::TensorView> view = file.View(name);
  if (!view.ok()) {
    return absl::NotFoundError(absl::StrCat(path, ": no GPTQ tensor '", name, "'"));
  }
  if (view->dtype != dtype) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", name, " has dtype ",
                                                   io::SafetensorsDTypeName(view->dtype), ", want ",
                                                   io::SafetensorsDTypeName(dtype)));
  }
  if (view->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", name, " has shape ", ShapeText(view->shape), ", want ", ShapeText(shape)));
  }
  return view;
}

}  // namespace

absl::StatusOr<WeightInfo> Client::UploadNpy(absl::string_view weight_id, const std::string& path,
                                             WeightLayout layout, const UploadOptions& options) {
  absl::StatusOr<io::Tensor> tensor = io::ReadNpy(path);
  if (!tensor.ok()) return Annotate(tensor.status(), absl::StrCat("upload ", weight_id));
  absl::StatusOr<UploadSource> source =
      DenseSource(tensor->dtype, tensor->shape, tensor->data, layout, path);
  if (!source.ok()) return source.status();
  return Upload(weight_id, *source, options);
}

absl::StatusOr<WeightInfo> Client::UploadSafetensors(absl::string_view weight_id,
                                                     const std::string& path,
                                                     const std::string& tensor, WeightLayout layout,
                                                     const UploadOptions& options) {
  absl::StatusOr<io::SafetensorsFile> file = io::ReadSafetensors(path);
  if (!file.ok()) return Annotate(file.status(), absl::StrCat("upload ", weight_id));
  absl::StatusOr<io::TensorView> view = file->View(tensor);
  if (!view.ok()) {
    std::vector<std::string> names = file->names();
    if (names.size() > 8) {
      names.resize(8);
      names.push_back("...");
    }
    return absl::NotFoundError(
        absl::StrCat(path, ": no tensor '", tensor, "' (it has ", absl::StrJoin(names, ", "), ")"));
  }
  absl::StatusOr<UploadSource> source =
      DenseSource(view->dtype, view->shape, view->data, layout, absl::StrCat(path, ":", tensor));
  if (!source.ok()) return source.status();
  return Upload(weight_id, *source, options);
}

absl::StatusOr<WeightInfo> Client::UploadGptqSafetensors(absl::string_view weight_id,
                                                         const std::string& path,
                                                         const std::string& prefix,
                                                         const UploadOptions& options) {
  absl::StatusOr<io::SafetensorsFile> file = io::ReadSafetensors(path);
  if (!file.ok()) return Annotate(file.status(), absl::StrCat("upload ", weight_id));
  const std::string qweight_name = absl::StrCat(prefix, ".qweight");
  absl::StatusOr<io::TensorView> qweight = file->View(qweight_name);
  if (!qweight.ok()) {
    return absl::NotFoundError(absl::StrCat(path, ": no GPTQ tensor '", qweight_name, "'"));
  }
  if (qweight->dtype != io::DType::kI32 || qweight->shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", qweight_name, " must be a 2-D I32 tensor [K/8, N], is ",
                     io::SafetensorsDTypeName(qweight->dtype), ShapeText(qweight->shape)));
  }
  const int64_t k = qweight->shape[0] * 8;
  const int64_t n = qweight->shape[1];
  const std::string scales_name = absl::StrCat(prefix, ".scales");
  absl::StatusOr<io::TensorView> scales_any = file->View(scales_name);
  if (!scales_any.ok()) {
    return absl::NotFoundError(absl::StrCat(path, ": no GPTQ tensor '", scales_name, "'"));
  }
  if (scales_any->shape.size() != 2 || scales_any->shape[0] <= 0 || k % scales_any->shape[0] != 0 ||
      n % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", scales_name, " has shape ",
                                                   ShapeText(scales_any->shape), ", want [K/G, ", n,
                                                   "] with K = ", k));
  }
  const int64_t groups = scales_any->shape[0];
  absl::StatusOr<io::TensorView> scales =
      GptqTensor(*file, scales_name, io::DType::kF16, {groups, n}, path);
  if (!scales.ok()) return scales.status();
  absl::StatusOr<io::TensorView> qzeros =
      GptqTensor(*file, absl::StrCat(prefix, ".qzeros"), io::DType::kI32, {groups, n / 8}, path);
  if (!qzeros.ok()) return qzeros.status();

  UploadSource source;
  source.kind = WeightSourceKind::kGptq;
  source.k = k;
  source.n = n;
  source.pieces = {qweight->data, scales->data, qzeros->data};
  const std::string g_idx_name = absl::StrCat(prefix, ".g_idx");
  if (file->contains(g_idx_name)) {
    absl::StatusOr<io::TensorView> g_idx =
        GptqTensor(*file, g_idx_name, io::DType::kI32, {k}, path);
    if (!g_idx.ok()) return g_idx.status();
    source.has_g_idx = true;
    source.pieces.push_back(g_idx->data);
  }
  UploadOptions opts = options;
  opts.group_size = groups == 1 ? kGroupSizePerChannel : static_cast<int32_t>(k / groups);
  return Upload(weight_id, source, opts);
}

}  // namespace marlin
