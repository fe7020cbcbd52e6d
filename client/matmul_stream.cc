#include "client/matmul_stream.h"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "client/client_internal.h"

namespace marlin {

struct MatmulStream::State {
  Client::Impl* client = nullptr;
  MatmulStreamOptions options;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::MatmulRequest, v1::MatmulResponse>> rw;
  std::unique_ptr<CancelRegistration> registration;

  // std::mutex so that TSan sees it (docs/reliability.md). `changed` is notified whenever the
  // writer's or the reader's wait condition may have become true: queue, in_flight, closing,
  // read_done, write_done.
  mutable std::mutex mu;
  std::condition_variable changed;
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
      std::unique_lock<std::mutex> lock(mu);
      const uint32_t max = options.max_in_flight;
      changed.wait(lock, [this, max]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
        return read_done || (closing && queue.empty()) ||
               (!queue.empty() && (max == 0 || in_flight < max));
      });
      if (read_done) break;
      if (queue.empty()) {  // closing with nothing left to send
        lock.unlock();
        rw->WritesDone();
        break;
      }
      req = std::move(queue.front());
      queue.pop_front();
      ++in_flight;
    }
    if (!rw->Write(req)) break;  // the RPC is over; the reader reports its status
  }
  std::lock_guard<std::mutex> lock(mu);
  write_done = true;
  changed.notify_all();
}

void MatmulStream::State::ReaderLoop() {
  v1::MatmulResponse resp;
  while (rw->Read(&resp)) {
    MatmulCallback done;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = pending.find(resp.request_id());
      if (it == pending.end()) continue;  // not ours (or already failed): ignore
      done = std::move(it->second);
      pending.erase(it);
      if (in_flight > 0) --in_flight;
      changed.notify_all();
    }
    if (resp.has_status() && resp.status().code() != 0) {
      done(absl::Status(static_cast<absl::StatusCode>(resp.status().code()),
                        resp.status().message()));
    } else {
      done(FromProto(resp));
    }
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    read_done = true;
    changed.notify_all();
    // A writer blocked in Write() returns once the RPC is over; Finish() needs it out.
    changed.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return write_done; });
  }
  grpc::Status status = rw->Finish();
  std::vector<MatmulCallback> orphans;
  absl::Status final;
  {
    std::lock_guard<std::mutex> lock(mu);
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
  std::lock_guard<std::mutex> lock(mu);
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
    std::lock_guard<std::mutex> lock(state->mu);
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
    std::lock_guard<std::mutex> lock(state_->mu);
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
      state_->changed.notify_all();
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
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->closing = true;
    state_->changed.notify_all();
  }
  if (state_->sharded) {
    // Closing is set: no shard stream opens from now on, and the vector stays as it is.
    absl::Status first;
    std::vector<MatmulStream*> shards;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
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
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->final_status;
}

void MatmulStream::Cancel() {
  if (state_->sharded) {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->cancelled = true;
    for (const auto& shard : state_->shards) {
      if (shard != nullptr) shard->Cancel();
    }
    return;
  }
  state_->ctx.TryCancel();
}

uint64_t MatmulStream::pending() const {
  std::lock_guard<std::mutex> lock(state_->mu);
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
