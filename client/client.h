// marlin::Client: the C++ client library of marlin-serve.
//
// One Client owns one gRPC channel that every call shares (it is thread-safe). The target is
// "host:port", any gRPC target URI ("dns:///name:port", "ipv4:..."), or several comma-separated
// "ip:port" addresses, which are balanced round-robin. Idempotent calls (GetWeight, ListWeights,
// ServerInfo, Matmul, Health) are retried with exponential backoff on UNAVAILABLE through the
// channel's service config; every call gets the default deadline unless CallOptions says otherwise.
//
//   marlin::ClientOptions options;
//   options.target = "localhost:50051";
//   ASSIGN_OR_RETURN(std::unique_ptr<marlin::Client> client, marlin::Client::Create(options));
//   ASSIGN_OR_RETURN(marlin::WeightInfo info,
//                    client->UploadNpy("layer0", "w.npy", marlin::WeightLayout::kKN, {}));
//   ASSIGN_OR_RETURN(marlin::MatmulResult y, client->Matmul("layer0", rows, x_fp16_bits));
//
// Concurrent requests on one connection are best sent through a MatmulStream (matmul_stream.h).
// The public headers expose no generated protobuf types.
//
// Sharded servers (a StatefulSet whose replica i owns the ids with FNV-1a-64(id) mod N == i, see
// docs/deploy.md): list every shard in order in ClientOptions::shard_peers instead of a target.
// The client then holds one channel per shard and sends each weight-id call (uploads, GetWeight,
// DeleteWeight, Matmul, every request of a MatmulStream) to the id's owner; ListWeights asks every
// shard and merges, Health is SERVING when every shard is, GetServerInfo asks shard 0. A shard
// that refuses an id as another shard's (FAILED_PRECONDITION naming the owner: the client's and
// the servers' peer lists disagree) is retried once at the named owner when the client lists it;
// otherwise the error says where the client sent the request.
//
//   options.shard_peers = {"marlin-server-0.marlin-server-headless:50051",
//                          "marlin-server-1.marlin-server-headless:50051"};
#ifndef MARLIN_CLIENT_CLIENT_H_
#define MARLIN_CLIENT_CLIENT_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace marlin {

class MatmulStream;
struct MatmulStreamOptions;

// TLS settings; PEM contents, not paths (see FromFiles). An empty root_ca_pem uses the system
// roots.
struct TlsOptions {
  std::string root_ca_pem;
  std::string client_cert_pem;  // mutual TLS: both or neither of cert and key
  std::string client_key_pem;
  std::string server_name_override;  // for certificates issued to another name (tests)

  // Reads the PEM files; empty paths are skipped.
  static absl::StatusOr<TlsOptions> FromFiles(const std::string& root_ca_path,
                                              const std::string& client_cert_path = "",
                                              const std::string& client_key_path = "");
};

struct RetryOptions {
  int max_attempts = 5;  // gRPC caps this at 5; 1 disables retries
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(2);
  double backoff_multiplier = 2.0;
};

struct ClientOptions {
  std::string target = "localhost:50051";
  std::optional<TlsOptions> tls;  // plaintext when unset
  std::string bearer_token;       // sent as "authorization: Bearer <token>" when not empty
  absl::Duration default_deadline = absl::Seconds(30);
  absl::Duration upload_deadline = absl::Minutes(10);
  RetryOptions retry;
  // "round_robin", "pick_first", or empty: round_robin for multi-address targets, else gRPC's.
  std::string load_balancing;
  int64_t max_receive_message_bytes = 256 << 20;
  // Channel reconnect backoff bounds (gRPC's defaults are 1 s .. 120 s).
  absl::Duration min_reconnect_backoff = absl::Milliseconds(100);
  absl::Duration max_reconnect_backoff = absl::Seconds(5);
  std::string user_agent_prefix;
  // Sharded servers: the address of shard i at index i (the servers' --shard-peers, in the same
  // order and count; the names may differ). When not empty, `target` is not used.
  std::vector<std::string> shard_peers;
  // Retry a request once at the owner a shard names in its refusal, when shard_peers lists it.
  bool shard_redirect = true;
};

// Cancels the calls it is attached to (CallOptions::cancel), also calls that start after Cancel().
class CancellationToken {
 public:
  CancellationToken() = default;
  CancellationToken(const CancellationToken&) = delete;
  CancellationToken& operator=(const CancellationToken&) = delete;

  void Cancel();
  bool cancelled() const;

  // Internal: a running call registers how to cancel it and unregisters when it completes.
  // Register returns 0 (and runs `cancel_fn` at once) when the token is already cancelled.
  // Unregister waits while another thread is running the call's `cancel_fn`, so the call's state
  // outlives it.
  uint64_t Register(std::function<void()> cancel_fn);
  void Unregister(uint64_t handle);

 private:
  mutable std::mutex mu_;         // std::mutex so that TSan sees it (docs/reliability.md)
  std::condition_variable idle_;  // notified when a cancel_fn has returned
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<std::pair<uint64_t, std::function<void()>>> active_ ABSL_GUARDED_BY(mu_);
  uint64_t running_ ABSL_GUARDED_BY(mu_) = 0;  // handle whose cancel_fn Cancel() is running
  std::thread::id running_thread_ ABSL_GUARDED_BY(mu_);
};

struct CallOptions {
  std::optional<absl::Duration> timeout;  // default: ClientOptions::default_deadline
  std::shared_ptr<CancellationToken> cancel;
  bool wait_for_ready = false;  // queue the call while the server is unreachable
};

enum class WeightLayout { kKN, kNK };
enum class WeightSourceKind { kDenseFp16, kDenseFp32, kGptq, kPacked };

inline constexpr int32_t kGroupSizePerChannel = -1;
inline constexpr size_t kUploadChunkBytes = 1 << 20;

// Upload progress: bytes of weight data sent so far of the total.
using UploadProgressFn = std::function<void(uint64_t sent_bytes, uint64_t total_bytes)>;

struct UploadOptions {
  int32_t group_size = 128;  // 128 or kGroupSizePerChannel (dense sources)
  bool replace = false;
  UploadProgressFn progress;
  CallOptions call;  // timeout default: ClientOptions::upload_deadline
  size_t chunk_bytes = kUploadChunkBytes;
};

struct WeightInfo {
  std::string weight_id;
  int64_t k = 0;
  int64_t n = 0;
  int32_t group_size = 0;
  uint64_t device_bytes = 0;
  absl::Time created = absl::InfinitePast();
  uint64_t requests_served = 0;
  uint64_t rows_served = 0;
  uint64_t version = 0;
};

struct ServerLimits {
  uint32_t max_rows_per_request = 0;
  uint64_t max_weight_bytes = 0;
  uint32_t max_weights = 0;
  uint64_t max_receive_message_bytes = 0;
  uint32_t max_in_flight_per_stream = 0;
};

struct ServerInfo {
  std::string version;
  std::string backend;  // "cuda", "cpu" or "null"
  std::string device_name;
  uint64_t device_memory_total = 0;
  uint64_t device_memory_free = 0;
  ServerLimits limits;
  uint32_t max_batch_rows = 0;
  uint64_t max_queue_delay_us = 0;
  uint64_t max_queue_rows = 0;
};

enum class HealthStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
absl::string_view HealthStatusName(HealthStatus status);

struct ServerTiming {
  uint64_t queue_us = 0;
  uint64_t compute_us = 0;
  uint32_t batch_rows = 0;
};

struct MatmulResult {
  uint32_t rows = 0;
  uint64_t n = 0;
  std::vector<uint16_t> output;  // rows x n FP16 bits, row-major
  ServerTiming timing;
};

using MatmulCallback = std::function<void(absl::StatusOr<MatmulResult>)>;

// A dense or GPTQ weight as raw tensors, for Upload(). Spans must outlive the call.
struct UploadSource {
  WeightSourceKind kind = WeightSourceKind::kDenseFp16;
  int64_t k = 0;
  int64_t n = 0;
  WeightLayout layout = WeightLayout::kKN;  // dense only
  bool has_g_idx = false;                   // GPTQ only
  // The data bytes, sent back to back in this order (GPTQ: qweight, scales, qzeros, g_idx).
  std::vector<absl::Span<const uint8_t>> pieces;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const ClientOptions& options() const { return options_; }
  // The gRPC target the channel was built with (after expanding multi-address lists); for a
  // sharded client, the shard peers joined by commas.
  const std::string& channel_target() const { return channel_target_; }

  // The number of shards (1 unless ClientOptions::shard_peers is set) and the shard that owns
  // `weight_id` (an index into shard_peers; 0 when unsharded).
  int shard_count() const;
  int ShardOf(absl::string_view weight_id) const;

  // ---- Weights ----
  absl::StatusOr<WeightInfo> Upload(absl::string_view weight_id, const UploadSource& source,
                                    const UploadOptions& options = {});
  absl::StatusOr<WeightInfo> UploadFp16(absl::string_view weight_id, int64_t k, int64_t n,
                                        absl::Span<const uint16_t> values, WeightLayout layout,
                                        const UploadOptions& options = {});
  absl::StatusOr<WeightInfo> UploadFp32(absl::string_view weight_id, int64_t k, int64_t n,
                                        absl::Span<const float> values, WeightLayout layout,
                                        const UploadOptions& options = {});
  // GPTQ tensors: qweight int32 [K/8, N], scales FP16 [K/G, N], qzeros int32 [K/G, N/8], g_idx
  // int32 [K] or empty. group_size comes from the scales' shape (-1 when there is one group).
  absl::StatusOr<WeightInfo> UploadGptq(absl::string_view weight_id, int64_t k, int64_t n,
                                        absl::Span<const int32_t> qweight,
                                        absl::Span<const uint16_t> scales,
                                        absl::Span<const int32_t> qzeros,
                                        absl::Span<const int32_t> g_idx,
                                        const UploadOptions& options = {});
  // A 2-D FP16 or FP32 .npy file; its shape is [K, N] for kKN and [N, K] for kNK.
  absl::StatusOr<WeightInfo> UploadNpy(absl::string_view weight_id, const std::string& path,
                                       WeightLayout layout, const UploadOptions& options = {});
  // One 2-D F16/F32 tensor of a .safetensors file.
  absl::StatusOr<WeightInfo> UploadSafetensors(absl::string_view weight_id, const std::string& path,
                                               const std::string& tensor, WeightLayout layout,
                                               const UploadOptions& options = {});
  // PREFIX.qweight, PREFIX.scales, PREFIX.qzeros and, when present, PREFIX.g_idx.
  absl::StatusOr<WeightInfo> UploadGptqSafetensors(absl::string_view weight_id,
                                                   const std::string& path,
                                                   const std::string& prefix,
                                                   const UploadOptions& options = {});

  absl::Status DeleteWeight(absl::string_view weight_id, const CallOptions& options = {});
  absl::StatusOr<WeightInfo> GetWeight(absl::string_view weight_id,
                                       const CallOptions& options = {});
  absl::StatusOr<std::vector<WeightInfo>> ListWeights(const CallOptions& options = {});

  // ---- Server ----
  absl::StatusOr<ServerInfo> GetServerInfo(const CallOptions& options = {});
  // grpc.health.v1 Check; service "" is the server as a whole.
  absl::StatusOr<HealthStatus> Health(absl::string_view service = "",
                                      const CallOptions& options = {});

  // ---- Matmul ----
  // activations: rows x K FP16 bits, row-major.
  absl::StatusOr<MatmulResult> Matmul(absl::string_view weight_id, uint32_t rows,
                                      absl::Span<const uint16_t> activations,
                                      const CallOptions& options = {});
  // Asynchronous: `done` runs once, on a gRPC thread (keep it short, never block in it, never
  // destroy the Client in it). The activations are copied before the call returns. ~Client
  // waits for the callbacks of calls still running.
  void MatmulAsync(absl::string_view weight_id, uint32_t rows,
                   absl::Span<const uint16_t> activations, MatmulCallback done,
                   const CallOptions& options = {});
  std::future<absl::StatusOr<MatmulResult>> MatmulAsync(absl::string_view weight_id, uint32_t rows,
                                                        absl::Span<const uint16_t> activations,
                                                        const CallOptions& options = {});

  // Opens a MatmulStream (matmul_stream.h) on this client's channel. Close or destroy every
  // stream before the Client.
  absl::StatusOr<std::unique_ptr<MatmulStream>> OpenStream(const MatmulStreamOptions& options);
  absl::StatusOr<std::unique_ptr<MatmulStream>> OpenStream();

  // Internal state (gRPC channel, stubs); defined in client.cc.
  struct Impl;

 private:
  Client(ClientOptions options, std::string channel_target, std::unique_ptr<Impl> impl);
  static absl::StatusOr<std::unique_ptr<Client>> CreateSharded(const ClientOptions& options);

  ClientOptions options_;
  std::string channel_target_;
  std::unique_ptr<Impl> impl_;
};

// The gRPC channel target for a user target: several comma-separated "ip:port" (or
// "localhost:port") addresses become "ipv4:a,b" / "ipv6:[a],[b]"; anything else is kept. Sets
// *multi_address when the target lists several addresses.
absl::StatusOr<std::string> ResolveChannelTarget(absl::string_view target, bool* multi_address);
// The JSON service config: load balancing and the retry policy of the idempotent methods.
std::string BuildServiceConfig(const ClientOptions& options, bool multi_address);

}  // namespace marlin

#endif  // MARLIN_CLIENT_CLIENT_H_
