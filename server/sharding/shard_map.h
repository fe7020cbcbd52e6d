// Static sharding of weight ids over the replicas of a StatefulSet.
//
// When one GPU cannot hold every weight, the server runs as a StatefulSet of N replicas and each
// weight id belongs to exactly one of them. The rule, shared by the server and the client:
//
//   owner(id) = Fnv1a64(id) mod N
//
// where Fnv1a64 is 64-bit FNV-1a over the id's bytes (offset basis 0xcbf29ce484222325, prime
// 0x100000001b3) and N is the number of replicas. Replica i is the StatefulSet pod with ordinal i,
// so the ordered list of peers is the list of the pods' stable DNS names:
//
//   marlin-server-0.marlin-server-headless:50051, marlin-server-1.marlin-server-headless:50051, ...
//
// Only the order and the count of the peers decide ownership, never the names themselves: a client
// may list the same pods by fully qualified names and routes identically. Changing N moves most ids
// to another owner (this is plain modulo hashing, not consistent hashing); resharding is therefore
// a redeploy with the weights reloaded, see docs/deploy.md.
//
// Server side:
//
//   ASSIGN_OR_RETURN(ShardMap map, ShardMap::FromFlags(flags.shard_peers, flags.shard_index));
//   RETURN_IF_ERROR(map.CheckOwner(request.weight_id()));  // FAILED_PRECONDITION naming the owner
//
// Client side:
//
//   ASSIGN_OR_RETURN(ShardMap map, ShardMap::Create(addresses));  // no self index
//   const std::string& target = map.OwnerAddress(weight_id);
#ifndef MARLIN_SERVER_SHARDING_SHARD_MAP_H_
#define MARLIN_SERVER_SHARDING_SHARD_MAP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace marlin::sharding {

// 64-bit FNV-1a of `bytes`. Stable across platforms and releases: it defines weight ownership.
uint64_t Fnv1a64(absl::string_view bytes);

// The index of the shard that owns `weight_id` among `shard_count` (>= 1) shards.
int ShardIndexOf(absl::string_view weight_id, int shard_count);

// The owner of a weight as named in a CheckOwner error.
struct Owner {
  int index = 0;
  std::string address;
};

// Which replica owns which weight id. Cheap to copy; immutable after creation.
class ShardMap {
 public:
  // The `self` index of a process that is not one of the shards (a client).
  static constexpr int kClient = -1;

  // An unsharded map: one shard, this process, owning every id.
  ShardMap() = default;

  // `peers[i]` is the address of shard i (StatefulSet ordinal i); `self` is this process's index
  // among them, or kClient. Fails with INVALID_ARGUMENT on an empty list, an empty or duplicate
  // address, or a `self` out of range.
  static absl::StatusOr<ShardMap> Create(std::vector<std::string> peers, int self = kClient);

  // From the server's flags: `peers_csv` is --shard-peers (comma-separated, whitespace around
  // entries ignored) and `self` is --shard-index. An empty --shard-peers gives the unsharded map
  // (and then --shard-index must be 0 or kClient).
  static absl::StatusOr<ShardMap> FromFlags(absl::string_view peers_csv, int self);

  // The number of shards (1 when unsharded).
  int size() const { return peers_.empty() ? 1 : static_cast<int>(peers_.size()); }
  bool sharded() const { return !peers_.empty(); }
  // This process's shard index (0 when unsharded), or kClient.
  int self() const { return self_; }
  // The peers' addresses in shard order; empty when unsharded.
  const std::vector<std::string>& peers() const { return peers_; }

  // The shard index that owns `weight_id`.
  int OwnerIndex(absl::string_view weight_id) const;
  // The address of the shard that owns `weight_id`; empty when unsharded.
  const std::string& OwnerAddress(absl::string_view weight_id) const;
  // Whether this process owns `weight_id` (always true when unsharded, false for a client).
  bool IsLocal(absl::string_view weight_id) const;

  // OK when this process owns `weight_id`. Otherwise FAILED_PRECONDITION whose message names the
  // owner, in a form that OwnerFromStatus() parses:
  //   weight "w" is owned by shard 2 (marlin-server-2.marlin-server-headless:50051), this is shard
  //   0
  absl::Status CheckOwner(absl::string_view weight_id) const;

 private:
  ShardMap(std::vector<std::string> peers, int self) : peers_(std::move(peers)), self_(self) {}

  std::vector<std::string> peers_;
  int self_ = 0;
};

// The owner named by a CheckOwner() error, or std::nullopt when `status` is not one (any other code
// or message). The CheckOwner() text may follow a caller's prefix ("upload w: weight \"w\" is
// ..."). Lets a client that holds a stale or partial peer list redirect a refused request.
std::optional<Owner> OwnerFromStatus(const absl::Status& status);

// The StatefulSet ordinal at the end of a pod's hostname: "marlin-server-2" -> 2. For servers that
// derive --shard-index from the hostname rather than from the pod-index label. INVALID_ARGUMENT
// when the name does not end in "-<digits>".
absl::StatusOr<int> OrdinalFromHostname(absl::string_view hostname);

}  // namespace marlin::sharding

#endif  // MARLIN_SERVER_SHARDING_SHARD_MAP_H_
