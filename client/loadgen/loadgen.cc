#include "client/loadgen/loadgen.h"

#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/matmul_stream.h"
#include "kernels/cpu/cpu_gemm.h"
#include "kernels/format/weight_format.h"

namespace marlin::loadgen {
namespace {

// Set while a thread is inside a send call, to tell a synchronous completion from a later one.
thread_local bool tl_in_send = false;

std::mt19937_64& ThreadRng() {
  static std::atomic<uint64_t> counter{0x9e3779b97f4a7c15ull};
  thread_local std::mt19937_64 rng(counter.fetch_add(0x9e3779b97f4a7c15ull));
  return rng;
}

std::vector<uint16_t> RandomHalfs(size_t count, double stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, static_cast<float>(stddev));
  std::vector<uint16_t> out(count);
  for (uint16_t& v : out) v = FloatToHalf(dist(rng));
  return out;
}

std::string CodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

// Relative Frobenius distance between two FP16 matrices (0 when both are zero).
double RelativeError(absl::Span<const uint16_t> got, absl::Span<const uint16_t> want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    double g = HalfToFloat(got[i]), w = HalfToFloat(want[i]);
    num += (g - w) * (g - w);
    den += w * w;
  }
  if (den == 0) return num == 0 ? 0 : HUGE_VAL;
  return std::sqrt(num / den);
}

// Runs closures on one thread, in order (completions that arrived synchronously continue here).
class Executor {
 public:
  Executor() : thread_([this] { Loop(); }) {}
  ~Executor() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Post(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    while (true) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace

struct Target {
  std::string id;
  int64_t k = 0;
  int64_t n = 0;
  std::vector<uint16_t> pool;  // pool_rows x k random FP16 activations
  int64_t pool_rows = 0;
  std::unique_ptr<CpuGemm> reference;  // for verification (created weights only)
};

// One request of a point.
struct Request {
  int64_t chain = -1;  // closed loop: the chain that sends it (picks its stream); open loop: -1
  size_t target = 0;
  uint32_t rows = 0;
  int64_t offset_row = 0;
  absl::Time scheduled;
  bool measured = false;
  bool verify = false;
};

// Counters of the point being run.
struct PointState {
  std::mutex mu;  // std::mutex so that TSan sees it (docs/reliability.md)
  // Notified, under mu (RunPoint destroys this when it sees the point drained), whenever
  // outstanding, chains or verify_pending change.
  std::condition_variable changed;
  std::vector<double> latencies_ms ABSL_GUARDED_BY(mu);
  // Open loop: how late each measured request was handed to the client library (its send time
  // minus its scheduled time). Latency counts from the schedule, so this part of it is the load
  // generator's own delay, not the server's or the transport's.
  std::vector<double> send_lag_ms ABSL_GUARDED_BY(mu);
  std::map<std::string, uint64_t> errors_by_code ABSL_GUARDED_BY(mu);
  uint64_t sent ABSL_GUARDED_BY(mu) = 0;
  uint64_t answers ABSL_GUARDED_BY(mu) = 0;
  uint64_t errors ABSL_GUARDED_BY(mu) = 0;
  uint64_t rows_answered ABSL_GUARDED_BY(mu) = 0;
  double sum_batch_rows ABSL_GUARDED_BY(mu) = 0;
  double sum_queue_us ABSL_GUARDED_BY(mu) = 0;
  double sum_compute_us ABSL_GUARDED_BY(mu) = 0;
  uint64_t warm_sent ABSL_GUARDED_BY(mu) = 0;
  uint64_t warm_answers ABSL_GUARDED_BY(mu) = 0;
  uint64_t warm_errors ABSL_GUARDED_BY(mu) = 0;
  int64_t outstanding ABSL_GUARDED_BY(mu) = 0;
  int64_t chains ABSL_GUARDED_BY(mu) = 0;  // closed loop chains still running
  absl::Time last_completion ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  // Verification.
  uint64_t verify_pending ABSL_GUARDED_BY(mu) = 0;
  uint64_t verified ABSL_GUARDED_BY(mu) = 0;
  uint64_t mismatches ABSL_GUARDED_BY(mu) = 0;
  double max_rel_error ABSL_GUARDED_BY(mu) = 0;

  absl::Time measure_start;
  absl::Time end;
};

struct Runner::Impl {
  Config config;
  RunInfo info;
  std::unique_ptr<Client> client;
  // config.connections clients (the first is `client`), each on a TCP connection of its own.
  std::vector<Client*> connections;
  std::vector<std::unique_ptr<Client>> extra_clients;
  std::atomic<uint64_t> next_connection{0};
  std::vector<std::unique_ptr<MatmulStream>> streams;
  std::atomic<uint64_t> next_stream{0};
  std::vector<Target> targets;
  bool created = false;
  bool exact_verify = false;
  bool verify_enabled = false;
  std::unique_ptr<Executor> executor;
  std::unique_ptr<Executor> verifier;

  absl::Status Setup();
  absl::StatusOr<PointResult> RunPoint(int64_t concurrency, double rate);
  Request NewRequest(absl::Time scheduled, bool measured);
  void Send(PointState* ps, const Request& req, std::function<void()> then);
  void Complete(PointState* ps, const Request& req, absl::StatusOr<MatmulResult> result);
  void Chain(PointState* ps, int64_t chain);
  // Clients on connections of their own besides `client` (unsharded servers only).
  absl::Status OpenConnections();
  void Verify(PointState* ps, const Request& req, std::vector<uint16_t> output);
  void PrintProgress(PointState* ps, const std::string& label, bool final);
};

absl::Status Runner::Impl::Setup() {
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(config.client);
  if (!c.ok()) return c.status();
  client = *std::move(c);
  absl::StatusOr<ServerInfo> server = client->GetServerInfo();
  // A sharded client's channel target lists its shards.
  const std::string& name =
      config.client.shard_peers.empty() ? config.client.target : client->channel_target();
  if (!server.ok()) {
    return absl::Status(
        server.status().code(),
        absl::StrCat("server ", name, " did not answer ServerInfo: ", server.status().message()));
  }
  info.server = name;
  info.server_version = server->version;
  info.backend = server->backend;
  info.mode = config.mode == Mode::kStream ? "stream" : "unary";
  info.loop = config.rates.empty() ? "closed" : "open";
  info.rows = config.rows_min == config.rows_max
                  ? absl::StrCat(config.rows_min)
                  : absl::StrCat(config.rows_min, "-", config.rows_max);
  info.duration_s = absl::ToDoubleSeconds(config.duration);
  info.warmup_s = absl::ToDoubleSeconds(config.warmup);
  info.verify_fraction = config.verify_fraction;
  info.started = absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone());
  info.command_line = config.command_line;
  if (server->limits.max_rows_per_request > 0 &&
      config.rows_max > static_cast<int64_t>(server->limits.max_rows_per_request)) {
    return absl::InvalidArgumentError(absl::StrCat("--rows up to ", config.rows_max,
                                                   " exceeds the server's limit of ",
                                                   server->limits.max_rows_per_request));
  }

  std::mt19937_64 rng(config.seed);
  if (config.create_k > 0 || config.create_n > 0) {
    Target t;
    t.id = config.create_id.empty() ? absl::StrCat("loadgen-", getpid()) : config.create_id;
    t.k = config.create_k;
    t.n = config.create_n;
    WeightShape shape{.k = t.k, .n = t.n, .group_size = config.group_size};
    if (absl::Status s = ValidateShape(shape); !s.ok()) return s;
    std::vector<uint16_t> w = RandomHalfs(static_cast<size_t>(t.k * t.n), 1.0, rng);
    UploadOptions upload;
    upload.group_size = config.group_size;
    upload.replace = true;
    absl::StatusOr<WeightInfo> uploaded =
        client->UploadFp16(t.id, t.k, t.n, w, WeightLayout::kKN, upload);
    if (!uploaded.ok()) return uploaded.status();
    created = true;
    if (config.verify_fraction > 0) {
      absl::StatusOr<QuantizedWeight> q = QuantizeFp16(w, shape, DenseLayout::kKN);
      if (!q.ok()) return q.status();
      absl::StatusOr<PackedWeight> packed = Pack(*q);
      if (!packed.ok()) return packed.status();
      absl::StatusOr<std::unique_ptr<CpuGemm>> gemm = CpuGemm::Create(*packed, 1);
      if (!gemm.ok()) return gemm.status();
      t.reference = *std::move(gemm);
    }
    targets.push_back(std::move(t));
  }
  for (const std::string& id : config.ids) {
    absl::StatusOr<WeightInfo> w = client->GetWeight(id);
    if (!w.ok()) {
      return absl::Status(w.status().code(),
                          absl::StrCat("weight '", id, "': ", w.status().message()));
    }
    Target t;
    t.id = id;
    t.k = w->k;
    t.n = w->n;
    targets.push_back(std::move(t));
  }
  if (targets.empty()) return absl::InvalidArgumentError("give --ids or --create K,N");
  for (Target& t : targets) {
    t.pool_rows = std::max<int64_t>(64, 2 * config.rows_max);
    t.pool = RandomHalfs(static_cast<size_t>(t.pool_rows * t.k), 1.0, rng);
    info.weight_ids.push_back(t.id);
  }

  if (config.verify_fraction > 0) {
    if (!created) {
      std::fprintf(stderr, "marlin-loadgen: --verify-fraction needs --create; not verifying\n");
    } else if (server->backend == "null") {
      std::fprintf(stderr,
                   "marlin-loadgen: the server's backend is 'null' (no arithmetic); not "
                   "verifying\n");
    } else {
      verify_enabled = true;
      exact_verify = server->backend == "cpu";
      info.verify_rule = exact_verify
                             ? "bit-exact (cpu backend)"
                             : absl::StrFormat("relative Frobenius <= %g", config.verify_tolerance);
    }
  }
  if (!verify_enabled) info.verify_rule = "none";

  if (absl::Status s = OpenConnections(); !s.ok()) return s;
  if (config.mode == Mode::kStream) {
    MatmulStreamOptions options;
    options.max_in_flight = server->limits.max_in_flight_per_stream;
    for (int i = 0; i < std::max(1, config.streams); ++i) {
      absl::StatusOr<std::unique_ptr<MatmulStream>> stream =
          connections[static_cast<size_t>(i) % connections.size()]->OpenStream(options);
      if (!stream.ok()) return stream.status();
      streams.push_back(*std::move(stream));
    }
  }
  executor = std::make_unique<Executor>();
  verifier = std::make_unique<Executor>();
  return absl::OkStatus();
}

absl::Status Runner::Impl::OpenConnections() {
  connections = {client.get()};
  if (config.connections <= 1) return absl::OkStatus();
  if (!config.client.shard_peers.empty()) {
    return absl::InvalidArgumentError("--connections > 1 does not go with --shard-peers");
  }
  for (int i = 1; i < config.connections; ++i) {
    ClientOptions options = config.client;
    // gRPC shares one connection between channels whose arguments are equal; a user agent of its
    // own makes this channel's arguments, and so its connection, distinct.
    options.user_agent_prefix =
        absl::StrCat(config.client.user_agent_prefix,
                     config.client.user_agent_prefix.empty() ? "" : " ", "marlin-loadgen-conn-", i);
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(options);
    if (!c.ok()) return c.status();
    connections.push_back(c->get());
    extra_clients.push_back(*std::move(c));
  }
  return absl::OkStatus();
}

Request Runner::Impl::NewRequest(absl::Time scheduled, bool measured) {
  std::mt19937_64& rng = ThreadRng();
  Request req;
  req.target =
      targets.size() == 1 ? 0 : std::uniform_int_distribution<size_t>(0, targets.size() - 1)(rng);
  req.rows = static_cast<uint32_t>(
      std::uniform_int_distribution<int64_t>(config.rows_min, config.rows_max)(rng));
  const Target& t = targets[req.target];
  req.offset_row = std::uniform_int_distribution<int64_t>(0, t.pool_rows - req.rows)(rng);
  req.scheduled = scheduled;
  req.measured = measured;
  req.verify = verify_enabled && t.reference != nullptr &&
               std::uniform_real_distribution<double>(0, 1)(rng) < config.verify_fraction;
  return req;
}

void Runner::Impl::Send(PointState* ps, const Request& req, std::function<void()> then) {
  {
    const absl::Time now = absl::Now();
    std::lock_guard<std::mutex> lock(ps->mu);
    if (req.measured) {
      ++ps->sent;
      if (req.chain < 0) ps->send_lag_ms.push_back(absl::ToDoubleMilliseconds(now - req.scheduled));
    } else {
      ++ps->warm_sent;
    }
    ++ps->outstanding;
  }
  const Target& t = targets[req.target];
  absl::Span<const uint16_t> x(t.pool.data() + req.offset_row * t.k,
                               static_cast<size_t>(req.rows * t.k));
  auto done = [this, ps, req, then = std::move(then)](absl::StatusOr<MatmulResult> result) {
    Complete(ps, req, std::move(result));
    if (!then) return;
    if (tl_in_send) {
      executor->Post(then);  // answered before the send returned: do not recurse
    } else {
      then();
    }
  };
  tl_in_send = true;
  if (streams.empty()) {
    connections[next_connection.fetch_add(1) % connections.size()]->MatmulAsync(t.id, req.rows, x,
                                                                                std::move(done));
  } else {
    const size_t s = req.chain >= 0 ? static_cast<size_t>(req.chain) % streams.size()
                                    : next_stream.fetch_add(1) % streams.size();
    streams[s]->Submit(t.id, req.rows, x, std::move(done));
  }
  tl_in_send = false;
}

void Runner::Impl::Complete(PointState* ps, const Request& req,
                            absl::StatusOr<MatmulResult> result) {
  absl::Time now = absl::Now();
  bool verify = false;
  {
    std::lock_guard<std::mutex> lock(ps->mu);
    if (req.measured) {
      ps->last_completion = std::max(ps->last_completion, now);
      if (result.ok()) {
        ++ps->answers;
        ps->rows_answered += req.rows;
        ps->latencies_ms.push_back(absl::ToDoubleMilliseconds(now - req.scheduled));
        ps->sum_batch_rows += result->timing.batch_rows;
        ps->sum_queue_us += static_cast<double>(result->timing.queue_us);
        ps->sum_compute_us += static_cast<double>(result->timing.compute_us);
      } else {
        ++ps->errors;
        ++ps->errors_by_code[CodeName(result.status().code())];
      }
    } else if (result.ok()) {
      ++ps->warm_answers;
    } else {
      ++ps->warm_errors;
    }
    verify = req.verify && result.ok();
    if (verify) ++ps->verify_pending;
    --ps->outstanding;
    ps->changed.notify_all();
  }
  if (verify) {
    verifier->Post([this, ps, req, output = std::move(result->output)]() mutable {
      Verify(ps, req, std::move(output));
    });
  }
}

void Runner::Impl::Verify(PointState* ps, const Request& req, std::vector<uint16_t> output) {
  const Target& t = targets[req.target];
  std::vector<uint16_t> want(static_cast<size_t>(req.rows * t.n));
  absl::Status s = t.reference->Run(t.pool.data() + req.offset_row * t.k, req.rows, want.data());
  bool match = false;
  double err = HUGE_VAL;
  if (s.ok() && output.size() == want.size()) {
    if (exact_verify) {
      match = std::memcmp(output.data(), want.data(), want.size() * sizeof(uint16_t)) == 0;
      err = match ? 0 : RelativeError(output, want);
    } else {
      err = RelativeError(output, want);
      match = err <= config.verify_tolerance;
    }
  }
  std::lock_guard<std::mutex> lock(ps->mu);
  --ps->verify_pending;
  ps->changed.notify_all();
  ++ps->verified;
  if (!match) ++ps->mismatches;
  ps->max_rel_error = std::max(ps->max_rel_error, err);
}

void Runner::Impl::Chain(PointState* ps, int64_t chain) {
  absl::Time now = absl::Now();
  if (now >= ps->end) {
    std::lock_guard<std::mutex> lock(ps->mu);
    --ps->chains;
    ps->changed.notify_all();
    return;
  }
  Request req = NewRequest(now, now >= ps->measure_start);
  req.chain = chain;
  Send(ps, req, [this, ps, chain] { Chain(ps, chain); });
}

void Runner::Impl::PrintProgress(PointState* ps, const std::string& label, bool final) {
  uint64_t sent, answers, errors;
  absl::Time now = absl::Now();
  {
    std::lock_guard<std::mutex> lock(ps->mu);
    sent = ps->sent + ps->warm_sent;
    answers = ps->answers + ps->warm_answers;
    errors = ps->errors + ps->warm_errors;
  }
  const char* phase = now < ps->measure_start ? "warmup" : (now < ps->end ? "measure" : "drain");
  double t = absl::ToDoubleSeconds(now - ps->measure_start);
  double rate = t > 0 && now < ps->end ? static_cast<double>(answers) / std::max(t, 1e-3) : 0;
  std::string line = absl::StrFormat("[%s] %-7s t=%+6.1fs sent=%d answers=%d errors=%d", label,
                                     phase, t, sent, answers, errors);
  if (rate > 0) absl::StrAppendFormat(&line, " (~%.0f req/s)", rate);
  if (config.progress_tty) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

absl::StatusOr<PointResult> Runner::Impl::RunPoint(int64_t concurrency, double rate) {
  PointState ps;
  PointResult result;
  result.mode = info.mode;
  result.loop = rate > 0 ? "open" : "closed";
  result.concurrency = static_cast<int>(concurrency);
  result.target_rate = rate;
  result.label = rate > 0 ? absl::StrCat("rate=", rate) : absl::StrCat("c=", concurrency);

  absl::Time start = absl::Now();
  ps.measure_start = start + config.warmup;
  ps.end = ps.measure_start + config.duration;

  std::atomic<bool> stop_progress{false};
  std::thread progress;
  if (config.progress) {
    progress = std::thread([&] {
      absl::Duration period = config.progress_tty ? absl::Milliseconds(250) : absl::Seconds(2);
      while (!stop_progress.load()) {
        absl::SleepFor(period);
        if (!stop_progress.load()) PrintProgress(&ps, result.label, false);
      }
    });
  }

  std::optional<MetricSamples> before;
  auto scrape = [&]() -> std::optional<MetricSamples> {
    absl::StatusOr<std::string> page = HttpGet(config.metrics_address, "/metrics");
    if (!page.ok()) {
      result.metrics_error = std::string(page.status().message());
      return std::nullopt;
    }
    absl::StatusOr<MetricSamples> samples = ParsePrometheusText(*page);
    if (!samples.ok()) {
      result.metrics_error = std::string(samples.status().message());
      return std::nullopt;
    }
    return *std::move(samples);
  };
  std::thread scraper;
  if (!config.metrics_address.empty()) {
    scraper = std::thread([&] {
      absl::SleepFor(ps.measure_start - absl::Now());
      before = scrape();
    });
  }

  if (rate <= 0) {
    {
      std::lock_guard<std::mutex> lock(ps.mu);
      ps.chains = concurrency;
    }
    for (int64_t c = 0; c < concurrency; ++c) Chain(&ps, c);
    std::unique_lock<std::mutex> lock(ps.mu);
    ps.changed.wait(lock, [&ps]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ps.mu) {
      return ps.chains == 0 && ps.outstanding == 0;
    });
  } else {
    // D dispatchers, each a Poisson process of rate R/D: their union is a Poisson process of rate
    // R. One dispatcher cannot keep up at 100k+ requests/s, since a send may serialize and write
    // the request on the sending thread; a late dispatcher would show as latency (counted from
    // the scheduled time) that the server did not cause.
    const int dispatchers =
        std::clamp(static_cast<int>(std::thread::hardware_concurrency()) / 4, 1, 8);
    std::vector<std::thread> threads;
    for (int d = 0; d < dispatchers; ++d) {
      threads.emplace_back([this, &ps, start, rate, dispatchers, d] {
        // Wake-ups tens of microseconds apart: the default 50 us timer slack would bunch them.
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        std::mt19937_64 rng(config.seed + static_cast<uint64_t>(rate * 1000) +
                            static_cast<uint64_t>(d) * 0x9e3779b97f4a7c15ull);
        std::exponential_distribution<double> gap(rate / dispatchers);
        absl::Time t = start;
        while (true) {
          t += absl::Seconds(gap(rng));
          if (t >= ps.end) break;
          absl::Duration wait = t - absl::Now();
          if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
          Request req = NewRequest(t, t >= ps.measure_start);
          bool overloaded = false;
          {
            std::lock_guard<std::mutex> lock(ps.mu);
            if (static_cast<uint64_t>(ps.outstanding) >= config.max_outstanding) {
              overloaded = true;
              if (req.measured) {
                ++ps.sent;
                ++ps.errors;
                ++ps.errors_by_code["CLIENT_BACKLOG"];
              } else {
                ++ps.warm_sent;
                ++ps.warm_errors;
              }
            }
          }
          if (!overloaded) Send(&ps, req, nullptr);
        }
      });
    }
    for (std::thread& t : threads) t.join();
    std::unique_lock<std::mutex> lock(ps.mu);
    ps.changed.wait(lock,
                    [&ps]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ps.mu) { return ps.outstanding == 0; });
  }
  {
    std::unique_lock<std::mutex> lock(ps.mu);
    ps.changed.wait(
        lock, [&ps]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ps.mu) { return ps.verify_pending == 0; });
  }
  if (scraper.joinable()) scraper.join();
  if (before.has_value()) {
    std::optional<MetricSamples> after = scrape();
    if (after.has_value()) result.metrics = DiffHistograms(*before, *after);
  }
  stop_progress = true;
  if (progress.joinable()) {
    progress.join();
    PrintProgress(&ps, result.label, true);
  }

  std::lock_guard<std::mutex> lock(ps.mu);
  result.sent = ps.sent;
  result.answers = ps.answers;
  result.errors = ps.errors;
  result.errors_by_code = ps.errors_by_code;
  result.rows_answered = ps.rows_answered;
  absl::Duration elapsed = std::max(config.duration, ps.last_completion - ps.measure_start);
  result.elapsed_s = absl::ToDoubleSeconds(elapsed);
  result.req_per_s = static_cast<double>(ps.answers) / result.elapsed_s;
  result.rows_per_s = static_cast<double>(ps.rows_answered) / result.elapsed_s;
  result.latency = Summarize(ps.latencies_ms);
  result.send_lag = Summarize(ps.send_lag_ms);
  if (ps.answers > 0) {
    double n = static_cast<double>(ps.answers);
    result.mean_batch_rows = ps.sum_batch_rows / n;
    result.mean_queue_us = ps.sum_queue_us / n;
    result.mean_compute_us = ps.sum_compute_us / n;
  }
  result.verified = ps.verified;
  result.mismatches = ps.mismatches;
  result.max_rel_error = ps.max_rel_error;
  result.warmup_sent = ps.warm_sent;
  result.warmup_answers = ps.warm_answers;
  result.warmup_errors = ps.warm_errors;
  return result;
}

absl::StatusOr<std::unique_ptr<Runner>> Runner::Create(Config config) {
  if (config.concurrency.empty() && config.rates.empty()) {
    return absl::InvalidArgumentError("give --concurrency or --rate");
  }
  if (config.duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--duration must be positive");
  }
  if (config.warmup < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--warmup must not be negative");
  }
  if (config.rows_min < 1 || config.rows_max < config.rows_min) {
    return absl::InvalidArgumentError("--rows must be N or A-B with 1 <= A <= B");
  }
  if (config.verify_fraction < 0 || config.verify_fraction > 1) {
    return absl::InvalidArgumentError("--verify-fraction must be in [0, 1]");
  }
  if ((config.create_k > 0) != (config.create_n > 0)) {
    return absl::InvalidArgumentError("--create takes K,N, both positive");
  }
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  if (absl::Status s = impl->Setup(); !s.ok()) return s;
  return std::unique_ptr<Runner>(new Runner(std::move(impl)));
}

Runner::Runner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Runner::~Runner() {
  for (auto& stream : impl_->streams) stream->Close().IgnoreError();
  impl_->streams.clear();
  impl_->executor.reset();
  impl_->verifier.reset();
  if (impl_->created && !impl_->config.keep_created && impl_->client != nullptr) {
    impl_->client->DeleteWeight(impl_->targets.front().id).IgnoreError();
  }
}

const RunInfo& Runner::info() const { return impl_->info; }

absl::StatusOr<std::vector<PointResult>> Runner::Run() {
  std::vector<PointResult> points;
  if (!impl_->config.rates.empty()) {
    for (double rate : impl_->config.rates) {
      absl::StatusOr<PointResult> p = impl_->RunPoint(0, rate);
      if (!p.ok()) return p.status();
      points.push_back(*std::move(p));
    }
  } else {
    for (int64_t c : impl_->config.concurrency) {
      absl::StatusOr<PointResult> p = impl_->RunPoint(c, 0);
      if (!p.ok()) return p.status();
      points.push_back(*std::move(p));
    }
  }
  return points;
}

}  // namespace marlin::loadgen
