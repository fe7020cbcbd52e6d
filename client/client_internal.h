// Internal to the client library (not installed): the shared channel and stubs behind
// marlin::Client, and the helpers its calls and MatmulStream use to prepare a grpc::ClientContext.
#ifndef MARLIN_CLIENT_CLIENT_INTERNAL_H_
#define MARLIN_CLIENT_CLIENT_INTERNAL_H_

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "marlin/v1/matmul_service.grpc.pb.h"
#include "server/sharding/shard_map.h"

namespace marlin {

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::MatmulService::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_stub;

  // Sharded (ClientOptions::shard_peers): one unsharded Client per shard, in shard order, and
  // the map that picks the owner of a weight id. The channel and stubs above are then unused.
  sharding::ShardMap shard_map;  // declared first: outlives the shards' last callbacks
  std::vector<std::unique_ptr<Client>> shards;
  bool sharded() const { return !shards.empty(); }
  // The shard that owns `weight_id` (sharded clients only).
  Client& Owner(absl::string_view weight_id) const {
    return *shards[shard_map.OwnerIndex(weight_id)];
  }

  // Asynchronous unary calls whose callback has not returned yet (~Client waits for them).
  std::mutex async_mu;                 // std::mutex so that TSan sees it (docs/reliability.md)
  std::condition_variable async_idle;  // notified, under async_mu, when the count drops to 0
  int64_t async_outstanding ABSL_GUARDED_BY(async_mu) = 0;

  // Applies deadline, wait-for-ready and the bearer token to `ctx`. `timeout` overrides
  // `default_timeout`; an infinite duration means no deadline.
  void PrepareContext(grpc::ClientContext* ctx, const std::optional<absl::Duration>& timeout,
                      absl::Duration default_timeout, bool wait_for_ready) const;
};

// Ties a running call's context to a CancellationToken for the call's lifetime.
class CancelRegistration {
 public:
  CancelRegistration(std::shared_ptr<CancellationToken> token, grpc::ClientContext* ctx);
  ~CancelRegistration();
  CancelRegistration(const CancelRegistration&) = delete;
  CancelRegistration& operator=(const CancelRegistration&) = delete;

 private:
  std::shared_ptr<CancellationToken> token_;
  uint64_t handle_ = 0;
};

absl::Status FromGrpcStatus(const grpc::Status& status);

// ---- Sharded clients (shard_routing.cc) ----

inline absl::Status StatusOf(const absl::Status& s) { return s; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// A shard's FAILED_PRECONDITION "weight ... is owned by shard j (addr)" refusal of a request the
// client sent to shard `routed` (by its own peer list): the index of the named owner among the
// client's peers, when it lists that address and it is not `routed`; else std::nullopt.
std::optional<int> RedirectTarget(const Client::Impl& impl, const absl::Status& status, int routed);
// `status` with the client's routing added when it is such a refusal (the peer lists of the
// client and the servers disagree); other statuses unchanged.
absl::Status ExplainMisroute(const Client::Impl& impl, absl::string_view weight_id,
                             const absl::Status& status);

// Runs `call(Client&)` (returning absl::Status or absl::StatusOr<T>) on the shard that owns
// `weight_id`, once more on the owner a refusal names (RedirectTarget), and explains a refusal
// that remains.
template <typename Call>
auto RouteToOwner(const Client::Impl& impl, absl::string_view weight_id, Call&& call) {
  const int owner = impl.shard_map.OwnerIndex(weight_id);
  auto result = call(*impl.shards[owner]);
  absl::Status status = StatusOf(result);
  if (status.code() != absl::StatusCode::kFailedPrecondition) return result;
  if (std::optional<int> other = RedirectTarget(impl, status, owner); other.has_value()) {
    result = call(*impl.shards[*other]);
    status = StatusOf(result);
  }
  if (!status.ok()) result = ExplainMisroute(impl, weight_id, status);
  return result;
}

// ListWeights of every shard, merged in weight id order; Health of every shard (SERVING when all
// are; otherwise the first shard's other answer or error).
absl::StatusOr<std::vector<WeightInfo>> ShardedListWeights(const Client::Impl& impl,
                                                           const CallOptions& options);
absl::StatusOr<HealthStatus> ShardedHealth(const Client::Impl& impl, absl::string_view service,
                                           const CallOptions& options);

// Converts a response message to the public result type.
MatmulResult FromProto(v1::MatmulResponse& response);

}  // namespace marlin

#endif  // MARLIN_CLIENT_CLIENT_INTERNAL_H_
