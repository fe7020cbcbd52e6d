// A whole marlin-server: backend, weight store, batcher, executor, gRPC service with health and
// reflection, metrics endpoint, --weights-dir loading, and the drain. main.cc parses flags into
// ServerOptions; the end-to-end tests start it in-process on an ephemeral port.
//
//   ASSIGN_OR_RETURN(auto server, MarlinServer::Start({.listen = "127.0.0.1:0"}));
//   ... server->port() ...
//   server->Shutdown();  // what SIGTERM does
#ifndef MARLIN_SERVER_APP_SERVER_H_
#define MARLIN_SERVER_APP_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/auth/token_auth.h"
#include "server/backend/backend.h"
#include "server/batcher/batcher.h"
#include "server/metrics/metrics.h"
#include "server/service/executor.h"
#include "server/service/matmul_service.h"
#include "server/weight_store/weight_store.h"

namespace marlin {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9400";  // empty: no metrics endpoint
  std::string backend = "auto";                   // auto | cuda | cpu | null
  std::string weights_dir;                        // empty: start with no weights
  int64_t max_batch_rows = 64;
  int64_t max_queue_delay_us = 1000;
  int64_t max_queue_rows = 8192;
  // An idle lane takes waiting requests at once (server/batcher); false: batches close only when
  // full or after max_queue_delay_us.
  bool work_conserving = true;
  // Threads that write batches' answers back (server/service/executor.h); -1: automatic (none
  // below 8 hardware threads, else a quarter of them, at most 8).
  int answer_threads = -1;
  absl::Duration drain_timeout = absl::Seconds(30);
  // GOAWAY to a client connection this old (zero: never); its calls then get drain_timeout.
  absl::Duration max_connection_age = absl::ZeroDuration();
  uint64_t memory_headroom = uint64_t{1} << 30;
  int64_t max_rows_per_request = 1024;
  uint64_t max_weight_bytes = uint64_t{8} << 30;
  uint32_t max_weights = 256;
  int cuda_streams = 2;  // backend lanes: CUDA streams, or CPU worker lanes
  int cuda_device = 0;
  int cpu_threads = 0;
  int64_t max_in_flight_per_stream = 256;
  int64_t max_in_flight_per_connection = 16384;  // 0: unlimited
  // 0: sized for the largest request, MaxMessageBytesFor(max_rows_per_request).
  uint64_t max_message_bytes = 0;
  uint64_t device_memory_limit = 0;  // 0: the device's free memory at start
  int upload_threads = 1;
  std::string shard_peers;  // --shard-peers (server/sharding); empty: unsharded
  int shard_index = 0;
  std::string version = "0.1.0";
  // Security (server/auth): TLS when tls_cert and tls_key are set, mutual TLS with tls_client_ca;
  // bearer tokens with roles when auth_tokens names a token file.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  std::string auth_tokens;
  // Test-only fault injection (server/app/fault_injection.h); negative: off.
  int64_t inject_backend_fault_after = -1;
  int64_t inject_upload_oom_after = -1;
};

// The largest K the default message size is planned for (Llama-3-70B's MLP down projection has
// K = 28672). Weights with a larger K still work, with fewer rows per request.
inline constexpr uint64_t kPlannedMaxK = 32768;
// The default --max-message-bytes: a request of `max_rows_per_request` rows of K = kPlannedMaxK
// FP16 values (at least an upload chunk, 1 MiB) plus room for its other fields: 1024 x 32768 x 2
// + 64 KiB = 64 MiB + 64 KiB.
uint64_t MaxMessageBytesFor(int64_t max_rows_per_request);
// ServerOptions::answer_threads resolved: `requested` when >= 0, else none below 8 hardware
// threads (a hand-off costs more than it frees there) and a quarter of them above, at most 8.
int AnswerThreadsFor(int requested);

class MarlinServer {
 public:
  // Builds everything, listens, reports NOT_SERVING, loads --weights-dir, then reports SERVING.
  static absl::StatusOr<std::unique_ptr<MarlinServer>> Start(const ServerOptions& options);
  ~MarlinServer();  // Shutdown() if not done yet

  // The drain: health NOT_SERVING, new work answered UNAVAILABLE, accepted work finished within
  // the drain timeout, the rest answered UNAVAILABLE, streams ended, gRPC stopped. Idempotent.
  void Shutdown();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  backend::Backend& backend() { return *backend_; }
  WeightStore& store() { return *store_; }
  ServerMetrics& metrics() { return *metrics_; }
  MatmulServiceImpl& service() { return *service_; }
  batcher::Batcher& batcher() { return *batcher_; }
  const ServerOptions& options() const { return options_; }

 private:
  explicit MarlinServer(const ServerOptions& options) : options_(options) {
    if (options_.max_message_bytes == 0) {
      options_.max_message_bytes = MaxMessageBytesFor(options_.max_rows_per_request);
    }
  }
  absl::Status LoadWeightsDir();
  void SetServing(bool serving);

  ServerOptions options_;  // max_message_bytes resolved; constant after the constructor
  // Declared in dependency order: destroyed gRPC first, backend last.
  std::unique_ptr<backend::Backend> backend_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<auth::TokenAuthenticator> auth_;
  std::unique_ptr<WeightStore> store_;
  std::unique_ptr<batcher::Batcher> batcher_;
  std::unique_ptr<MatmulServiceImpl> service_;
  std::unique_ptr<BatchExecutor> executor_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  int metrics_port_ = 0;
  std::mutex shutdown_mu_;  // std::mutex so that TSan sees it (docs/reliability.md)
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  std::atomic<bool> unhealthy_{false};
};

}  // namespace marlin

#endif  // MARLIN_SERVER_APP_SERVER_H_
