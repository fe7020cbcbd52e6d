// NumPy .npy files (format versions 1.0, 2.0 and 3.0): little-endian, C-order arrays of the dtypes
// in tensor.h except BF16. Fortran-order and big-endian files are refused with InvalidArgument,
// as is any malformed or truncated input (the parser never trusts sizes in the file).
//
//   ASSIGN_OR_RETURN(marlin::io::Tensor w, marlin::io::ReadNpy("weight.npy"));   // '<f2' etc.
//   RETURN_IF_ERROR(marlin::io::WriteNpy("out.npy", w));
#ifndef MARLIN_KERNELS_IO_NPY_H_
#define MARLIN_KERNELS_IO_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/io/tensor.h"

namespace marlin::io {

absl::StatusOr<Tensor> ParseNpy(absl::Span<const uint8_t> bytes);
absl::StatusOr<Tensor> ReadNpy(const std::string& path);

// Version 1.0 (2.0 when the header needs it), header padded to a multiple of 64 bytes.
absl::StatusOr<std::vector<uint8_t>> SerializeNpy(const Tensor& tensor);
absl::Status WriteNpy(const std::string& path, const Tensor& tensor);

}  // namespace marlin::io

#endif  // MARLIN_KERNELS_IO_NPY_H_
