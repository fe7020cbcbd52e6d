#include "server/service/matmul_service.h"

#include <chrono>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "server/logging/log.h"
#include "server/service/executor.h"
#include "server/service/matmul_request.h"
#include "server/service/upload_assembler.h"
#include "server/weight_store/weight_source.h"

namespace marlin {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline >= std::chrono::system_clock::now() + std::chrono::hours(24 * 365 * 10)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

void SetStatus(const absl::Status& status, v1::RequestStatus* out) {
  out->set_code(static_cast<int32_t>(status.code()));
  out->set_message(std::string(status.message()));
}

void SetTiming(const RunTiming& timing, v1::ServerTiming* out) {
  out->set_queue_us(
      static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Microseconds(timing.queued))));
  out->set_compute_us(static_cast<uint64_t>(absl::ToInt64Microseconds(timing.compute)));
  out->set_batch_rows(static_cast<uint32_t>(timing.batch_rows));
}

// A unary reactor that answers at once.
grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpc(status));
  return reactor;
}

// Streaming reactors that refuse a call before reading anything (authentication failures).
class RefusedUpload : public grpc::ServerReadReactor<v1::UploadWeightRequest> {
 public:
  explicit RefusedUpload(const absl::Status& status) { Finish(ToGrpc(status)); }
  void OnDone() override { delete this; }
};

class RefusedStream : public grpc::ServerBidiReactor<v1::MatmulRequest, v1::MatmulResponse> {
 public:
  explicit RefusedStream(const absl::Status& status) { Finish(ToGrpc(status)); }
  void OnDone() override { delete this; }
};

// OnDone of a reactor whose OnCancel only sets `cancelled`. gRPC calls OnDone after OnCancel has
// returned but orders the two inside libgrpc++, out of ThreadSanitizer's sight; loading the flag
// OnCancel stored shows TSan that order.
template <typename Reactor>
void DeleteAfterCancel(Reactor* reactor, const std::atomic<bool>& cancelled) {
  static_cast<void>(cancelled.load(std::memory_order_acquire));
  delete reactor;
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<std::shared_ptr<const Weight>> InstallWeight(
    backend::Backend& backend, WeightStore& store, ServerMetrics* metrics, const std::string& id,
    const PackedWeight& packed, WeightStore::Reservation reservation, bool replace) {
  absl::StatusOr<std::shared_ptr<const backend::PreparedWeight>> prepared = backend.Prepare(packed);
  if (!prepared.ok()) return prepared.status();
  absl::StatusOr<std::shared_ptr<const Weight>> weight =
      store.Publish(id, *std::move(prepared), std::move(reservation), replace);
  if (!weight.ok()) return weight.status();
  if (metrics != nullptr) {
    metrics->SetWeightBytes(id, (*weight)->prepared().device_bytes());
    const backend::DeviceMemory mem = backend.memory();
    metrics->SetDeviceMemory(mem.total, mem.free, store.accounted_bytes());
  }
  MARLIN_LOG(kInfo, "weight installed")
      .Kv("id", id)
      .Kv("version", (*weight)->version())
      .Kv("k", packed.shape.k)
      .Kv("n", packed.shape.n)
      .Kv("group_size", packed.shape.group_size)
      .Kv("device_bytes", (*weight)->prepared().device_bytes());
  return weight;
}

// ---- UploadWeight --------------------------------------------------------------------------

class MatmulServiceImpl::UploadReactor : public grpc::ServerReadReactor<v1::UploadWeightRequest> {
 public:
  UploadReactor(MatmulServiceImpl* service, v1::WeightInfo* response)
      : service_(service), response_(response) {
    StartRead(&message_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Complete();
      return;
    }
    absl::Status status = message_.has_header()  ? OnHeader(message_.header())
                          : message_.has_chunk() ? OnChunk(message_.chunk())
                                                 : absl::InvalidArgumentError(
                                                       "upload message has neither a header nor "
                                                       "a chunk");
    if (!status.ok()) {
      Fail(status);
      return;
    }
    message_.Clear();
    StartRead(&message_);
  }

  void OnCancel() override { cancelled_ = true; }
  void OnDone() override { DeleteAfterCancel(this, cancelled_); }

 private:
  absl::Status OnHeader(const v1::UploadHeader& h) {
    if (assembler_.have_header()) return absl::InvalidArgumentError("upload sent a second header");
    log_id_ = h.weight_id().substr(0, 128);
    if (service_->draining()) return absl::UnavailableError("server is shutting down");
    if (absl::Status st = ValidateWeightId(h.weight_id()); !st.ok()) return st;
    if (absl::Status st = service_->options_.shard_map.CheckOwner(h.weight_id()); !st.ok()) {
      return st;
    }
    if (absl::Status st = assembler_.OnHeader(h); !st.ok()) return st;
    absl::StatusOr<WeightStore::Reservation> reservation = service_->deps_.store->Reserve(
        h.weight_id(), service_->deps_.backend->BytesFor(assembler_.spec().shape), h.replace());
    if (!reservation.ok()) return reservation.status();
    reservation_ = *std::move(reservation);
    return absl::OkStatus();
  }

  absl::Status OnChunk(const std::string& chunk) { return assembler_.OnChunk(chunk); }

  // The client finished sending (or the call was cancelled).
  void Complete() {
    if (cancelled_) {
      Fail(absl::CancelledError("upload cancelled"));
      return;
    }
    if (absl::Status st = assembler_.CheckComplete(); !st.ok()) {
      Fail(st);
      return;
    }
    service_->PostUpload([this] { Install(); });
  }

  // On an upload worker.
  void Install() {
    absl::StatusOr<PackedWeight> packed = assembler_.Decode();
    if (!packed.ok()) {
      Fail(packed.status());
      return;
    }
    if (cancelled_) {
      Fail(absl::CancelledError("upload cancelled"));
      return;
    }
    if (service_->draining()) {
      Fail(absl::UnavailableError("server is shutting down"));
      return;
    }
    absl::StatusOr<std::shared_ptr<const Weight>> weight =
        InstallWeight(*service_->deps_.backend, *service_->deps_.store, service_->deps_.metrics,
                      assembler_.header().weight_id(), *packed, std::move(reservation_),
                      assembler_.header().replace());
    if (!weight.ok()) {
      Fail(weight.status());
      return;
    }
    FillWeightInfo(**weight, response_);
    service_->deps_.metrics->RecordUpload(absl::StatusCode::kOk);
    Finish(grpc::Status::OK);
  }

  void Fail(const absl::Status& status) {
    reservation_ = WeightStore::Reservation();  // nothing stays behind
    assembler_.Clear();
    service_->deps_.metrics->RecordUpload(status.code());
    if (status.code() != absl::StatusCode::kCancelled) {
      MARLIN_LOG(kInfo, "upload refused")
          .Kv("id", log_id_)
          .Kv("code", StatusCodeName(status.code()))
          .Kv("error", std::string(status.message()));
    }
    Finish(ToGrpc(status));
  }

  MatmulServiceImpl* const service_;
  v1::WeightInfo* const response_;
  std::atomic<bool> cancelled_{false};
  v1::UploadWeightRequest message_;
  UploadAssembler assembler_;
  std::string log_id_;                    // the id the header named, for logs (also when refused)
  WeightStore::Reservation reservation_;  // device bytes held from the header on
};

grpc::ServerReadReactor<v1::UploadWeightRequest>* MatmulServiceImpl::UploadWeight(
    grpc::CallbackServerContext* context, v1::WeightInfo* response) {
  if (absl::Status st = Authorize(context, auth::Permission::kWrite); !st.ok()) {
    deps_.metrics->RecordUpload(st.code());
    return new RefusedUpload(st);
  }
  return new UploadReactor(this, response);
}

// ---- Weights -------------------------------------------------------------------------------

void MatmulServiceImpl::FillWeightInfo(const Weight& weight, v1::WeightInfo* info) {
  info->set_weight_id(weight.id());
  info->set_k(weight.shape().k);
  info->set_n(weight.shape().n);
  info->set_group_size(weight.shape().group_size);
  info->set_device_bytes(weight.prepared().device_bytes());
  *info->mutable_created() =
      google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(weight.created()));
  info->set_requests_served(weight.requests_served());
  info->set_rows_served(weight.rows_served());
  info->set_version(weight.version());
}

grpc::ServerUnaryReactor* MatmulServiceImpl::DeleteWeight(grpc::CallbackServerContext* context,
                                                          const v1::DeleteWeightRequest* request,
                                                          v1::DeleteWeightResponse* response) {
  if (absl::Status st = Authorize(context, auth::Permission::kWrite); !st.ok()) {
    return FinishNow(context, st);
  }
  if (absl::Status st = ValidateWeightId(request->weight_id()); !st.ok()) {
    return FinishNow(context, st);
  }
  if (absl::Status st = options_.shard_map.CheckOwner(request->weight_id()); !st.ok()) {
    return FinishNow(context, st);
  }
  absl::Status st = deps_.store->Delete(request->weight_id());
  if (st.ok()) {
    deps_.metrics->RemoveWeight(request->weight_id());
    MARLIN_LOG(kInfo, "weight deleted").Kv("id", request->weight_id());
  }
  return FinishNow(context, st);
}

grpc::ServerUnaryReactor* MatmulServiceImpl::GetWeight(grpc::CallbackServerContext* context,
                                                       const v1::GetWeightRequest* request,
                                                       v1::WeightInfo* response) {
  if (absl::Status st = Authorize(context, auth::Permission::kRead); !st.ok()) {
    return FinishNow(context, st);
  }
  if (absl::Status st = ValidateWeightId(request->weight_id()); !st.ok()) {
    return FinishNow(context, st);
  }
  if (absl::Status st = options_.shard_map.CheckOwner(request->weight_id()); !st.ok()) {
    return FinishNow(context, st);
  }
  std::shared_ptr<const Weight> w = deps_.store->Get(request->weight_id());
  if (w == nullptr) {
    return FinishNow(context,
                     absl::NotFoundError(absl::StrCat("no weight '", request->weight_id(), "'")));
  }
  FillWeightInfo(*w, response);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* MatmulServiceImpl::ListWeights(grpc::CallbackServerContext* context,
                                                         const v1::ListWeightsRequest* request,
                                                         v1::ListWeightsResponse* response) {
  if (absl::Status st = Authorize(context, auth::Permission::kRead); !st.ok()) {
    return FinishNow(context, st);
  }
  for (const auto& w : deps_.store->List()) FillWeightInfo(*w, response->add_weights());
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* MatmulServiceImpl::ServerInfo(grpc::CallbackServerContext* context,
                                                        const v1::ServerInfoRequest* request,
                                                        v1::ServerInfoResponse* response) {
  if (absl::Status st = Authorize(context, auth::Permission::kRead); !st.ok()) {
    return FinishNow(context, st);
  }
  response->set_version(options_.version);
  response->set_backend(deps_.backend->name());
  response->set_device_name(deps_.backend->device_name());
  const backend::DeviceMemory mem = deps_.backend->memory();
  response->set_device_memory_total(mem.total);
  response->set_device_memory_free(mem.free);
  v1::Limits* limits = response->mutable_limits();
  limits->set_max_rows_per_request(static_cast<uint32_t>(options_.max_rows_per_request));
  limits->set_max_weight_bytes(deps_.store->options().max_weight_bytes);
  limits->set_max_weights(deps_.store->options().max_weights);
  limits->set_max_receive_message_bytes(options_.max_receive_message_bytes);
  limits->set_max_in_flight_per_stream(static_cast<uint32_t>(options_.max_in_flight_per_stream));
  v1::BatchingSettings* b = response->mutable_batching();
  const batcher::Options& bo = deps_.batcher->options();
  b->set_max_batch_rows(static_cast<uint32_t>(bo.max_batch_rows));
  b->set_max_queue_delay_us(static_cast<uint64_t>(absl::ToInt64Microseconds(bo.max_queue_delay)));
  b->set_max_queue_rows(static_cast<uint64_t>(bo.max_queue_rows));
  return FinishNow(context, absl::OkStatus());
}

// ---- Matmul --------------------------------------------------------------------------------

absl::Status MatmulServiceImpl::Authorize(const grpc::CallbackServerContext* context,
                                          auth::Permission permission) const {
  if (deps_.auth == nullptr) return absl::OkStatus();
  return deps_.auth->Authorize(context->client_metadata(), permission);
}

absl::StatusOr<std::shared_ptr<const Weight>> MatmulServiceImpl::Validate(
    const v1::MatmulRequest& request) const {
  if (draining()) return absl::UnavailableError("server is shutting down");
  if (!deps_.backend->healthy()) {
    return absl::UnavailableError("the device failed; this server no longer computes");
  }
  if (request.weight_id().empty()) return absl::InvalidArgumentError("weight_id is empty");
  if (absl::Status st = options_.shard_map.CheckOwner(request.weight_id()); !st.ok()) return st;
  std::shared_ptr<const Weight> weight = deps_.store->Get(request.weight_id());
  if (weight == nullptr) {
    // Echo at most 128 bytes of an id: it can be as long as a message.
    return absl::NotFoundError(
        absl::StrCat("no weight '", absl::CEscape(request.weight_id().substr(0, 128)), "'"));
  }
  if (absl::Status st = CheckMatmulRequest(request, weight->shape(), options_.max_rows_per_request,
                                           options_.max_receive_message_bytes);
      !st.ok()) {
    return st;
  }
  return weight;
}

absl::Status MatmulServiceImpl::Admit(const std::string& peer, int64_t rows) {
  {
    std::lock_guard<std::mutex> lock(idle_mu_);
    const int64_t limit = options_.max_in_flight_per_connection;
    if (limit > 0) {
      int64_t& n = in_flight_by_peer_[peer];
      if (n >= limit) {
        return absl::ResourceExhaustedError(
            absl::StrCat("this connection has ", limit,
                         " requests in flight, the --max-in-flight-per-connection limit"));
      }
      ++n;
    }
    ++in_flight_;
  }
  deps_.metrics->AddInFlightRows(rows);
  return absl::OkStatus();
}

void MatmulServiceImpl::Answered(absl::string_view weight, absl::StatusCode code, int64_t rows,
                                 bool accepted, const std::string& peer) {
  deps_.metrics->RecordRequest(weight, code, rows);
  if (!accepted) return;
  deps_.metrics->AddInFlightRows(-rows);
  std::lock_guard<std::mutex> lock(idle_mu_);
  // Notified under the lock: WaitIdle's caller may destroy the service as soon as it sees 0.
  if (--in_flight_ == 0) idle_cv_.notify_all();
  if (options_.max_in_flight_per_connection > 0) {
    auto it = in_flight_by_peer_.find(peer);
    if (it != in_flight_by_peer_.end() && --it->second <= 0) in_flight_by_peer_.erase(it);
  }
}

class MatmulServiceImpl::UnaryMatmul : public grpc::ServerUnaryReactor {
 public:
  UnaryMatmul(MatmulServiceImpl* service, grpc::CallbackServerContext* context,
              const v1::MatmulRequest* request, v1::MatmulResponse* response)
      : service_(service), context_(context), request_(request), response_(response) {}

  void Start() {
    absl::Status auth = service_->Authorize(context_, auth::Permission::kRead);
    absl::StatusOr<std::shared_ptr<const Weight>> weight =
        auth.ok() ? service_->Validate(*request_) : auth;
    if (!weight.ok()) {
      const std::string label = service_->deps_.store->Get(request_->weight_id()) != nullptr
                                    ? request_->weight_id()
                                    : std::string();
      service_->Answered(label, weight.status().code(), request_->rows(), false);
      Finish(ToGrpc(weight.status()));
      return;
    }
    const WeightShape& shape = (*weight)->shape();
    const int64_t rows = request_->rows();
    response_->set_request_id(request_->request_id());
    response_->set_rows(request_->rows());
    response_->set_n(static_cast<uint64_t>(shape.n));
    peer_ = context_->peer();
    if (absl::Status st = service_->Admit(peer_, rows); !st.ok()) {
      response_->Clear();
      service_->Answered((*weight)->id(), st.code(), rows, false);
      Finish(ToGrpc(st));
      return;
    }
    response_->mutable_output()->resize(static_cast<size_t>(rows * shape.n * 2));
    const std::string key = BatchKey(**weight);
    auto item = std::make_shared<MatmulItem>(
        *weight, request_->activations().data(), rows, response_->mutable_output()->data(),
        DeadlineOf(context_), &cancelled_,
        [this, id = (*weight)->id(), rows](const absl::Status& status, const RunTiming& timing) {
          if (status.ok()) {
            SetTiming(timing, response_->mutable_timing());
          } else {
            response_->Clear();
          }
          service_->Answered(id, status.code(), rows, true, peer_);
          Finish(ToGrpc(status));  // last: OnDone may delete this
        });
    if (absl::Status st = service_->deps_.batcher->Enqueue(key, item); !st.ok()) {
      item->Finish(st, RunTiming{});
    }
  }

  void OnCancel() override { cancelled_ = true; }
  void OnDone() override { DeleteAfterCancel(this, cancelled_); }

 private:
  MatmulServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;
  const v1::MatmulRequest* const request_;
  v1::MatmulResponse* const response_;
  std::string peer_;
  std::atomic<bool> cancelled_{false};
};

grpc::ServerUnaryReactor* MatmulServiceImpl::Matmul(grpc::CallbackServerContext* context,
                                                    const v1::MatmulRequest* request,
                                                    v1::MatmulResponse* response) {
  auto* reactor = new UnaryMatmul(this, context, request, response);
  reactor->Start();
  return reactor;
}

// ---- MatmulStream --------------------------------------------------------------------------

// Threading: OnReadDone, OnWriteDone and OnCancel run on gRPC threads, Deliver on executor
// threads, RequestFinish on the draining thread. All state is under mu_. gRPC operations are
// started outside it, because reactions may run inline, by Execute(), which is entered with mu_
// held and always leaves it released. `holds_` counts threads that touch the reactor outside mu_
// without being a gRPC reaction: Finish waits for it to drop to zero, and when OnDone comes while
// it is not zero the last holder deletes the reactor.
class MatmulServiceImpl::StreamReactor
    : public grpc::ServerBidiReactor<v1::MatmulRequest, v1::MatmulResponse> {
 public:
  StreamReactor(MatmulServiceImpl* service, grpc::CallbackServerContext* context)
      : service_(service), deadline_(DeadlineOf(context)), peer_(context->peer()) {
    service_->RegisterStream(this);
    mu_.lock();
    reading_ = true;
    mu_.unlock();
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    mu_.lock();
    if (!ok || finished_) {
      reading_ = false;
      reads_done_ = true;
      return Execute(NextActionsLocked());
    }
    processing_ = true;  // the stream must not finish before this request is answered
    mu_.unlock();
    auto call = std::make_shared<Call>(this);
    call->request = std::move(incoming_);  // a swap: the bytes are not copied
    incoming_.Clear();
    Process(call);
    mu_.lock();
    processing_ = false;
    reading_ = false;
    Execute(NextActionsLocked());
  }

  void OnWriteDone(bool ok) override {
    mu_.lock();
    writing_ = false;
    out_.pop_front();
    if (!ok) broken_ = true;
    Execute(NextActionsLocked());
  }

  void OnCancel() override {
    cancelled_ = true;
    mu_.lock();
    Execute(NextActionsLocked());
  }

  void OnDone() override {
    service_->UnregisterStream(this);
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      if (holds_ > 0) return;  // the last holder deletes
    }
    delete this;
  }

  // Called under the service's stream registry lock: keeps the reactor alive for RequestFinish.
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    ++holds_;
  }

  // Ends the stream with UNAVAILABLE once its accepted requests are answered and written; releases
  // the Hold().
  void RequestFinish() {
    mu_.lock();
    finish_requested_ = true;
    --holds_;
    if (done_ && holds_ == 0) {
      mu_.unlock();
      delete this;
      return;
    }
    Execute(NextActionsLocked());
  }

 private:
  // One request of the stream and its answer. It is also the batcher's item, so that a request
  // costs one allocation besides protobuf's strings (no separate item, completion closure or
  // answer message); it lives until its answer is written.
  class Call final : public MatmulItem, public std::enable_shared_from_this<Call> {
   public:
    explicit Call(StreamReactor* stream)
        : MatmulItem(stream->deadline_, &stream->cancelled_), stream_(stream) {}
    using MatmulItem::Bind;

    v1::MatmulRequest request;
    v1::MatmulResponse response;

   private:
    // From an answer thread, a lane, or wherever the request was aborted. The stream stays alive
    // until every accepted request is delivered.
    void Complete(const absl::Status& status, const RunTiming& timing) override {
      if (status.ok()) {
        SetTiming(timing, response.mutable_timing());
      } else {
        response.clear_output();
        response.set_rows(0);
        response.set_n(0);
        SetStatus(status, response.mutable_status());
      }
      stream_->service_->Answered(weight()->id(), status.code(), rows(), true, stream_->peer_);
      ReleaseWeight();  // the call lives on until its answer is written
      stream_->Deliver(shared_from_this());
    }

    StreamReactor* const stream_;
  };
  struct Actions {
    const v1::MatmulResponse* write = nullptr;
    bool read = false;
    bool finish = false;
    grpc::Status status;
  };

  void Process(const std::shared_ptr<Call>& call) {
    const v1::MatmulRequest& req = call->request;
    call->response.set_request_id(req.request_id());
    absl::StatusOr<std::shared_ptr<const Weight>> weight = service_->Validate(req);
    if (!weight.ok()) {
      const std::string label =
          service_->deps_.store->Get(req.weight_id()) != nullptr ? req.weight_id() : "";
      service_->Answered(label, weight.status().code(), req.rows(), false);
      SetStatus(weight.status(), call->response.mutable_status());
      std::lock_guard<std::mutex> lock(mu_);
      out_.push_back(call);
      return;
    }
    const int64_t rows = req.rows();
    const int64_t n = (*weight)->shape().n;
    call->response.set_rows(req.rows());
    call->response.set_n(static_cast<uint64_t>(n));
    if (absl::Status st = service_->Admit(peer_, rows); !st.ok()) {
      service_->Answered((*weight)->id(), st.code(), rows, false);
      call->response.set_rows(0);
      call->response.set_n(0);
      SetStatus(st, call->response.mutable_status());
      std::lock_guard<std::mutex> lock(mu_);
      out_.push_back(call);
      return;
    }
    // The backend scatters the result straight into the answer's bytes.
    call->response.mutable_output()->resize(static_cast<size_t>(rows * n * 2));
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++pending_;
    }
    const std::string key = BatchKey(**weight);
    call->Bind(*std::move(weight), req.activations().data(), rows,
               call->response.mutable_output()->data());
    if (absl::Status st = service_->deps_.batcher->Enqueue(key, call); !st.ok()) {
      call->Finish(st, RunTiming{});
    }
  }

  // An accepted request's answer (from an executor thread, or wherever it was aborted).
  void Deliver(std::shared_ptr<Call> call) {
    mu_.lock();
    --pending_;
    out_.push_back(std::move(call));
    Execute(NextActionsLocked());
  }

  Actions NextActionsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions a;
    if (finished_) return a;
    const bool dead = cancelled_.load() || broken_;
    if (dead) {
      // Nobody can receive them; keep only the one being written.
      const size_t keep = writing_ ? 1u : 0u;
      if (out_.size() > keep) {
        // Counted, and logged only at debug: a client that cancels is routine, not news.
        const int64_t dropped = static_cast<int64_t>(out_.size() - keep);
        service_->deps_.metrics->RecordDroppedAnswers(cancelled_.load(), dropped);
        MARLIN_LOG(kDebug, "stream gone; answers dropped")
            .Kv("answers", dropped)
            .Kv("cancelled", cancelled_.load())
            .Kv("write_failed", broken_);
      }
      while (out_.size() > keep) out_.pop_back();
    }
    if (!dead && !writing_ && !out_.empty()) {
      writing_ = true;
      a.write = &out_.front()->response;
    }
    const int64_t limit = service_->options_.max_in_flight_per_stream;
    if (!dead && !reading_ && !reads_done_ && !finish_requested_ &&
        pending_ + static_cast<int64_t>(out_.size()) < limit) {
      reading_ = true;
      a.read = true;
    }
    const bool ending = reads_done_ || finish_requested_ || dead;
    if (ending && !a.read && !processing_ && pending_ == 0 && !writing_ && out_.empty() &&
        holds_ == 0) {
      finished_ = true;
      a.finish = true;
      if (cancelled_.load()) {
        a.status = grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled");
      } else if (broken_) {
        a.status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream broken");
      } else if (finish_requested_ && !reads_done_) {
        a.status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down");
      } else {
        a.status = grpc::Status::OK;
      }
    }
    return a;
  }

  // Entered with mu_ held; leaves it released. Starts `a` and whatever follows from it. May delete
  // this: callers touch nothing afterwards.
  void Execute(Actions a) ABSL_UNLOCK_FUNCTION(mu_) {
    while (true) {
      if (a.finish) {
        mu_.unlock();
        Finish(a.status);  // OnDone may run and delete this
        return;
      }
      if (!a.read && !a.write) {
        mu_.unlock();
        return;
      }
      ++holds_;
      mu_.unlock();
      if (a.read) StartRead(&incoming_);
      if (a.write) StartWrite(a.write);
      mu_.lock();
      --holds_;
      if (done_ && holds_ == 0) {
        mu_.unlock();
        delete this;
        return;
      }
      a = NextActionsLocked();
    }
  }

  MatmulServiceImpl* const service_;
  const absl::Time deadline_;  // the stream's deadline applies to each of its requests
  const std::string peer_;     // the connection, for --max-in-flight-per-connection
  std::atomic<bool> cancelled_{false};
  v1::MatmulRequest incoming_;  // the read target; one read outstanding at a time

  std::mutex mu_;  // std::mutex, seen by TSan; no waits on it (nothing blocks in a reactor)
  std::deque<std::shared_ptr<Call>> out_ ABSL_GUARDED_BY(mu_);  // answers; front: writing
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool processing_ ABSL_GUARDED_BY(mu_) = false;  // OnReadDone is handling a request
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  int holds_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t pending_ ABSL_GUARDED_BY(mu_) = 0;  // accepted requests not yet answered
};

grpc::ServerBidiReactor<v1::MatmulRequest, v1::MatmulResponse>* MatmulServiceImpl::MatmulStream(
    grpc::CallbackServerContext* context) {
  if (absl::Status st = Authorize(context, auth::Permission::kRead); !st.ok()) {
    return new RefusedStream(st);
  }
  return new StreamReactor(this, context);
}

void MatmulServiceImpl::RegisterStream(StreamReactor* stream) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.insert(stream);
}

void MatmulServiceImpl::UnregisterStream(StreamReactor* stream) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.erase(stream);
}

int64_t MatmulServiceImpl::open_streams() const {
  std::lock_guard<std::mutex> lock(streams_mu_);
  return static_cast<int64_t>(streams_.size());
}

void MatmulServiceImpl::FinishStreams() {
  std::vector<StreamReactor*> held;
  {
    std::lock_guard<std::mutex> lock(streams_mu_);
    for (StreamReactor* s : streams_) {
      s->Hold();
      held.push_back(s);
    }
  }
  for (StreamReactor* s : held) s->RequestFinish();
}

// ---- Lifecycle -----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<MatmulServiceImpl>> MatmulServiceImpl::Create(
    const ServiceOptions& options, const ServiceDeps& deps) {
  if (deps.backend == nullptr || deps.store == nullptr || deps.batcher == nullptr ||
      deps.metrics == nullptr) {
    return absl::InvalidArgumentError("service needs a backend, a store, a batcher and metrics");
  }
  if (options.max_rows_per_request < 1) {
    return absl::InvalidArgumentError("--max-rows-per-request must be >= 1");
  }
  if (options.max_rows_per_request > deps.batcher->options().max_queue_rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-rows-per-request (", options.max_rows_per_request,
        ") must not exceed --max-queue-rows (", deps.batcher->options().max_queue_rows, ")"));
  }
  if (options.max_in_flight_per_connection < 0) {
    return absl::InvalidArgumentError("--max-in-flight-per-connection must be >= 0");
  }
  if (options.max_in_flight_per_stream < 1) {
    return absl::InvalidArgumentError("--max-in-flight-per-stream must be >= 1");
  }
  if (options.upload_threads < 1) return absl::InvalidArgumentError("upload_threads must be >= 1");
  auto service = std::unique_ptr<MatmulServiceImpl>(new MatmulServiceImpl(options, deps));
  for (int i = 0; i < options.upload_threads; ++i) {
    service->upload_threads_.emplace_back([s = service.get()] { s->UploadLoop(); });
  }
  return service;
}

MatmulServiceImpl::~MatmulServiceImpl() {
  {
    std::lock_guard<std::mutex> lock(upload_mu_);
    upload_stop_ = true;
  }
  upload_cv_.notify_all();
  for (std::thread& t : upload_threads_) t.join();
}

void MatmulServiceImpl::PostUpload(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(upload_mu_);
    upload_tasks_.push_back(std::move(task));
  }
  upload_cv_.notify_one();
}

void MatmulServiceImpl::UploadLoop() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(upload_mu_);
      upload_cv_.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(upload_mu_) {
        return upload_stop_ || !upload_tasks_.empty();
      });
      if (upload_tasks_.empty()) return;  // stopping and nothing left
      task = std::move(upload_tasks_.front());
      upload_tasks_.pop_front();
    }
    task();
  }
}

void MatmulServiceImpl::StartDrain() { draining_ = true; }

bool MatmulServiceImpl::WaitIdle(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(idle_mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(idle_mu_) { return in_flight_ == 0; };
  if (deadline == absl::InfiniteFuture()) {
    idle_cv_.wait(lock, idle);
    return true;
  }
  return idle_cv_.wait_until(lock, absl::ToChronoTime(deadline), idle);
}

int64_t MatmulServiceImpl::in_flight_requests() const {
  std::lock_guard<std::mutex> lock(idle_mu_);
  return in_flight_;
}

}  // namespace marlin
