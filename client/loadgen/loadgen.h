// The engine of marlin-loadgen: drives a marlin-serve server with Matmul requests and measures it.
//
// Closed loop: for each concurrency C, C request chains each send a request as soon as their last
// one was answered; in stream mode chain i always uses stream i mod `streams` (with as many
// streams as chains, one stream per concurrent request). Open loop: for each rate R, dispatcher
// threads (a quarter of the hardware threads, 1 to 8, each a Poisson process of its share of R)
// send at Poisson arrival times and latency counts from the scheduled send time, so a slow server
// cannot slow the arrivals down (no coordinated omission). Each point runs `warmup` (not measured)
// then `duration`; no new request starts after that, and every request sent is waited for, so sent
// == answers + errors.
//
//   marlin::loadgen::Config config;
//   config.client.target = "localhost:50051";
//   config.concurrency = {1, 4, 16};
//   config.create_k = 4096; config.create_n = 4096;
//   ASSIGN_OR_RETURN(auto runner, marlin::loadgen::Runner::Create(config));
//   ASSIGN_OR_RETURN(std::vector<marlin::loadgen::PointResult> points, runner->Run());
#ifndef MARLIN_CLIENT_LOADGEN_LOADGEN_H_
#define MARLIN_CLIENT_LOADGEN_LOADGEN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/loadgen/report.h"
#include "client/loadgen/stats.h"

namespace marlin::loadgen {

enum class Mode { kUnary, kStream };

struct Config {
  ClientOptions client;
  Mode mode = Mode::kUnary;
  std::vector<int64_t> concurrency = {1, 4, 16, 64, 256};  // closed loop points
  std::vector<double> rates;  // open loop points (req/s); when set, replaces `concurrency`
  absl::Duration duration = absl::Seconds(10);
  absl::Duration warmup = absl::Seconds(2);
  int64_t rows_min = 1;
  int64_t rows_max = 1;
  std::vector<std::string> ids;  // existing weights
  // With create_k, create_n > 0: upload a random FP16 weight as `create_id` first.
  int64_t create_k = 0;
  int64_t create_n = 0;
  int32_t group_size = 128;
  std::string create_id;  // default "loadgen-<pid>"
  bool keep_created = false;
  double verify_fraction = 0;      // of answers checked against the CPU reference
  double verify_tolerance = 1e-3;  // relative Frobenius error allowed off the CPU backend
  std::string metrics_address;     // host:port of the server's /metrics
  int streams = 1;                 // MatmulStreams in stream mode
  // TCP connections the streams (or unary calls) are spread over. One connection's HTTP/2
  // transport is worked by one thread at a time on each side: with one connection it is the
  // ceiling of the whole run, however many streams share it.
  int connections = 1;
  uint64_t seed = 1;
  bool progress = false;              // a live progress line on stderr
  bool progress_tty = false;          // rewrite it in place (\r) rather than print lines
  uint64_t max_outstanding = 100000;  // open loop: more outstanding counts as a client error
  std::string command_line;
};

class Runner {
 public:
  // Connects, checks the weights (uploading the random one), and prepares the reference.
  static absl::StatusOr<std::unique_ptr<Runner>> Create(Config config);
  // Deletes the created weight unless keep_created.
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Runs every point in order.
  absl::StatusOr<std::vector<PointResult>> Run();
  const RunInfo& info() const;

  struct Impl;

 private:
  explicit Runner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace marlin::loadgen

#endif  // MARLIN_CLIENT_LOADGEN_LOADGEN_H_
