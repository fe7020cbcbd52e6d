// The sharded mode of marlin::Client (ClientOptions::shard_peers): redirects and explanations of
// a shard's refusal, and the calls that ask every shard.
#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/client_internal.h"
#include "server/sharding/shard_map.h"

namespace marlin {
namespace {

absl::Status OnShard(const Client::Impl& impl, int index, const absl::Status& status) {
  return absl::Status(
      status.code(),
      absl::StrCat("shard ", index, " (", impl.shard_map.peers()[index], "): ", status.message()));
}

}  // namespace

std::optional<int> RedirectTarget(const Client::Impl& impl, const absl::Status& status,
                                  int routed) {
  if (!impl.options.shard_redirect) return std::nullopt;
  std::optional<sharding::Owner> named = sharding::OwnerFromStatus(status);
  if (!named.has_value()) return std::nullopt;
  const std::vector<std::string>& peers = impl.shard_map.peers();
  auto it = std::find(peers.begin(), peers.end(), named->address);
  if (it == peers.end()) return std::nullopt;
  const int index = static_cast<int>(it - peers.begin());
  if (index == routed) return std::nullopt;
  return index;
}

absl::Status ExplainMisroute(const Client::Impl& impl, absl::string_view weight_id,
                             const absl::Status& status) {
  if (!sharding::OwnerFromStatus(status).has_value()) return status;
  const int routed = impl.shard_map.OwnerIndex(weight_id);
  return absl::Status(
      status.code(),
      absl::StrCat(status.message(), " [the client routed \"", weight_id, "\" to shard ", routed,
                   " (", impl.shard_map.peers()[routed], ") of its ", impl.shard_map.size(),
                   " shard peers: the client's and the servers' --shard-peers disagree]"));
}

absl::StatusOr<std::vector<WeightInfo>> ShardedListWeights(const Client::Impl& impl,
                                                           const CallOptions& options) {
  std::vector<WeightInfo> merged;
  for (size_t i = 0; i < impl.shards.size(); ++i) {
    absl::StatusOr<std::vector<WeightInfo>> part = impl.shards[i]->ListWeights(options);
    if (!part.ok()) return OnShard(impl, static_cast<int>(i), part.status());
    merged.insert(merged.end(), std::make_move_iterator(part->begin()),
                  std::make_move_iterator(part->end()));
  }
  std::stable_sort(merged.begin(), merged.end(), [](const WeightInfo& a, const WeightInfo& b) {
    return a.weight_id < b.weight_id;
  });
  return merged;
}

absl::StatusOr<HealthStatus> ShardedHealth(const Client::Impl& impl, absl::string_view service,
                                           const CallOptions& options) {
  for (size_t i = 0; i < impl.shards.size(); ++i) {
    absl::StatusOr<HealthStatus> health = impl.shards[i]->Health(service, options);
    if (!health.ok()) return OnShard(impl, static_cast<int>(i), health.status());
    if (*health != HealthStatus::kServing) return *health;
  }
  return HealthStatus::kServing;
}

}  // namespace marlin
