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
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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
  uint64_t max_message_bytes = uint64_t{64} << 20;
  uint64_t device_memory_limit = 0;  // 0: the device's free memory at start
  int upload_threads = 1;
  std::string shard_peers;  // --shard-peers (server/sharding); empty: unsharded
  int shard_index = 0;
  std::string version = "0.1.0";
};

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
  explicit MarlinServer(const ServerOptions& options) : options_(options) {}
  absl::Status LoadWeightsDir();
  void SetServing(bool serving);

  const ServerOptions options_;
  // Declared in dependency order: destroyed gRPC first, backend last.
  std::unique_ptr<backend::Backend> backend_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<WeightStore> store_;
  std::unique_ptr<batcher::Batcher> batcher_;
  std::unique_ptr<MatmulServiceImpl> service_;
  std::unique_ptr<BatchExecutor> executor_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  int metrics_port_ = 0;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  std::atomic<bool> unhealthy_{false};
};

}  // namespace marlin

#endif  // MARLIN_SERVER_APP_SERVER_H_
