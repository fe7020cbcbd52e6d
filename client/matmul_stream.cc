#include "client/matmul_stream.h"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "client/client_internal.h"

namespace marlin {

// The stream is gRPC's callback API (ClientBidiReactor), not the blocking one: no writer or
// reader thread per stream. Submit starts the write itself when none is in flight; OnWriteDone
// starts the next one, OnReadDone completes the answer's caller. With the blocking API every
// request and answer crossed two threads (the caller's, the stream's writer or reader, gRPC's
// executor that completes the blocking call), and 256 streams were 512 threads: the load
// generator spent more CPU than the server per request, most of it in wake-ups.
struct MatmulStream::State : public grpc::ClientBidiReactor<v1::MatmulRequest, v1::MatmulResponse> {
  Client::Impl* client = nullptr;
  MatmulStreamOptions options;
  grpc::ClientContext ctx;
  std::unique_ptr<CancelRegistration> registration;

  // What to start on the RPC once the lock is released (gRPC operations are never started under
  // it: a reaction may run inline and take it).
  struct Actions {
    bool write = false;        // StartWrite(&writing)
    bool writes_done = false;  // StartWritesDone()
    bool remove_hold = false;  // no write will ever start again
  };

  // std::mutex so that TSan sees it (docs/reliability.md). `done_cv` is notified once OnDone has
  // completed every open request.
  mutable std::mutex mu;
  std::condition_variable done_cv;
  std::deque<v1::MatmulRequest> queue ABSL_GUARDED_BY(mu);  // submitted, not yet written
  v1::MatmulRequest writing ABSL_GUARDED_BY(mu);  // the request gRPC is writing (one at a time)
  // Every submitted request not yet completed (queued or on the wire), by request_id.
  absl::flat_hash_map<uint64_t, MatmulCallback> pending ABSL_GUARDED_BY(mu);
  uint64_t in_flight ABSL_GUARDED_BY(mu) = 0;  // written, not answered
  uint64_t next_id ABSL_GUARDED_BY(mu) = 1;
  bool write_busy ABSL_GUARDED_BY(mu) = false;    // a StartWrite has no OnWriteDone yet
  bool write_failed ABSL_GUARDED_BY(mu) = false;  // a write failed: the RPC is over
  bool write_closed ABSL_GUARDED_BY(mu) = false;  // WritesDone sent or writes given up
  bool closing ABSL_GUARDED_BY(mu) = false;       // Close(): no more submits
  bool read_done ABSL_GUARDED_BY(mu) = false;     // the server ended the stream
  bool ended ABSL_GUARDED_BY(mu) = false;         // OnDone ran: final_status is set
  bool done ABSL_GUARDED_BY(mu) = false;          // OnDone returned: the RPC is gone
  absl::Status final_status ABSL_GUARDED_BY(mu);
  v1::MatmulResponse incoming;  // the read target; only OnReadDone touches it

  // Sharded clients: this stream has no RPC of its own but one stream per shard, opened on the
  // first request for that shard, and sends each request to its weight's owner.
  bool sharded = false;
  std::vector<std::unique_ptr<MatmulStream>> shards ABSL_GUARDED_BY(mu);
  bool cancelled ABSL_GUARDED_BY(mu) = false;  // Cancel(): no shard stream opens
  bool closed_once = false;                    // only touched by Close (one owner)

  // The stream of the shard that owns `weight_id`, opened when needed; nullptr and `refused` set
  // once closing or when the shard's stream cannot open.
  MatmulStream* ShardStream(absl::string_view weight_id, absl::Status* refused);

  // The next write, WritesDone or release of the write side, from the state under mu.
  Actions NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void Run(const Actions& a);

  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;
};

MatmulStream::State::Actions MatmulStream::State::NextLocked() {
  Actions a;
  if (sharded || write_busy || write_closed) return a;
  const uint32_t max = options.max_in_flight;
  if (read_done || write_failed) {
    write_closed = true;  // the RPC is over: what is queued completes in OnDone
    a.remove_hold = true;
  } else if (!queue.empty() && (max == 0 || in_flight < max)) {
    writing = std::move(queue.front());
    queue.pop_front();
    write_busy = true;
    ++in_flight;
    a.write = true;
  } else if (closing && queue.empty()) {
    write_closed = true;
    a.writes_done = true;
    a.remove_hold = true;
  }
  return a;
}

void MatmulStream::State::Run(const Actions& a) {
  // `writing` is not touched by anyone else until OnWriteDone, so it is safe without the lock.
  if (a.write) StartWrite(&writing);
  if (a.writes_done) StartWritesDone();
  if (a.remove_hold) RemoveHold();  // OnDone may run from here on
}

void MatmulStream::State::OnWriteDone(bool ok) {
  Actions a;
  {
    std::lock_guard<std::mutex> lock(mu);
    write_busy = false;
    if (!ok) write_failed = true;  // the read side sees the end and reports the status
    a = NextLocked();
  }
  Run(a);
}

void MatmulStream::State::OnReadDone(bool ok) {
  if (!ok) {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu);
      read_done = true;
      a = NextLocked();
    }
    Run(a);
    return;
  }
  MatmulCallback done;
  Actions a;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = pending.find(incoming.request_id());
    if (it != pending.end()) {  // else not ours (or already failed): ignore
      done = std::move(it->second);
      pending.erase(it);
      if (in_flight > 0) --in_flight;
      a = NextLocked();
    }
  }
  Run(a);
  // The caller's callback runs before the next read, so one stream's callbacks never overlap.
  if (done) {
    if (incoming.has_status() && incoming.status().code() != 0) {
      done(absl::Status(static_cast<absl::StatusCode>(incoming.status().code()),
                        incoming.status().message()));
    } else {
      done(FromProto(incoming));
    }
  }
  StartRead(&incoming);
}

void MatmulStream::State::OnDone(const grpc::Status& status) {
  {
    std::vector<MatmulCallback> orphans;
    absl::Status final;
    {
      std::lock_guard<std::mutex> lock(mu);
      ended = true;
      final_status = FromGrpcStatus(status);
      final = final_status.ok() ? absl::AbortedError("matmul stream ended before the answer")
                                : final_status;
      for (auto& [id, cb] : pending) orphans.push_back(std::move(cb));
      pending.clear();
      queue.clear();
      in_flight = 0;
    }
    for (MatmulCallback& cb : orphans) cb(final);
  }  // `final` shares final_status's payload: it and the callbacks go before `done` is published
  std::lock_guard<std::mutex> lock(mu);
  done = true;
  done_cv.notify_all();  // under the lock: Close may destroy this as soon as it sees `done`
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
  State* s = state.get();
  client->stub->async()->MatmulStream(&s->ctx, s);
  // Submit starts writes from outside the reactions: the hold keeps OnDone away until no write
  // can start any more (NextLocked releases it).
  s->AddHold();
  s->StartRead(&s->incoming);
  s->StartCall();
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
  State::Actions actions;
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
      // Once the RPC is over, the request is never sent: it completes with the RPC's final status
      // in OnDone.
      if (!state_->read_done && !state_->write_failed) state_->queue.push_back(std::move(req));
      actions = state_->NextLocked();
    }
  }
  if (refused.ok()) {
    state_->Run(actions);
    return;
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
  State::Actions actions;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->closing = true;
    actions = state_->NextLocked();
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
  state_->Run(actions);  // WritesDone when nothing is left to send
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->done_cv.wait(lock,
                       [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) { return state_->done; });
  if (!state_->closed_once) {
    state_->closed_once = true;
    state_->registration.reset();
  }
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
