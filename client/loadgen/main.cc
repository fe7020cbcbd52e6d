// marlin-loadgen: measures a marlin-serve server under load (see loadgen.h and docs/client.md).
//
//   marlin-loadgen --server localhost:50051 --create 4096,4096 --concurrency 1,4,16,64
//       --duration 10 --warmup 2 --rows 1-16 --mode stream --verify-fraction 0.01
//       --metrics localhost:9090 --json run.json --csv run.csv --report run.html
//   marlin-loadgen --ids layer0 --rate 100,200,400 --duration 20
//   marlin-loadgen --shard-peers s0:50051,s1:50051,s2:50051 --ids l0,l1,l2,l3 --mode stream
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/loadgen/loadgen.h"
#include "client/loadgen/report.h"

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "marlin-loadgen: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using marlin::loadgen::Config;
  CLI::App app{"marlin-loadgen: load tests a marlin-serve server", "marlin-loadgen"};
  std::string server = "localhost:50051";
  std::string shard_peers;
  std::string token_file, tls_ca, tls_cert, tls_key;
  std::string mode = "unary";
  std::string concurrency = "1,4,16,64,256";
  std::string rate;
  double duration_s = 10, warmup_s = 2, timeout_s = 30;
  int max_attempts = 5;
  std::string rows = "1";
  std::string ids, create;
  int group_size = 128;
  std::string create_id;
  bool keep = false;
  double verify_fraction = 0, verify_tolerance = 1e-3;
  std::string metrics;
  int streams = 1;
  int connections = 1;
  uint64_t seed = 1;
  std::string progress = "auto";
  std::string json_path, csv_path, report_path;
  bool quiet = false;

  app.add_option("--server", server, "server address: host:port, dns:///name:port, a,b,...")
      ->capture_default_str();
  app.add_option("--shard-peers", shard_peers,
                 "sharded servers: every shard's host:port in shard order, a,b,c; each request "
                 "goes to its weight's owner and --server is not used");
  app.add_option("--token-file", token_file, "file holding a bearer token (or $MARLIN_TOKEN)");
  app.add_option("--tls-ca", tls_ca, "PEM root CA: use TLS");
  app.add_option("--tls-cert", tls_cert, "PEM client certificate (mutual TLS)");
  app.add_option("--tls-key", tls_key, "PEM client key (mutual TLS)");
  app.add_option("--mode", mode, "unary or stream")
      ->check(CLI::IsMember({"unary", "stream"}))
      ->capture_default_str();
  app.add_option("--concurrency", concurrency, "closed loop: comma-separated concurrencies")
      ->capture_default_str();
  app.add_option("--rate", rate, "open loop: comma-separated request rates (req/s, Poisson)");
  app.add_option("--duration", duration_s, "measured seconds per point")->capture_default_str();
  app.add_option("--warmup", warmup_s, "unmeasured seconds before each point")
      ->capture_default_str();
  app.add_option("--timeout", timeout_s, "per-request deadline, seconds")->capture_default_str();
  app.add_option("--max-attempts", max_attempts,
                 "tries of a matmul on UNAVAILABLE (1 = no retry, at most 5)")
      ->check(CLI::Range(1, 5))
      ->capture_default_str();
  app.add_option("--rows", rows, "rows per request: N or A-B (uniform)")->capture_default_str();
  app.add_option("--ids", ids, "comma-separated existing weight ids");
  app.add_option("--create", create, "K,N: upload a random FP16 weight first (deleted at the end)");
  app.add_option("--group-size", group_size, "--create: 128 or -1")
      ->check(CLI::IsMember({128, -1}))
      ->capture_default_str();
  app.add_option("--create-id", create_id, "--create: the weight id (default loadgen-PID)");
  app.add_flag("--keep", keep, "--create: keep the weight at the end");
  app.add_option("--verify-fraction", verify_fraction,
                 "share of answers checked against the local CPU reference (needs --create)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--verify-tolerance", verify_tolerance,
                 "relative Frobenius error allowed on non-CPU backends")
      ->capture_default_str();
  app.add_option("--metrics", metrics, "host:port of the server's Prometheus /metrics");
  app.add_option("--streams", streams,
                 "stream mode: number of MatmulStreams (closed loop: chain i uses stream i mod N)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--connections", connections,
                 "TCP connections the streams or unary calls are spread over (one connection's "
                 "transport is a ceiling of its own)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_option("--progress", progress, "live progress line on stderr: auto, always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
  app.add_option("--json", json_path, "write the results as JSON");
  app.add_option("--csv", csv_path, "write the results as CSV");
  app.add_option("--report", report_path, "write a self-contained HTML report");
  app.add_flag("--quiet", quiet, "no table on stdout");
  CLI11_PARSE(app, argc, argv);

  Config config;
  config.client.target = server;
  config.client.shard_peers = absl::StrSplit(shard_peers, ',', absl::SkipWhitespace());
  config.client.default_deadline = absl::Seconds(timeout_s);
  config.client.retry.max_attempts = max_attempts;
  std::string token;
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in) return Fail("cannot read --token-file " + token_file);
    std::stringstream ss;
    ss << in.rdbuf();
    token = std::string(absl::StripAsciiWhitespace(ss.str()));
  } else if (const char* env = std::getenv("MARLIN_TOKEN"); env != nullptr) {
    token = env;
  }
  config.client.bearer_token = token;
  if (!tls_ca.empty() || !tls_cert.empty()) {
    absl::StatusOr<marlin::TlsOptions> tls =
        marlin::TlsOptions::FromFiles(tls_ca, tls_cert, tls_key);
    if (!tls.ok()) return Fail(std::string(tls.status().message()));
    config.client.tls = *std::move(tls);
  }
  config.mode = mode == "stream" ? marlin::loadgen::Mode::kStream : marlin::loadgen::Mode::kUnary;
  if (!rate.empty()) {
    absl::StatusOr<std::vector<double>> rates = marlin::loadgen::ParseDoubleList(rate, 1e-6);
    if (!rates.ok()) return Fail("--rate: " + std::string(rates.status().message()));
    config.rates = *rates;
    config.concurrency.clear();
  } else {
    absl::StatusOr<std::vector<int64_t>> c = marlin::loadgen::ParseIntList(concurrency, 1, 100000);
    if (!c.ok()) return Fail("--concurrency: " + std::string(c.status().message()));
    config.concurrency = *c;
  }
  if (!(duration_s > 0) || !(warmup_s >= 0) || !(timeout_s > 0)) {
    return Fail("--duration and --timeout must be positive, --warmup not negative");
  }
  config.duration = absl::Seconds(duration_s);
  config.warmup = absl::Seconds(warmup_s);
  absl::StatusOr<std::pair<int64_t, int64_t>> range = marlin::loadgen::ParseRange(rows, 1, 1 << 20);
  if (!range.ok()) return Fail("--rows: " + std::string(range.status().message()));
  config.rows_min = range->first;
  config.rows_max = range->second;
  if (!ids.empty()) {
    config.ids = absl::StrSplit(ids, ',', absl::SkipWhitespace());
  }
  if (!create.empty()) {
    absl::StatusOr<std::vector<int64_t>> kn = marlin::loadgen::ParseIntList(create, 1, 1 << 20);
    if (!kn.ok() || kn->size() != 2) return Fail("--create takes K,N");
    config.create_k = (*kn)[0];
    config.create_n = (*kn)[1];
  }
  if (config.ids.empty() && config.create_k == 0) return Fail("give --ids or --create K,N");
  config.group_size = group_size;
  config.create_id = create_id;
  config.keep_created = keep;
  config.verify_fraction = verify_fraction;
  config.verify_tolerance = verify_tolerance;
  config.metrics_address = metrics;
  config.streams = streams;
  config.connections = connections;
  config.seed = seed;
  bool tty = isatty(STDERR_FILENO) != 0;
  config.progress = progress == "always" || (progress == "auto" && tty);
  config.progress_tty = tty;
  std::vector<std::string> args(argv, argv + argc);
  config.command_line = absl::StrJoin(args, " ");

  absl::StatusOr<std::unique_ptr<marlin::loadgen::Runner>> runner =
      marlin::loadgen::Runner::Create(config);
  if (!runner.ok()) return Fail(std::string(runner.status().message()));
  absl::StatusOr<std::vector<marlin::loadgen::PointResult>> points = (*runner)->Run();
  if (!points.ok()) return Fail(std::string(points.status().message()));
  const marlin::loadgen::RunInfo& info = (*runner)->info();

  if (!quiet) std::cout << marlin::loadgen::FormatTable(*points) << std::flush;
  if (!json_path.empty()) {
    if (absl::Status s =
            marlin::loadgen::WriteTextFile(json_path, marlin::loadgen::ToJson(info, *points));
        !s.ok()) {
      return Fail(std::string(s.message()));
    }
  }
  if (!csv_path.empty()) {
    if (absl::Status s = marlin::loadgen::WriteTextFile(csv_path, marlin::loadgen::ToCsv(*points));
        !s.ok()) {
      return Fail(std::string(s.message()));
    }
  }
  if (!report_path.empty()) {
    if (absl::Status s =
            marlin::loadgen::WriteTextFile(report_path, marlin::loadgen::ToHtml(info, *points));
        !s.ok()) {
      return Fail(std::string(s.message()));
    }
  }
  // Latency counts from the scheduled send time; when the load generator itself sent late, say so
  // (that share of the tail is the client's, not the server's or the transport's).
  for (const auto& p : *points) {
    if (p.send_lag.count > 0 && p.send_lag.p99_ms > std::max(0.5, 0.25 * p.latency.p99_ms)) {
      std::fprintf(stderr,
                   "marlin-loadgen: %s: requests left late (send lag p99 %.3f ms of the %.3f ms "
                   "latency p99): the load generator could not keep its schedule on this "
                   "machine, so that much of the tail is its own\n",
                   p.label.c_str(), p.send_lag.p99_ms, p.latency.p99_ms);
    }
  }
  uint64_t mismatches = 0;
  for (const auto& p : *points) mismatches += p.mismatches;
  if (mismatches > 0) {
    std::fprintf(stderr, "marlin-loadgen: %llu verified answers did not match the reference\n",
                 static_cast<unsigned long long>(mismatches));
    return 2;
  }
  return 0;
}
