// marlin.v1.MatmulService on gRPC's callback API: no thread per call, so hundreds of concurrent
// streams cost memory, not threads. Handlers validate, then hand matmul requests to the Batcher;
// executor threads answer them. Uploads are decoded and prepared on a small worker pool, off the
// gRPC threads.
//
// Every accepted request gets exactly one answer: a result, or a status (per request inside a
// MatmulStream). Draining (StartDrain) answers new work with UNAVAILABLE while accepted work
// finishes; FinishStreams then ends the open streams.
//
//   ASSIGN_OR_RETURN(auto service, MatmulServiceImpl::Create(options, deps));
//   builder.RegisterService(service.get());
#ifndef MARLIN_SERVER_SERVICE_MATMUL_SERVICE_H_
#define MARLIN_SERVER_SERVICE_MATMUL_SERVICE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "marlin/v1/matmul_service.grpc.pb.h"
#include "server/auth/token_auth.h"
#include "server/backend/backend.h"
#include "server/batcher/batcher.h"
#include "server/metrics/metrics.h"
#include "server/service/matmul_request.h"
#include "server/service/upload_assembler.h"
#include "server/sharding/shard_map.h"
#include "server/weight_store/weight_store.h"

namespace marlin {

struct ServiceOptions {
  std::string version = "0.1.0";
  int64_t max_rows_per_request = 1024;
  int64_t max_in_flight_per_stream = 256;  // more requests wait unread on the stream
  // Accepted matmul requests of one connection (client address) not yet answered, unary and
  // streamed together; beyond it requests are refused RESOURCE_EXHAUSTED. 0: unlimited.
  int64_t max_in_flight_per_connection = 16384;
  uint64_t max_receive_message_bytes = uint64_t{64} << 20;
  int upload_threads = 1;        // decode + prepare of uploads
  sharding::ShardMap shard_map;  // unsharded by default
};

struct ServiceDeps {
  backend::Backend* backend = nullptr;
  WeightStore* store = nullptr;
  batcher::Batcher* batcher = nullptr;
  ServerMetrics* metrics = nullptr;
  // Bearer tokens and roles; null: every caller may do everything (no --auth-tokens).
  const auth::TokenAuthenticator* auth = nullptr;
};

// Decodes, prepares and publishes a weight; shared by uploads and --weights-dir. `reservation`
// comes from store->Reserve with backend->BytesFor(shape).
absl::StatusOr<std::shared_ptr<const Weight>> InstallWeight(
    backend::Backend& backend, WeightStore& store, ServerMetrics* metrics, const std::string& id,
    const PackedWeight& packed, WeightStore::Reservation reservation, bool replace);

class MatmulServiceImpl final : public v1::MatmulService::CallbackService {
 public:
  static absl::StatusOr<std::unique_ptr<MatmulServiceImpl>> Create(const ServiceOptions& options,
                                                                   const ServiceDeps& deps);
  ~MatmulServiceImpl() override;

  grpc::ServerReadReactor<v1::UploadWeightRequest>* UploadWeight(
      grpc::CallbackServerContext* context, v1::WeightInfo* response) override;
  grpc::ServerUnaryReactor* DeleteWeight(grpc::CallbackServerContext* context,
                                         const v1::DeleteWeightRequest* request,
                                         v1::DeleteWeightResponse* response) override;
  grpc::ServerUnaryReactor* GetWeight(grpc::CallbackServerContext* context,
                                      const v1::GetWeightRequest* request,
                                      v1::WeightInfo* response) override;
  grpc::ServerUnaryReactor* ListWeights(grpc::CallbackServerContext* context,
                                        const v1::ListWeightsRequest* request,
                                        v1::ListWeightsResponse* response) override;
  grpc::ServerUnaryReactor* Matmul(grpc::CallbackServerContext* context,
                                   const v1::MatmulRequest* request,
                                   v1::MatmulResponse* response) override;
  grpc::ServerBidiReactor<v1::MatmulRequest, v1::MatmulResponse>* MatmulStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ServerInfo(grpc::CallbackServerContext* context,
                                       const v1::ServerInfoRequest* request,
                                       v1::ServerInfoResponse* response) override;

  // Answers new matmul requests and uploads with UNAVAILABLE from now on.
  void StartDrain();
  bool draining() const { return draining_.load(); }
  // Waits until every accepted matmul request has been answered, or `deadline`. True when idle.
  bool WaitIdle(absl::Time deadline);
  // Ends every open MatmulStream with UNAVAILABLE once its accepted requests are answered and
  // written (call after the drain).
  void FinishStreams();
  int64_t open_streams() const;
  int64_t in_flight_requests() const;

  // Filled into WeightInfo.
  static void FillWeightInfo(const Weight& weight, v1::WeightInfo* info);

 private:
  class UploadReactor;
  class UnaryMatmul;
  class StreamReactor;
  friend class UploadReactor;
  friend class UnaryMatmul;
  friend class StreamReactor;

  MatmulServiceImpl(const ServiceOptions& options, const ServiceDeps& deps)
      : options_(options), deps_(deps) {}

  // OK when the caller's token allows `permission` (always OK without --auth-tokens).
  absl::Status Authorize(const grpc::CallbackServerContext* context,
                         auth::Permission permission) const;
  // Checks a request and pins its weight. The status names the problem.
  absl::StatusOr<std::shared_ptr<const Weight>> Validate(const v1::MatmulRequest& request) const;
  // Accounting of accepted requests (for the drain, the in-flight metric and the per-connection
  // limit). Admit refuses (RESOURCE_EXHAUSTED) past --max-in-flight-per-connection; every
  // admitted request is later Answered with accepted = true and the same `peer`.
  absl::Status Admit(const std::string& peer, int64_t rows);
  void Answered(absl::string_view weight, absl::StatusCode code, int64_t rows, bool accepted,
                const std::string& peer = std::string());
  // Runs `task` on the upload workers.
  void PostUpload(std::function<void()> task);
  void UploadLoop();
  void RegisterStream(StreamReactor* stream);
  void UnregisterStream(StreamReactor* stream);

  const ServiceOptions options_;
  const ServiceDeps deps_;
  std::atomic<bool> draining_{false};

  // Locks are std::mutex, not absl::Mutex, so that ThreadSanitizer sees them (Debian's Abseil is
  // not TSan-instrumented); ABSL_GUARDED_BY documents what each guards.
  mutable std::mutex idle_mu_;
  std::condition_variable idle_cv_;                  // notified when in_flight_ drops to 0
  int64_t in_flight_ ABSL_GUARDED_BY(idle_mu_) = 0;  // accepted matmul requests not yet answered
  // The same per connection (peer address); entries are erased when they reach 0.
  std::map<std::string, int64_t> in_flight_by_peer_ ABSL_GUARDED_BY(idle_mu_);

  mutable std::mutex streams_mu_;
  std::set<StreamReactor*> streams_ ABSL_GUARDED_BY(streams_mu_);

  std::mutex upload_mu_;
  std::condition_variable upload_cv_;  // notified on a new task and on stop
  std::deque<std::function<void()>> upload_tasks_ ABSL_GUARDED_BY(upload_mu_);
  bool upload_stop_ ABSL_GUARDED_BY(upload_mu_) = false;
  std::vector<std::thread> upload_threads_;
};

// gRPC <-> absl status codes share their numbering.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace marlin

#endif  // MARLIN_SERVER_SERVICE_MATMUL_SERVICE_H_
