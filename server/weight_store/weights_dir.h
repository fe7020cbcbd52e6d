// Loading of --weights-dir: every weight found in a directory tree of .safetensors files, so
// replicas started from the same directory serve the same ids.
//
// Naming scheme (docs/server.md):
//   DIR/<path>.safetensors                  file stem <path> (relative, '/'-separated, no suffix)
//     tensor "weight"                       dense weight, id "<path>"
//     tensor "<p>.weight"                   dense weight, id "<path>/<p>"
//     tensors "qweight","scales","qzeros"[,"g_idx"]          GPTQ weight, id "<path>"
//     tensors "<p>.qweight","<p>.scales","<p>.qzeros"[,"<p>.g_idx"]  GPTQ, id "<path>/<p>"
//   Dense weights are F16 or F32, 2-D, [K, N] unless the file's metadata says
//   "marlin.layout": "nk" ([N, K], PyTorch nn.Linear.weight); "marlin.group_size": "128" (the
//   default) or "-1". GPTQ shapes give K, N and the group size. Other tensors (biases...) are
//   skipped. Ids must match [A-Za-z0-9._:/-]{1,128}.
//
//   RETURN_IF_ERROR(ForEachDirWeight(dir, [&](const DirWeight& w) -> absl::Status { ... }));
#ifndef MARLIN_SERVER_WEIGHT_STORE_WEIGHTS_DIR_H_
#define MARLIN_SERVER_WEIGHT_STORE_WEIGHTS_DIR_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "kernels/format/weight_format.h"

namespace marlin {

struct DirWeight {
  std::string id;
  std::string file;  // the .safetensors file it came from
  std::string kind;  // "dense-f16", "dense-f32" or "gptq"
  PackedWeight packed;
};

// Calls `fn` for each weight of `dir` in a stable order (files sorted, then ids). Stops at the
// first error: INVALID_ARGUMENT naming the file and tensor for malformed input, NOT_FOUND for a
// missing directory, or whatever `fn` returns.
absl::Status ForEachDirWeight(const std::string& dir,
                              const std::function<absl::Status(const DirWeight&)>& fn);

}  // namespace marlin

#endif  // MARLIN_SERVER_WEIGHT_STORE_WEIGHTS_DIR_H_
