#include "server/weight_store/weights_dir.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/io/safetensors.h"
#include "server/weight_store/weight_store.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;

absl::Status Bad(const std::string& file, absl::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": tensor '", tensor, "': ", what));
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<DirWeight> LoadDense(const std::string& file, const io::SafetensorsFile& f,
                                    const std::string& tensor, DenseLayout layout,
                                    int32_t group_size) {
  absl::StatusOr<io::Tensor> t = f.Get(tensor);
  if (!t.ok()) return t.status();
  if (t->shape.size() != 2) {
    return Bad(file, tensor, absl::StrCat("dense weights are 2-D, got ", ShapeText(t->shape)));
  }
  WeightShape shape;
  shape.k = layout == DenseLayout::kKN ? t->shape[0] : t->shape[1];
  shape.n = layout == DenseLayout::kKN ? t->shape[1] : t->shape[0];
  shape.group_size = group_size;
  if (absl::Status st = ValidateShape(shape); !st.ok()) return Bad(file, tensor, st.message());
  DirWeight w;
  absl::StatusOr<QuantizedWeight> q;
  if (t->dtype == io::DType::kF16) {
    w.kind = "dense-f16";
    q = QuantizeFp16(t->ToVector<uint16_t>(), shape, layout);
  } else if (t->dtype == io::DType::kF32) {
    w.kind = "dense-f32";
    q = QuantizeFp32(t->ToVector<float>(), shape, layout);
  } else {
    return Bad(
        file, tensor,
        absl::StrCat("dense weights are F16 or F32, got ", io::SafetensorsDTypeName(t->dtype)));
  }
  if (!q.ok()) return Bad(file, tensor, q.status().message());
  absl::StatusOr<PackedWeight> packed = Pack(*q);
  if (!packed.ok()) return Bad(file, tensor, packed.status().message());
  w.packed = *std::move(packed);
  return w;
}

absl::StatusOr<DirWeight> LoadGptq(const std::string& file, const io::SafetensorsFile& f,
                                   const std::string& prefix) {
  auto get = [&](absl::string_view name, io::DType dtype,
                 size_t rank) -> absl::StatusOr<io::Tensor> {
    const std::string full = absl::StrCat(prefix, name);
    absl::StatusOr<io::Tensor> t = f.Get(full);
    if (!t.ok()) return Bad(file, full, "missing (GPTQ needs qweight, scales and qzeros)");
    if (t->dtype != dtype) {
      return Bad(file, full,
                 absl::StrCat("expected ", io::SafetensorsDTypeName(dtype), ", got ",
                              io::SafetensorsDTypeName(t->dtype)));
    }
    if (t->shape.size() != rank) {
      return Bad(file, full, absl::StrCat("expected ", rank, "-D, got ", ShapeText(t->shape)));
    }
    return t;
  };
  absl::StatusOr<io::Tensor> qweight = get("qweight", io::DType::kI32, 2);
  if (!qweight.ok()) return qweight.status();
  absl::StatusOr<io::Tensor> scales = get("scales", io::DType::kF16, 2);
  if (!scales.ok()) return scales.status();
  absl::StatusOr<io::Tensor> qzeros = get("qzeros", io::DType::kI32, 2);
  if (!qzeros.ok()) return qzeros.status();
  std::vector<int32_t> g_idx;
  if (f.contains(absl::StrCat(prefix, "g_idx"))) {
    absl::StatusOr<io::Tensor> g = get("g_idx", io::DType::kI32, 1);
    if (!g.ok()) return g.status();
    g_idx = g->ToVector<int32_t>();
  }
  WeightShape shape;
  shape.k = qweight->shape[0] * 8;
  shape.n = qweight->shape[1];
  const int64_t groups = scales->shape[0];
  if (groups < 1 || shape.k % groups != 0) {
    return Bad(file, absl::StrCat(prefix, "scales"),
               absl::StrCat(groups, " scale rows do not divide K = ", shape.k));
  }
  shape.group_size = groups == 1 ? kPerChannel : static_cast<int32_t>(shape.k / groups);
  const std::vector<int32_t> qw = qweight->ToVector<int32_t>();
  const std::vector<uint16_t> sc = scales->ToVector<uint16_t>();
  const std::vector<int32_t> qz = qzeros->ToVector<int32_t>();
  absl::StatusOr<QuantizedWeight> q = ImportGptq(shape, {qw, sc, qz, g_idx});
  if (!q.ok()) return Bad(file, absl::StrCat(prefix, "qweight"), q.status().message());
  absl::StatusOr<PackedWeight> packed = Pack(*q);
  if (!packed.ok()) return Bad(file, absl::StrCat(prefix, "qweight"), packed.status().message());
  DirWeight w;
  w.kind = "gptq";
  w.packed = *std::move(packed);
  return w;
}

absl::Status LoadFile(const fs::path& root, const fs::path& path,
                      const std::function<absl::Status(const DirWeight&)>& fn) {
  const std::string file = path.string();
  absl::StatusOr<io::SafetensorsFile> f = io::ReadSafetensors(file);
  if (!f.ok()) return absl::InvalidArgumentError(absl::StrCat(file, ": ", f.status().message()));
  std::string stem = fs::relative(path, root).replace_extension().generic_string();

  DenseLayout layout = DenseLayout::kKN;
  int32_t group_size = kDefaultGroupSize;
  const auto& meta = f->metadata();
  if (auto it = meta.find("marlin.layout"); it != meta.end()) {
    if (it->second == "nk") {
      layout = DenseLayout::kNK;
    } else if (it->second != "kn") {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": metadata marlin.layout must be \"kn\" or \"nk\", got \"", it->second, "\""));
    }
  }
  if (auto it = meta.find("marlin.group_size"); it != meta.end()) {
    if (!absl::SimpleAtoi(it->second, &group_size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": metadata marlin.group_size must be a number, got \"", it->second, "\""));
    }
  }
  // id -> (tensor or prefix, is_gptq)
  std::map<std::string, std::pair<std::string, bool>> found;
  for (const std::string& name : f->names()) {
    if (name == "weight") {
      found[stem] = {name, false};
    } else if (name == "qweight") {
      found[stem] = {"", true};
    } else if (absl::EndsWith(name, ".qweight")) {
      const std::string prefix = name.substr(0, name.size() - std::string("qweight").size());
      found[absl::StrCat(stem, "/", prefix.substr(0, prefix.size() - 1))] = {prefix, true};
    } else if (absl::EndsWith(name, ".weight")) {
      found[absl::StrCat(stem, "/", name.substr(0, name.size() - std::string(".weight").size()))] =
          {name, false};
    }
  }
  if (found.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": no weight tensors (\"weight\", \"<p>.weight\", \"qweight\" or ",
                     "\"<p>.qweight\"); see docs/server.md"));
  }
  for (const auto& [id, what] : found) {
    if (absl::Status st = ValidateWeightId(id); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": ", st.message()));
    }
    absl::StatusOr<DirWeight> w = what.second ? LoadGptq(file, *f, what.first)
                                              : LoadDense(file, *f, what.first, layout, group_size);
    if (!w.ok()) return w.status();
    w->id = id;
    w->file = file;
    if (absl::Status st = fn(*w); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ForEachDirWeight(const std::string& dir,
                              const std::function<absl::Status(const DirWeight&)>& fn) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("--weights-dir '", dir, "' is not a directory"));
  }
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_regular_file() && it->path().extension() == ".safetensors") {
      files.push_back(it->path());
    }
  }
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read --weights-dir '", dir, "': ", ec.message()));
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& path : files) {
    if (absl::Status st = LoadFile(dir, path, fn); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace marlin
