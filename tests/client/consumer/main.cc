// Uses the installed marlin_client package: builds a client, resolves a multi-address target, and
// makes a call to an address nobody serves (which must fail cleanly with UNAVAILABLE).
#include <cstdio>
#include <memory>

#include "client/client.h"
#include "client/matmul_stream.h"

int main() {
  marlin::ClientOptions options;
  options.target = "127.0.0.1:1";
  options.retry.max_attempts = 1;
  options.default_deadline = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<marlin::Client>> client = marlin::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "Create: %s\n", client.status().ToString().c_str());
    return 1;
  }
  bool multi = false;
  absl::StatusOr<std::string> target =
      marlin::ResolveChannelTarget("127.0.0.1:1,127.0.0.1:2", &multi);
  if (!target.ok() || !multi) return 2;
  absl::StatusOr<std::vector<marlin::WeightInfo>> weights = (*client)->ListWeights();
  if (weights.ok() || weights.status().code() != absl::StatusCode::kUnavailable) {
    std::fprintf(stderr, "ListWeights: unexpected %s\n", weights.status().ToString().c_str());
    return 3;
  }
  std::printf("consumer ok: %s\n", target->c_str());
  return 0;
}
