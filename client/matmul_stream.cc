#include "client/matmul_stream.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/client_internal.h"

namespace marlin {

struct MatmulStream::State {
  Client::Impl* client = nullptr;
  MatmulStreamOptions options;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::MatmulRequest, v1::MatmulResponse>> rw;
  std::unique_ptr<CancelRegistration> registration;

  mutable absl::Mutex mu;
  std::deque<v1::MatmulRequest> queue ABSL_GUARDED_BY(mu);
  // Every submitted request not yet completed (queued or on the wire), by request_id.
  absl::flat_hash_map<uint64_t, MatmulCallback> pending ABSL_GUARDED_BY(mu);
  uint64_t in_flight ABSL_GUARDED_BY(mu) = 0;  // written, not answered
  uint64_t next_id ABSL_GUARDED_BY(mu) = 1;
  bool closing ABSL_GUARDED_BY(mu) = false;     // Close(): no more submits
  bool read_done ABSL_GUARDED_BY(mu) = false;   // the reader saw the end of the stream
  bool write_done ABSL_GUARDED_BY(mu) = false;  // the writer thread has exited
  bool ended ABSL_GUARDED_BY(mu) = false;       // Finish() returned; final_status is set
  absl::Status final_status ABSL_GUARDED_BY(mu);

  std::thread writer;
  std::thread reader;
  bool joined = false;  // only touched by Close/~MatmulStream (one owner)

  // Sharded clients: this stream has no RPC of its own but one stream per shard, opened on the
  // first request for that shard, and sends each request to its weight's owner.
  bool sharded = false;
  std::vector<std::unique_ptr<MatmulStream>> shards ABSL_GUARDED_BY(mu);
  bool cancelled ABSL_GUARDED_BY(mu) = false;  // Cancel(): no shard stream opens

  // The stream of the shard that owns `weight_id`, opened when needed; nullptr and `refused` set
  // once closing or when the shard's stream cannot open.
  MatmulStream* ShardStream(absl::string_view weight_id, absl::Status* refused);

  void WriterLoop();
  void ReaderLoop();
};

void MatmulStream::State::WriterLoop() {
  while (true) {
    v1::MatmulRequest req;
    {
      absl::MutexLock lock(&mu);
      const uint32_t max = options.max_in_flight;
      auto ready = [this, max]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
        return read_done || (closing && queue.empty()) ||
               (!queue.empty() && (max == 0 || in_flight < max));
      };
      mu.Await(absl::Condition(&ready));
      if (read_done) break;
      if (queue.empty()) {  // closing with nothing left to send
        mu.Unlock();
        rw->WritesDone();
        mu.Lock();
        break;
      }
      req = std::move(queue.front());
      queue.pop_front();
      ++in_flight;
    }
    if (!rw->Write(req)) break;  // the RPC is over; the reader reports its status
  }
  absl::MutexLock lock(&mu);
  write_done = true;
}

void MatmulStream::State::ReaderLoop() {
  v1::MatmulResponse resp;
  while (rw->Read(&resp)) {
    MatmulCallback done;
    {
      absl::MutexLock lock(&mu);
      auto it = pending.find(resp.request_id());
      if (it == pending.end()) continue;  // not ours (or already failed): ignore
      done = std::move(it->second);
      pending.erase(it);
      if (in_flight > 0) --in_flight;
    }
    if (resp.has_status() && resp.status().code() != 0) {
      done(absl::Status(static_cast<absl::StatusCode>(resp.status().code()),
                        resp.status().message()));
    } else {
      done(FromProto(resp));
    }
  }
  {
    absl::MutexLock lock(&mu);
    read_done = true;
    // A writer blocked in Write() returns once the RPC is over; Finish() needs it out.
    mu.Await(absl::Condition(&write_done));
  }
  grpc::Status status = rw->Finish();
  std::vector<MatmulCallback> orphans;
  absl::Status final;
  {
    absl::MutexLock lock(&mu);
    ended = true;
    final_status = FromGrpcStatus(status);
    final = final_status.ok() ? absl::AbortedError("matmul stream ended before the answer")
                              : final_status;
    for (auto& [id, done] : pending) orphans.push_back(std::move(done));
    pending.clear();
    queue.clear();
    in_flight = 0;
  }
  for (MatmulCallback& done : orphans) done(final);
}

MatmulStream* MatmulStream::State::ShardStream(absl::string_view weight_id, absl::Status* refused) {
  const int index = client->shard_map.OwnerIndex(weight_id);
  absl::MutexLock lock(&mu);
  if (closing || cancelled) {
    *refused = cancelled ? absl::CancelledError("matmul stream was cancelled")
                         : absl::FailedPreconditionError("matmul stream is closed");
    return nullptr;
  }
  if (shards[index] == nullptr) {
    absl::StatusOr<std::unique_ptr<MatmulStream>> stream =
        client->shards[index]->OpenStream(options);
    if (!stream.ok()) {
      *refused = stream.status();
      return nullptr;
    }
    shards[index] = *std::move(stream);
  }
  return shards[index].get();
}

absl::StatusOr<std::unique_ptr<MatmulStream>> MatmulStream::Create(
    Client::Impl* client, const MatmulStreamOptions& options) {
  if (client == nullptr) return absl::InvalidArgumentError("MatmulStream: no client");
  auto state = std::make_shared<State>();
  state->client = client;
  state->options = options;
  if (client->sharded()) {
    state->sharded = true;
    absl::MutexLock lock(&state->mu);
    state->shards.resize(client->shards.size());
    return std::unique_ptr<MatmulStream>(new MatmulStream(std::move(state)));
  }
  client->PrepareContext(&state->ctx, options.timeout, absl::InfiniteDuration(),
                         options.wait_for_ready);
  state->registration = std::make_unique<CancelRegistration>(options.cancel, &state->ctx);
  state->rw = client->stub->MatmulStream(&state->ctx);
  if (state->rw == nullptr) return absl::InternalError("MatmulStream: cannot start the RPC");
  State* s = state.get();
  s->writer = std::thread([s] { s->WriterLoop(); });
  s->reader = std::thread([s] { s->ReaderLoop(); });
  return std::unique_ptr<MatmulStream>(new MatmulStream(std::move(state)));
}

MatmulStream::MatmulStream(std::shared_ptr<State> state) : state_(std::move(state)) {}

MatmulStream::~MatmulStream() { Close().IgnoreError(); }

void MatmulStream::Submit(absl::string_view weight_id, uint32_t rows,
                          absl::Span<const uint16_t> activations, MatmulCallback done) {
  if (rows == 0 || activations.empty() || activations.size() % rows != 0) {
    done(absl::InvalidArgumentError(absl::StrCat(
        "matmul: ", activations.size(), " activation values are not ", rows, " rows of K values")));
    return;
  }
  if (state_->sharded) {
    absl::Status refused;
    MatmulStream* shard = state_->ShardStream(weight_id, &refused);
    if (shard == nullptr) {
      done(refused);
      return;
    }
    const Client::Impl* client = state_->client;
    shard->Submit(weight_id, rows, activations,
                  [client, id = std::string(weight_id),
                   done = std::move(done)](absl::StatusOr<MatmulResult> result) {
                    if (!result.ok()) result = ExplainMisroute(*client, id, result.status());
                    done(std::move(result));
                  });
    return;
  }
  v1::MatmulRequest req;
  req.set_weight_id(std::string(weight_id));
  req.set_rows(rows);
  req.set_activations(reinterpret_cast<const char*>(activations.data()),
                      activations.size() * sizeof(uint16_t));
  absl::Status refused;
  {
    absl::MutexLock lock(&state_->mu);
    if (state_->ended) {
      refused = state_->final_status.ok() ? absl::FailedPreconditionError("matmul stream has ended")
                                          : state_->final_status;
    } else if (state_->closing) {
      refused = absl::FailedPreconditionError("matmul stream is closed");
    } else {
      uint64_t id = state_->next_id++;
      req.set_request_id(id);
      state_->pending.emplace(id, std::move(done));
      // Once the reader saw the end, the request is never sent: it completes with the RPC's
      // final status when Finish() returns.
      if (!state_->read_done) state_->queue.push_back(std::move(req));
      return;
    }
  }
  done(refused);
}

std::future<absl::StatusOr<MatmulResult>> MatmulStream::Submit(
    absl::string_view weight_id, uint32_t rows, absl::Span<const uint16_t> activations) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<MatmulResult>>>();
  std::future<absl::StatusOr<MatmulResult>> future = promise->get_future();
  Submit(weight_id, rows, activations,
         [promise](absl::StatusOr<MatmulResult> result) { promise->set_value(std::move(result)); });
  return future;
}

absl::Status MatmulStream::Close() {
  {
    absl::MutexLock lock(&state_->mu);
    state_->closing = true;
  }
  if (state_->sharded) {
    // Closing is set: no shard stream opens from now on, and the vector stays as it is.
    absl::Status first;
    std::vector<MatmulStream*> shards;
    {
      absl::MutexLock lock(&state_->mu);
      for (const auto& shard : state_->shards) shards.push_back(shard.get());
    }
    for (size_t i = 0; i < shards.size(); ++i) {
      if (shards[i] == nullptr) continue;
      absl::Status s = shards[i]->Close();
      if (!s.ok() && first.ok()) {
        first = absl::Status(s.code(),
                             absl::StrCat("shard ", i, " (", state_->client->shard_map.peers()[i],
                                          "): ", s.message()));
      }
    }
    return first;
  }
  if (!state_->joined) {
    state_->joined = true;
    state_->writer.join();
    state_->reader.join();
    state_->registration.reset();
  }
  absl::MutexLock lock(&state_->mu);
  return state_->final_status;
}

void MatmulStream::Cancel() {
  if (state_->sharded) {
    absl::MutexLock lock(&state_->mu);
    state_->cancelled = true;
    for (const auto& shard : state_->shards) {
      if (shard != nullptr) shard->Cancel();
    }
    return;
  }
  state_->ctx.TryCancel();
}

uint64_t MatmulStream::pending() const {
  absl::MutexLock lock(&state_->mu);
  if (state_->sharded) {
    uint64_t total = 0;
    for (const auto& shard : state_->shards) {
      if (shard != nullptr) total += shard->pending();
    }
    return total;
  }
  return state_->pending.size();
}

}  // namespace marlin
