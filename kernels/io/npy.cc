// .npy reading and writing. The header is a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// parsed here by a small strict tokenizer (no Python evaluation).
#include "kernels/io/npy.h"

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace marlin::io {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
constexpr int64_t kMaxDim = int64_t{1} << 62;

absl::Status Bad(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("malformed .npy: ", why));
}

// A cursor over the header dict text.
class HeaderParser {
 public:
  explicit HeaderParser(absl::string_view text) : text_(text) {}

  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Peek(char c) {
    SkipSpace();
    return pos_ < text_.size() && text_[pos_] == c;
  }
  bool AtEnd() {
    SkipSpace();
    return pos_ == text_.size();
  }
  // A '...' or "..." string without escapes.
  std::optional<std::string> String() {
    SkipSpace();
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) return std::nullopt;
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == absl::string_view::npos) return std::nullopt;
    std::string s(text_.substr(pos_, end - pos_));
    if (s.find('\\') != std::string::npos) return std::nullopt;
    pos_ = end + 1;
    return s;
  }
  std::optional<bool> Bool() {
    SkipSpace();
    for (const auto& [word, value] : {std::pair{"True", true}, std::pair{"False", false}}) {
      const absl::string_view w(word);
      if (text_.substr(pos_, w.size()) == w) {
        pos_ += w.size();
        return value;
      }
    }
    return std::nullopt;
  }
  // A non-negative integer (an optional trailing 'L' of Python 2 files is accepted).
  std::optional<int64_t> Int() {
    SkipSpace();
    int64_t v = 0;
    size_t digits = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const int digit = text_[pos_++] - '0';
      if (v > (kMaxDim - digit) / 10) return std::nullopt;
      v = v * 10 + digit;
      ++digits;
    }
    if (digits == 0) return std::nullopt;
    if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;
    return v;
  }
  // (d0, d1, ...) with an optional trailing comma; () is a scalar.
  std::optional<std::vector<int64_t>> Shape() {
    if (!Consume('(')) return std::nullopt;
    std::vector<int64_t> dims;
    while (!Consume(')')) {
      std::optional<int64_t> d = Int();
      if (!d) return std::nullopt;
      dims.push_back(*d);
      if (!Consume(',') && !Peek(')')) return std::nullopt;
    }
    return dims;
  }

 private:
  absl::string_view text_;
  size_t pos_ = 0;
};

struct Header {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<std::vector<int64_t>> shape;
};

absl::StatusOr<Header> ParseHeader(absl::string_view text) {
  HeaderParser p(text);
  Header h;
  if (!p.Consume('{')) return Bad("header is not a dict");
  while (!p.Consume('}')) {
    std::optional<std::string> key = p.String();
    if (!key) return Bad("expected a quoted key in the header");
    if (!p.Consume(':')) return Bad(absl::StrCat("expected ':' after '", *key, "'"));
    if (*key == "descr" && !h.descr) {
      h.descr = p.String();
      if (!h.descr) return Bad("'descr' must be a string such as '<f4'");
    } else if (*key == "fortran_order" && !h.fortran_order) {
      h.fortran_order = p.Bool();
      if (!h.fortran_order) return Bad("'fortran_order' must be True or False");
    } else if (*key == "shape" && !h.shape) {
      h.shape = p.Shape();
      if (!h.shape) return Bad("'shape' must be a tuple of non-negative integers");
    } else {
      return Bad(absl::StrCat("unexpected or repeated header key '", *key, "'"));
    }
    if (!p.Consume(',') && !p.Peek('}')) return Bad("expected ',' or '}' in the header");
  }
  if (!p.AtEnd()) return Bad("trailing characters after the header dict");
  if (!h.descr || !h.fortran_order || !h.shape) {
    return Bad("header must have 'descr', 'fortran_order' and 'shape'");
  }
  return h;
}

uint32_t ReadLe(absl::Span<const uint8_t> b, size_t at, int bytes) {
  uint32_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint32_t>(b[at + i]) << (8 * i);
  return v;
}

}  // namespace

absl::StatusOr<Tensor> ParseNpy(absl::Span<const uint8_t> bytes) {
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, kMagicSize) != 0) {
    return Bad("missing the \\x93NUMPY magic");
  }
  const int major = bytes[6];
  size_t start;
  uint64_t header_len;
  if (major == 1) {
    start = 10;
    header_len = ReadLe(bytes, 8, 2);
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad("truncated preamble");
    start = 12;
    header_len = ReadLe(bytes, 8, 4);
  } else {
    return Bad(absl::StrCat("unsupported format version ", major, ".", int{bytes[7]}));
  }
  if (header_len > bytes.size() - start) {
    return Bad(absl::StrCat("header length ", header_len, " runs past the end of the ",
                            bytes.size(), "-byte file"));
  }
  const absl::string_view text(reinterpret_cast<const char*>(bytes.data() + start), header_len);
  absl::StatusOr<Header> header = ParseHeader(text);
  if (!header.ok()) return header.status();
  if (*header->fortran_order) {
    return absl::InvalidArgumentError(
        "fortran_order=True (column-major) .npy files are not supported; save a C-order array "
        "(numpy.ascontiguousarray)");
  }
  const std::optional<DType> dtype = DTypeFromNpyDescr(*header->descr);
  if (!dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported .npy dtype '", *header->descr,
                     "' (little-endian bool, [u]int8/16/32/64, float16/32/64 are supported)"));
  }
  const uint64_t data_size = bytes.size() - start - header_len;
  absl::StatusOr<int64_t> count =
      CheckedNumElements(*header->shape, DTypeSize(*dtype), uint64_t{1} << 62);
  if (!count.ok()) return Bad(count.status().message());
  const uint64_t want = static_cast<uint64_t>(*count) * DTypeSize(*dtype);
  if (want != data_size) {
    return Bad(absl::StrCat("shape (", absl::StrJoin(*header->shape, ", "), ") of '",
                            *header->descr, "' needs ", want, " data bytes, file has ", data_size));
  }
  Tensor t;
  t.dtype = *dtype;
  t.shape = *std::move(header->shape);
  t.data.assign(bytes.begin() + start + header_len, bytes.end());
  return t;
}

absl::StatusOr<Tensor> ReadNpy(const std::string& path) {
  absl::StatusOr<std::vector<uint8_t>> bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<Tensor> t = ParseNpy(*bytes);
  if (!t.ok())
    return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  return t;
}

absl::StatusOr<std::vector<uint8_t>> SerializeNpy(const Tensor& tensor) {
  if (absl::Status st = tensor.Validate(); !st.ok()) return st;
  const std::optional<std::string> descr = NpyDescr(tensor.dtype);
  if (!descr) {
    return absl::InvalidArgumentError(
        absl::StrCat(SafetensorsDTypeName(tensor.dtype), " has no .npy equivalent"));
  }
  std::string shape = absl::StrJoin(tensor.shape, ", ");
  if (tensor.shape.size() == 1) shape += ",";
  std::string header =
      absl::StrCat("{'descr': '", *descr, "', 'fortran_order': False, 'shape': (", shape, "), }");
  // Pad with spaces and end with '\n' so the data starts at a multiple of 64 bytes.
  size_t preamble = 10;
  if (preamble + header.size() + 1 > 65535) preamble = 12;
  const size_t total = (preamble + header.size() + 1 + 63) / 64 * 64;
  header.append(total - preamble - header.size() - 1, ' ');
  header.push_back('\n');
  std::vector<uint8_t> out(kMagic, kMagic + kMagicSize);
  out.push_back(preamble == 10 ? 1 : 2);
  out.push_back(0);
  const uint32_t len = static_cast<uint32_t>(header.size());
  for (size_t i = 0; i < preamble - 8; ++i) out.push_back(static_cast<uint8_t>(len >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), tensor.data.begin(), tensor.data.end());
  return out;
}

absl::Status WriteNpy(const std::string& path, const Tensor& tensor) {
  absl::StatusOr<std::vector<uint8_t>> bytes = SerializeNpy(tensor);
  if (!bytes.ok()) return bytes.status();
  return WriteFileBytes(path, *bytes);
}

}  // namespace marlin::io
