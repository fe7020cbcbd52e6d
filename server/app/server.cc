#include "server/app/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/app/fault_injection.h"
#include "server/auth/tls.h"
#include "server/auth/token_auth.h"
#include "server/logging/log.h"
#include "server/weight_store/weights_dir.h"

namespace marlin {

uint64_t MaxMessageBytesFor(int64_t max_rows_per_request) {
  const uint64_t request =
      static_cast<uint64_t>(std::max<int64_t>(max_rows_per_request, 1)) * kPlannedMaxK * 2;
  return std::max<uint64_t>(request, kMaxUploadChunkBytes) + kMessageOverheadBytes;
}

int AnswerThreadsFor(int requested) {
  if (requested >= 0) return requested;
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  return hw < 8 ? 0 : std::min(8, hw / 4);
}

namespace {

bool IsLoopback(absl::string_view listen) {
  return absl::StartsWith(listen, "127.") || absl::StartsWith(listen, "localhost:") ||
         absl::StartsWith(listen, "[::1]:") || absl::StartsWith(listen, "unix:");
}

}  // namespace

absl::StatusOr<std::unique_ptr<MarlinServer>> MarlinServer::Start(const ServerOptions& raw) {
  static std::once_flag grpc_globals;
  std::call_once(grpc_globals, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });
  auto s = std::unique_ptr<MarlinServer>(new MarlinServer(raw));
  const ServerOptions& options = s->options_;
  if (options.max_message_bytes > uint64_t{INT32_MAX}) {
    return absl::InvalidArgumentError("--max-message-bytes must be below 2 GiB");
  }
  if (options.max_message_bytes < kMaxUploadChunkBytes + kMessageOverheadBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-message-bytes must hold an upload chunk: at least ",
                     kMaxUploadChunkBytes + kMessageOverheadBytes, " bytes"));
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      auth::ServerCredentialsFromFiles(
          {.cert = options.tls_cert, .key = options.tls_key, .client_ca = options.tls_client_ca});
  if (!credentials.ok()) return credentials.status();
  if (!options.auth_tokens.empty()) {
    absl::StatusOr<std::unique_ptr<auth::TokenAuthenticator>> a =
        auth::TokenAuthenticator::FromFile(options.auth_tokens);
    if (!a.ok()) return a.status();
    s->auth_ = *std::move(a);
    if (options.tls_cert.empty() && !IsLoopback(options.listen)) {
      MARLIN_LOG(kWarning, "bearer tokens over plaintext on a non-loopback address")
          .Kv("listen", options.listen)
          .Kv("hint", "set --tls-cert and --tls-key");
    }
  }

  absl::StatusOr<sharding::ShardMap> shards =
      sharding::ShardMap::FromFlags(options.shard_peers, options.shard_index);
  if (!shards.ok()) return shards.status();

  absl::StatusOr<std::unique_ptr<backend::Backend>> backend =
      backend::CreateBackend({.kind = options.backend,
                              .lanes = options.cuda_streams,
                              .cpu_threads = options.cpu_threads,
                              .cuda_device = options.cuda_device,
                              .max_batch_rows = options.max_batch_rows,
                              .max_rows_per_request = options.max_rows_per_request});
  if (!backend.ok()) return backend.status();
  s->backend_ = WithInjectedFaults(*std::move(backend),
                                   {.fail_runs_after = options.inject_backend_fault_after,
                                    .fail_prepares_after = options.inject_upload_oom_after});
  if (options.inject_backend_fault_after >= 0 || options.inject_upload_oom_after >= 0) {
    MARLIN_LOG(kWarning, "TEST-ONLY fault injection is on")
        .Kv("inject_backend_fault_after", options.inject_backend_fault_after)
        .Kv("inject_upload_oom_after", options.inject_upload_oom_after);
  }

  absl::StatusOr<std::unique_ptr<ServerMetrics>> metrics = ServerMetrics::Create();
  if (!metrics.ok()) return metrics.status();
  s->metrics_ = *std::move(metrics);

  // Weights may take the device's free memory at start (or --device-memory-limit) minus headroom.
  const backend::DeviceMemory mem = s->backend_->memory();
  WeightStore::Options store_options{
      .max_weights = options.max_weights,
      .max_weight_bytes = options.max_weight_bytes,
      .capacity_bytes = options.device_memory_limit != 0 ? options.device_memory_limit : mem.free,
      .headroom_bytes = options.memory_headroom};
  if (s->backend_->name() == "null") {
    store_options.capacity_bytes = 0;  // holds nothing
    store_options.headroom_bytes = 0;
  }
  if (s->backend_->name() == "cuda") {
    backend::Backend* b = s->backend_.get();
    store_options.device_free = [b] { return b->memory().free; };
  }
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Create(store_options);
  if (!store.ok()) return store.status();
  s->store_ = *std::move(store);
  s->metrics_->SetDeviceMemory(mem.total, mem.free, 0);

  absl::StatusOr<std::unique_ptr<batcher::Batcher>> batcher =
      batcher::Batcher::Create({.max_batch_rows = options.max_batch_rows,
                                .max_queue_delay = absl::Microseconds(options.max_queue_delay_us),
                                .max_queue_rows = options.max_queue_rows,
                                .work_conserving = options.work_conserving});
  if (!batcher.ok()) return batcher.status();
  s->batcher_ = *std::move(batcher);

  absl::StatusOr<std::unique_ptr<MatmulServiceImpl>> service = MatmulServiceImpl::Create(
      {.version = options.version,
       .max_rows_per_request = options.max_rows_per_request,
       .max_in_flight_per_stream = options.max_in_flight_per_stream,
       .max_in_flight_per_connection = options.max_in_flight_per_connection,
       .max_receive_message_bytes = options.max_message_bytes,
       .upload_threads = options.upload_threads,
       .shard_map = *shards},
      {.backend = s->backend_.get(),
       .store = s->store_.get(),
       .batcher = s->batcher_.get(),
       .metrics = s->metrics_.get(),
       .auth = s->auth_.get()});
  if (!service.ok()) return service.status();
  s->service_ = *std::move(service);

  MarlinServer* self = s.get();
  absl::StatusOr<std::unique_ptr<BatchExecutor>> executor =
      BatchExecutor::Create(s->backend_.get(), s->batcher_.get(), s->metrics_.get(),
                            [self] {
                              self->unhealthy_ = true;
                              self->SetServing(false);
                            },
                            {.answer_threads = AnswerThreadsFor(options.answer_threads)});
  if (!executor.ok()) return executor.status();
  s->executor_ = *std::move(executor);

  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second server on the same port would then start fine and
  // silently take half the connections. One port, one server: a taken port fails the start.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(options.listen, *credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  if (options.max_connection_age > absl::ZeroDuration()) {
    auto ms = [](absl::Duration d) {
      return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), INT_MAX));
    };
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, ms(options.max_connection_age));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, ms(options.drain_timeout));
  }
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    s->batcher_->Close();
    return absl::UnavailableError(absl::StrCat("cannot listen on --listen=", options.listen));
  }
  s->SetServing(false);  // starting

  if (!options.metrics_listen.empty()) {
    absl::StatusOr<int> port = s->metrics_->Serve(options.metrics_listen);
    if (!port.ok()) {
      s->Shutdown();
      return port.status();
    }
    s->metrics_port_ = *port;
  }
  MARLIN_LOG(kInfo, "listening")
      .Kv("grpc", options.listen)
      .Kv("port", s->port_)
      .Kv("metrics_port", s->metrics_port_)
      .Kv("tls", options.tls_cert.empty()        ? "off"
                 : options.tls_client_ca.empty() ? "on"
                                                 : "mutual")
      .Kv("auth", s->auth_ != nullptr ? "tokens" : "off")
      .Kv("max_message_bytes", options.max_message_bytes)
      .Kv("backend", s->backend_->name())
      .Kv("device", s->backend_->device_name())
      .Kv("max_batch_rows", options.max_batch_rows)
      .Kv("max_queue_delay_us", options.max_queue_delay_us)
      .Kv("work_conserving", options.work_conserving)
      .Kv("answer_threads", AnswerThreadsFor(options.answer_threads))
      .Kv("max_queue_rows", options.max_queue_rows);
  if (!options.weights_dir.empty()) {
    if (absl::Status st = s->LoadWeightsDir(); !st.ok()) {
      s->Shutdown();
      return st;
    }
  }
  s->SetServing(true);
  MARLIN_LOG(kInfo, "serving").Kv("weights", s->store_->size());
  return s;
}

absl::Status MarlinServer::LoadWeightsDir() {
  const absl::Time start = absl::Now();
  int loaded = 0, skipped = 0;
  absl::StatusOr<sharding::ShardMap> shards =
      sharding::ShardMap::FromFlags(options_.shard_peers, options_.shard_index);
  absl::Status st = ForEachDirWeight(options_.weights_dir, [&](const DirWeight& w) {
    if (shards.ok() && !shards->IsLocal(w.id)) {
      ++skipped;
      return absl::OkStatus();
    }
    absl::StatusOr<WeightStore::Reservation> r =
        store_->Reserve(w.id, backend_->BytesFor(w.packed.shape), /*replace=*/false);
    if (!r.ok()) {
      return absl::Status(r.status().code(),
                          absl::StrCat(w.file, ": weight '", w.id, "': ", r.status().message()));
    }
    absl::StatusOr<std::shared_ptr<const Weight>> weight =
        InstallWeight(*backend_, *store_, metrics_.get(), w.id, w.packed, *std::move(r), false);
    if (!weight.ok()) return weight.status();
    ++loaded;
    return absl::OkStatus();
  });
  if (!st.ok()) {
    MARLIN_LOG(kError, "weights-dir load failed").Kv("dir", options_.weights_dir).Kv("error", st);
    return st;
  }
  MARLIN_LOG(kInfo, "weights-dir loaded")
      .Kv("dir", options_.weights_dir)
      .Kv("weights", loaded)
      .Kv("other_shards", skipped)
      .Kv("seconds", absl::ToDoubleSeconds(absl::Now() - start));
  return absl::OkStatus();
}

void MarlinServer::SetServing(bool serving) {
  if (server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  const bool value = serving && !unhealthy_.load();
  health->SetServingStatus(value);
  health->SetServingStatus(v1::MatmulService::service_full_name(), value);
}

void MarlinServer::Shutdown() {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  const absl::Time start = absl::Now();
  MARLIN_LOG(kInfo, "draining")
      .Kv("in_flight", service_->in_flight_requests())
      .Kv("drain_timeout_s", absl::ToDoubleSeconds(options_.drain_timeout));
  if (server_ != nullptr) {
    SetServing(false);
    if (auto* health = server_->GetHealthCheckService()) health->Shutdown();  // for good
  }
  service_->StartDrain();
  batcher_->Close();  // every queue is ready at once; new requests are refused
  const bool idle = service_->WaitIdle(start + options_.drain_timeout);
  int64_t aborted = 0;
  if (!idle) {
    aborted = batcher_->AbortAll(
        absl::UnavailableError("server shutting down: --drain-timeout passed before this ran"));
  }
  executor_->Join();  // running batches complete; closed and empty, the lanes exit
  service_->WaitIdle(absl::InfiniteFuture());
  service_->FinishStreams();
  // A stream ends once its answers are on the wire, which takes as long as its client takes to
  // read them; gRPC's shutdown deadline would cancel streams still writing and lose answers that
  // were given. So wait for them first, as long as the drain timeout allows (at least a grace).
  const absl::Time streams_deadline =
      std::max(start + options_.drain_timeout, absl::Now() + absl::Seconds(2));
  while (service_->open_streams() > 0 && absl::Now() < streams_deadline) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  if (server_ != nullptr) {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    server_->Wait();
  }
  MARLIN_LOG(kInfo, "drained")
      .Kv("answered_unavailable", aborted)
      .Kv("seconds", absl::ToDoubleSeconds(absl::Now() - start));
}

MarlinServer::~MarlinServer() {
  if (service_ != nullptr && batcher_ != nullptr && executor_ != nullptr) {
    Shutdown();
  } else if (batcher_ != nullptr) {
    batcher_->Close();
  }
}

}  // namespace marlin
