// .safetensors parsing (strict, bounds-checked) and writing.
#include "kernels/io/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace marlin::io {
namespace {

using Json = nlohmann::json;

// Headers above this size are refused (the reference implementation's limit is 100 MB too).
constexpr uint64_t kMaxHeaderBytes = 100 << 20;
constexpr int kMaxJsonDepth = 16;

absl::Status Bad(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("malformed .safetensors: ", why));
}

// The deepest [ / { nesting outside strings: a cheap guard before handing text to the parser.
int JsonDepth(absl::string_view text) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

absl::StatusOr<std::vector<uint64_t>> UnsignedArray(const Json& j, absl::string_view what,
                                                    absl::string_view name) {
  if (!j.is_array()) return Bad(absl::StrCat("'", what, "' of tensor '", name, "' is not a list"));
  std::vector<uint64_t> out;
  for (const Json& v : j) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) {
      return Bad(
          absl::StrCat("'", what, "' of tensor '", name, "' must hold non-negative integers"));
    }
    out.push_back(v.get<uint64_t>());
  }
  return out;
}

}  // namespace

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(absl::Span<const uint8_t> bytes) {
  return Parse(std::vector<uint8_t>(bytes.begin(), bytes.end()));
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::vector<uint8_t> bytes) {
  if (bytes.size() < 8) return Bad("shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  if (header_len > bytes.size() - 8) {
    return Bad(absl::StrCat("header length ", header_len, " runs past the end of the ",
                            bytes.size(), "-byte file"));
  }
  if (header_len > kMaxHeaderBytes) return Bad(absl::StrCat("header of ", header_len, " bytes"));
  const absl::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), header_len);
  if (JsonDepth(text) > kMaxJsonDepth) return Bad("header JSON nested too deeply");
  const Json header = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return Bad("header is not valid JSON");
  if (!header.is_object()) return Bad("header is not a JSON object");

  SafetensorsFile file;
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = bytes.size() - data_start;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return Bad("'__metadata__' is not an object");
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) return Bad(absl::StrCat("metadata '", key, "' is not a string"));
        file.metadata_[key] = v.get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets")) {
      return Bad(absl::StrCat("tensor '", name, "' needs 'dtype', 'shape' and 'data_offsets'"));
    }
    const Json& dtype_json = value["dtype"];
    if (!dtype_json.is_string()) return Bad(absl::StrCat("dtype of '", name, "' is not a string"));
    const std::optional<DType> dtype = DTypeFromSafetensorsName(dtype_json.get<std::string>());
    if (!dtype) {
      return absl::InvalidArgumentError(absl::StrCat("unsupported safetensors dtype '",
                                                     dtype_json.get<std::string>(), "' of tensor '",
                                                     name, "'"));
    }
    absl::StatusOr<std::vector<uint64_t>> shape = UnsignedArray(value["shape"], "shape", name);
    if (!shape.ok()) return shape.status();
    absl::StatusOr<std::vector<uint64_t>> offsets =
        UnsignedArray(value["data_offsets"], "data_offsets", name);
    if (!offsets.ok()) return offsets.status();
    if (offsets->size() != 2)
      return Bad(absl::StrCat("data_offsets of '", name, "' is not [b, e]"));
    const uint64_t begin = (*offsets)[0], end = (*offsets)[1];
    if (begin > end || end > data_size) {
      return Bad(absl::StrCat("data_offsets [", begin, ", ", end, "] of '", name, "' outside the ",
                              data_size, " data bytes"));
    }
    std::vector<int64_t> dims;
    for (uint64_t d : *shape) {
      if (d > (uint64_t{1} << 62)) return Bad(absl::StrCat("dimension ", d, " of '", name, "'"));
      dims.push_back(static_cast<int64_t>(d));
    }
    absl::StatusOr<int64_t> count = CheckedNumElements(dims, DTypeSize(*dtype), data_size);
    if (!count.ok()) return Bad(absl::StrCat("tensor '", name, "': ", count.status().message()));
    if (end - begin != static_cast<uint64_t>(*count) * DTypeSize(*dtype)) {
      return Bad(absl::StrCat("tensor '", name, "' spans ", end - begin,
                              " bytes but its shape and ", dtype_json.get<std::string>(), " need ",
                              *count * DTypeSize(*dtype)));
    }
    ranges.emplace_back(begin, end);
    file.entries_[name] = Entry{*dtype, std::move(dims), data_start + begin, data_start + end};
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return Bad(absl::StrCat("tensor data ranges overlap at offset ", ranges[i].first));
    }
  }
  file.bytes_ = std::move(bytes);
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

bool SafetensorsFile::contains(absl::string_view name) const {
  return entries_.find(name) != entries_.end();
}

absl::StatusOr<TensorView> SafetensorsFile::View(absl::string_view name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("no tensor '", name, "'"));
  const Entry& e = it->second;
  return TensorView{e.dtype, e.shape,
                    absl::MakeConstSpan(bytes_.data() + e.begin, bytes_.data() + e.end)};
}

absl::StatusOr<Tensor> SafetensorsFile::Get(absl::string_view name) const {
  absl::StatusOr<TensorView> view = View(name);
  if (!view.ok()) return view.status();
  Tensor t;
  t.dtype = view->dtype;
  t.shape = view->shape;
  t.data.assign(view->data.begin(), view->data.end());
  return t;
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(absl::Span<const uint8_t> bytes) {
  return SafetensorsFile::Parse(bytes);
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  absl::StatusOr<std::vector<uint8_t>> bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(*std::move(bytes));
  if (!f.ok())
    return absl::Status(f.status().code(), absl::StrCat(path, ": ", f.status().message()));
  return f;
}

absl::StatusOr<std::vector<uint8_t>> SerializeSafetensors(
    const std::map<std::string, Tensor>& tensors,
    const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") return absl::InvalidArgumentError("'__metadata__' is reserved");
    if (absl::Status st = t.Validate(); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("tensor '", name, "': ", st.message()));
    }
    header[name] = {{"dtype", SafetensorsDTypeName(t.dtype)},
                    {"shape", t.shape},
                    {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::type_error&) {  // thrown for strings that are not valid UTF-8
    return absl::InvalidArgumentError("tensor names and metadata must be valid UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<uint8_t> out;
  out.reserve(8 + text.size() + offset);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i)));
  out.insert(out.end(), text.begin(), text.end());
  for (const auto& [name, t] : tensors) out.insert(out.end(), t.data.begin(), t.data.end());
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<std::vector<uint8_t>> bytes = SerializeSafetensors(tensors, metadata);
  if (!bytes.ok()) return bytes.status();
  return WriteFileBytes(path, *bytes);
}

}  // namespace marlin::io
