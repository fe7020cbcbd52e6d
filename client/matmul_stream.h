// marlin::MatmulStream: many Matmul requests in flight on one MatmulStream RPC.
//
// Submit() assigns the request a request_id, queues it and returns at once; queued requests are
// written one after the other (at most `max_in_flight` unanswered at a time) and answers are
// matched to their requests by request_id (they may arrive out of order) to complete the caller's
// future or run its callback. There are no threads of the stream's own: writes start on the
// submitting thread or on gRPC's callback threads, and callbacks run on gRPC's callback threads,
// one at a time per stream. Any number of threads may Submit concurrently; callbacks may Submit
// again (never Close: Close waits for the stream's last callback).
// When the RPC ends (error, server shutdown, Cancel), every request still open completes with the
// RPC's status, and later Submits fail at once.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<marlin::MatmulStream> stream, client->OpenStream());
//   std::future<absl::StatusOr<marlin::MatmulResult>> f = stream->Submit("layer0", rows, x);
//   ASSIGN_OR_RETURN(marlin::MatmulResult y, f.get());
//   RETURN_IF_ERROR(stream->Close());
#ifndef MARLIN_CLIENT_MATMUL_STREAM_H_
#define MARLIN_CLIENT_MATMUL_STREAM_H_

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/client.h"

namespace marlin {

struct MatmulStreamOptions {
  // Unanswered requests on the wire at most; 0 = no limit. Extra requests wait in the client.
  uint32_t max_in_flight = 256;
  // Deadline of the whole RPC; none by default (a stream is long-lived).
  std::optional<absl::Duration> timeout;
  std::shared_ptr<CancellationToken> cancel;
  bool wait_for_ready = false;
};

class MatmulStream {
 public:
  // Use Client::OpenStream().
  static absl::StatusOr<std::unique_ptr<MatmulStream>> Create(Client::Impl* client,
                                                              const MatmulStreamOptions& options);
  // Closes the stream (see Close) and waits for the RPC to end.
  ~MatmulStream();
  MatmulStream(const MatmulStream&) = delete;
  MatmulStream& operator=(const MatmulStream&) = delete;

  // Queues one request (activations are copied: rows x K FP16 bits). `done` runs exactly once, on
  // a gRPC callback thread or, when the stream has ended, on the calling thread.
  void Submit(absl::string_view weight_id, uint32_t rows, absl::Span<const uint16_t> activations,
              MatmulCallback done);
  std::future<absl::StatusOr<MatmulResult>> Submit(absl::string_view weight_id, uint32_t rows,
                                                   absl::Span<const uint16_t> activations);

  // Stops accepting requests, sends what is queued, waits for every answer and ends the RPC.
  // Returns the RPC's final status (OK when the server ended it cleanly).
  absl::Status Close();
  // Ends the RPC now; open requests complete with CANCELLED.
  void Cancel();

  // Requests submitted and not yet completed.
  uint64_t pending() const;

  struct State;

 private:
  explicit MatmulStream(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace marlin

#endif  // MARLIN_CLIENT_MATMUL_STREAM_H_
