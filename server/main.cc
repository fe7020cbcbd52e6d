// marlin-server: serves packed INT4 weights by id and answers batched FP16 matmuls over gRPC.
// Flags are documented by --help and in docs/server.md.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "server/app/server.h"
#include "server/logging/log.h"
#include "server/sharding/shard_map.h"

int main(int argc, char** argv) {
  marlin::ServerOptions o;
  double drain_timeout_s = 30;
  double max_connection_age_s = 0;
  std::string log_level = "info";
  CLI::App app{
      "marlin-server: a gRPC service for batched FP16 x INT4 matrix products.\n"
      "Holds packed INT4 weights by id on the GPU (or CPU) and groups concurrent requests on the\n"
      "same weight into batches. SIGTERM/SIGINT drain it and exit 0. See docs/server.md."};
  app.get_formatter()->column_width(34);
  app.add_option("--listen", o.listen,
                 "gRPC address host:port. Localhost by default; use 0.0.0.0:PORT to accept remote "
                 "clients")
      ->capture_default_str();
  app.add_option("--metrics-listen", o.metrics_listen,
                 "Prometheus /metrics HTTP address host:port; empty disables it")
      ->capture_default_str();
  app.add_option("--backend", o.backend,
                 "auto (CUDA when a GPU is visible, else CPU), cuda, cpu, or null (answers zeros "
                 "without computing: measures the transport ceiling, never for real answers)")
      ->check(CLI::IsMember({"auto", "cuda", "cpu", "null"}))
      ->capture_default_str();
  app.add_option("--weights-dir", o.weights_dir,
                 "Load every weight of this directory of .safetensors files before reporting "
                 "SERVING (naming scheme in docs/server.md)");
  app.add_option("--max-batch-rows", o.max_batch_rows,
                 "A batch closes when it holds this many rows (64: the knee of the kernel's "
                 "measured rows-per-second curve, docs/server.md)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-queue-delay-us", o.max_queue_delay_us,
                 "...or when its oldest request has waited this many microseconds (the longest a "
                 "request waits for company)")
      ->check(CLI::Range(int64_t{0}, int64_t{10'000'000}))
      ->capture_default_str();
  app.add_option("--work-conserving", o.work_conserving,
                 "true: a lane with nothing to do takes waiting requests at once, so batches form "
                 "only while every lane is busy; false: batches close only on --max-batch-rows "
                 "or --max-queue-delay-us (a lone request waits the whole delay)")
      ->capture_default_str();
  app.add_option("--max-queue-rows", o.max_queue_rows,
                 "Rows that may wait in the batch queues (all weights); beyond it requests are "
                 "refused at once with RESOURCE_EXHAUSTED")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--drain-timeout", drain_timeout_s,
                 "Seconds SIGTERM waits for accepted requests before answering the rest "
                 "UNAVAILABLE")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--memory-headroom", o.memory_headroom,
                 "Device memory kept free of weights (bytes, or with a unit: 512MiB, 2GiB); "
                 "an upload that would eat into it is refused with RESOURCE_EXHAUSTED")
      ->transform(CLI::AsSizeValue(false))
      ->default_str("1GiB");
  app.add_option("--max-rows-per-request", o.max_rows_per_request,
                 "Largest M of one request (INVALID_ARGUMENT beyond); larger than a batch runs "
                 "alone")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-weight-bytes", o.max_weight_bytes,
                 "Largest device size of one weight (bytes or with a unit)")
      ->transform(CLI::AsSizeValue(false))
      ->default_str("8GiB");
  app.add_option("--max-weights", o.max_weights, "Most weights held at once")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--cuda-streams", o.cuda_streams,
                 "CUDA streams (one executor thread each) so that one batch's copies overlap the "
                 "next one's kernel; CPU worker lanes with --backend=cpu")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--cuda-device", o.cuda_device, "CUDA device ordinal")->capture_default_str();
  app.add_option("--answer-threads", o.answer_threads,
                 "Threads that write finished batches' answers back, so that lanes go straight "
                 "back to the backend; 0: the lane threads answer; -1: none below 8 hardware "
                 "threads, else a quarter of them (at most 8)")
      ->check(CLI::Range(-1, 64))
      ->capture_default_str();
  app.add_option("--cpu-threads", o.cpu_threads,
                 "CPU backend threads per lane (0: hardware threads / lanes)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--max-in-flight-per-stream", o.max_in_flight_per_stream,
                 "Requests of one MatmulStream being processed at once; more wait unread "
                 "(flow control)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-in-flight-per-connection", o.max_in_flight_per_connection,
                 "Matmul requests of one client connection (all its calls and streams) accepted "
                 "and not yet answered; beyond it requests are refused RESOURCE_EXHAUSTED; "
                 "0: unlimited")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--max-message-bytes", o.max_message_bytes,
                 "Largest gRPC message received or sent (bytes or with a unit); 0: sized for the "
                 "largest request, --max-rows-per-request x 32768 (K) x 2 + 64KiB")
      ->transform(CLI::AsSizeValue(false))
      ->default_str("0");
  app.add_option("--device-memory-limit", o.device_memory_limit,
                 "Treat the device as having this much memory for weights (0: its free memory at "
                 "start); to share a GPU")
      ->transform(CLI::AsSizeValue(false))
      ->default_str("0");
  app.add_option("--upload-threads", o.upload_threads,
                 "Threads that quantize, pack and upload weights")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--shard-peers", o.shard_peers,
                 "Comma-separated addresses of all replicas in shard order (see "
                 "server/sharding); this replica refuses ids it does not own");
  app.add_option("--shard-index", o.shard_index,
                 "This replica's index among --shard-peers; -1: the StatefulSet ordinal ending "
                 "the hostname (marlin-server-2 -> 2)")
      ->check(CLI::Range(-1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-connection-age", max_connection_age_s,
                 "Seconds after which a client connection is sent GOAWAY so that clients spread "
                 "onto new replicas (its calls get --drain-timeout to finish); 0: never")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--tls-cert", o.tls_cert, "PEM certificate chain: serve TLS (with --tls-key)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", o.tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);
  app.add_option("--tls-client-ca", o.tls_client_ca,
                 "PEM CA bundle: require client certificates signed by it (mutual TLS)")
      ->check(CLI::ExistingFile);
  app.add_option("--auth-tokens", o.auth_tokens,
                 "File of `ROLE TOKEN` lines (# comments): require `authorization: Bearer TOKEN`; "
                 "role admin may upload and delete, role user may run matmuls and read; health "
                 "stays open")
      ->check(CLI::ExistingFile);
  auto* faults =
      app.add_option_group("Test-only", "Fault injection for tests; never in production");
  faults
      ->add_option("--inject-backend-fault-after", o.inject_backend_fault_after,
                   "TEST ONLY: after N batches the backend fails like a CUDA error (for good)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  faults
      ->add_option("--inject-upload-oom-after", o.inject_upload_oom_after,
                   "TEST ONLY: after N uploaded weights, preparing a weight fails out of memory")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app.add_option("--log-level", log_level, "debug, info, warning or error")
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  o.drain_timeout = absl::Seconds(drain_timeout_s);
  o.max_connection_age = absl::Seconds(max_connection_age_s);
  if (o.shard_index == -1) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    absl::StatusOr<int> ordinal = marlin::sharding::OrdinalFromHostname(host);
    if (!o.shard_peers.empty() && !ordinal.ok()) {
      std::fprintf(stderr, "--shard-index=-1: %s\n", ordinal.status().ToString().c_str());
      return 2;
    }
    o.shard_index = o.shard_peers.empty() ? 0 : *ordinal;
  }
  marlin::log::Level level;
  if (marlin::log::ParseLevel(log_level, &level).ok()) marlin::log::SetMinLevel(level);

  // Signals go to a sigwait below, never to a handler: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<marlin::MarlinServer>> server = marlin::MarlinServer::Start(o);
  if (!server.ok()) {
    MARLIN_LOG(kError, "startup failed").Kv("error", server.status());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  MARLIN_LOG(kInfo, "signal received").Kv("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown();
  server->reset();
  MARLIN_LOG(kInfo, "exit").Kv("code", 0);
  return 0;
}
