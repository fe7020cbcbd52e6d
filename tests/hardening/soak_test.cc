// A bounded soak: many clients mixing uploads, replaces, deletes, matmuls (unary and streamed),
// cancellations and bad input against an in-process server for MARLIN_SOAK_SECONDS (default 60),
// sampling the process's resident memory and open file descriptors. Passes when every call got an
// answer, no good answer was wrong, and RSS and fds level off: the last third of the samples grow
// by at most 10 % (RSS) and 16 descriptors over the middle third's maximum.
// Built with -DMARLIN_SOAK=ON (label soak; not part of the default run).
#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/hardening/harness.h"

namespace marlin::hardening {
namespace {

int64_t RssKiB() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  long pages = 0, rss = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    std::fclose(f);
  }
  return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

int OpenFds() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
  }
  return n - 2;
}

TEST(SoakTest, MixedLoadLevelsOff) {
  const char* env = std::getenv("MARLIN_SOAK_SECONDS");
  const int seconds = env != nullptr ? std::atoi(env) : 60;
  ServerOptions o = SmallServerOptions();
  o.max_weights = 64;
  o.device_memory_limit = uint64_t{256} << 20;
  auto server = MarlinServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = PlaintextChannel((*server)->port());
  auto stub = v1::MatmulService::NewStub(channel);
  std::mt19937 seed_rng(std::random_device{}());
  const WeightShape shape{.k = 256, .n = 128, .group_size = 128};
  TestWeight stable = RandomWeight(shape, seed_rng);
  ASSERT_TRUE(Upload(*stub, Header("stable", shape, stable.data), stable.data).ok());

  std::atomic<bool> stop{false};
  std::atomic<int64_t> calls{0}, hung{0};
  // Wrong answers by kind of call, so a failure says which part of the mix broke.
  enum Kind { kUpload, kBadMatmul, kBadUpload, kStream, kUnary, kKinds };
  const char* const kKindNames[kKinds] = {"upload", "bad matmul", "bad upload", "full stream",
                                          "unary"};
  std::atomic<int64_t> wrong[kKinds] = {};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937 rng(seed_rng() + c);
      // Each client its own channel, opened anew now and then (connection churn).
      auto ch = PlaintextChannel((*server)->port());
      auto st = v1::MatmulService::NewStub(ch);
      TestWeight mine = RandomWeight(shape, rng);
      const std::string id = absl::StrCat("c", c);
      for (int64_t i = 0; !stop.load(); ++i) {
        if (i % 500 == 499) {
          ch = PlaintextChannel((*server)->port());
          st = v1::MatmulService::NewStub(ch);
        }
        const std::string x = RandomRows(1 + rng() % 8, shape.k, rng);
        const int64_t rows = static_cast<int64_t>(x.size() / 2 / shape.k);
        v1::MatmulResponse resp;
        grpc::Status s;
        switch (rng() % 10) {
          case 0:  // upload or replace
            s = Upload(*st, Header(id, shape, mine.data, /*replace=*/true), mine.data);
            if (!s.ok() && s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) ++wrong[kUpload];
            break;
          case 1: {  // delete
            grpc::ClientContext ctx;
            v1::DeleteWeightRequest req;
            req.set_weight_id(id);
            v1::DeleteWeightResponse r;
            s = st->DeleteWeight(&ctx, req, &r);
            break;
          }
          case 2: {  // bad input
            s = Matmul(*st, Request("stable", rows, x.substr(1)), &resp);
            if (s.error_code() != grpc::StatusCode::INVALID_ARGUMENT) ++wrong[kBadMatmul];
            v1::UploadHeader h = Header(id + "-bad", shape, mine.data);
            h.set_crc32(h.crc32() ^ 1);
            s = Upload(*st, h, mine.data);
            if (s.error_code() != grpc::StatusCode::DATA_LOSS) ++wrong[kBadUpload];
            break;
          }
          case 3: {  // a stream cancelled midway
            grpc::ClientContext ctx;
            auto stream = st->MatmulStream(&ctx);
            for (uint64_t r = 0; r < 16; ++r) stream->Write(Request("stable", rows, x, r));
            stream->Read(&resp);
            ctx.TryCancel();
            while (stream->Read(&resp)) {
            }
            stream->Finish();
            break;
          }
          case 4: {  // a full stream
            grpc::ClientContext ctx;
            ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
            auto stream = st->MatmulStream(&ctx);
            for (uint64_t r = 0; r < 16; ++r) stream->Write(Request("stable", rows, x, r));
            stream->WritesDone();
            int answers = 0;
            const std::string want = stable.Reference(x, rows);
            while (stream->Read(&resp)) {
              ++answers;
              if (resp.status().code() != 0 || resp.output() != want) ++wrong[kStream];
            }
            s = stream->Finish();
            if (!s.ok() || answers != 16)
              ++(s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? hung : wrong[kStream]);
            break;
          }
          default:  // unary on the stable weight
            s = Matmul(*st, Request("stable", rows, x), &resp);
            if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) ++hung;
            if (!s.ok() || resp.output() != stable.Reference(x, rows)) ++wrong[kUnary];
        }
        ++calls;
      }
    });
  }
  struct Sample {
    int t;
    int64_t rss_kib;
    int fds;
  };
  std::vector<Sample> samples;
  const int step = std::max(1, seconds / 30);
  for (int t = 0; t < seconds; t += step) {
    absl::SleepFor(absl::Seconds(step));
    samples.push_back({t + step, RssKiB(), OpenFds()});
    std::printf("soak t=%ds rss_kib=%lld fds=%d calls=%lld\n", t + step,
                static_cast<long long>(samples.back().rss_kib), samples.back().fds,
                static_cast<long long>(calls.load()));
    std::fflush(stdout);
  }
  stop = true;
  for (auto& t : clients) t.join();
  const int64_t in_flight_at_join = (*server)->service().in_flight_requests();
  std::printf("soak in_flight_at_join=%lld\n", static_cast<long long>(in_flight_at_join));
  int64_t wrong_total = 0;
  for (int k = 0; k < kKinds; ++k) {
    wrong_total += wrong[k].load();
    EXPECT_EQ(wrong[k].load(), 0) << "wrong answers to " << kKindNames[k] << " calls";
  }
  EXPECT_EQ(hung.load(), 0);
  // A stream the client cancelled may still be finishing on the server when the client returns.
  EXPECT_TRUE(Eventually([&] { return (*server)->service().in_flight_requests() == 0; }))
      << "requests still in flight: " << (*server)->service().in_flight_requests();
  ASSERT_GE(samples.size(), 3u);
  const size_t third = samples.size() / 3;
  int64_t mid_rss = 0, last_rss = 0;
  int mid_fds = 0, last_fds = 0;
  for (size_t i = third; i < 2 * third; ++i) {
    mid_rss = std::max(mid_rss, samples[i].rss_kib);
    mid_fds = std::max(mid_fds, samples[i].fds);
  }
  for (size_t i = 2 * third; i < samples.size(); ++i) {
    last_rss = std::max(last_rss, samples[i].rss_kib);
    last_fds = std::max(last_fds, samples[i].fds);
  }
  std::printf(
      "soak calls=%lld wrong=%lld hung=%lld rss_kib middle_max=%lld last_max=%lld fds "
      "middle_max=%d last_max=%d\n",
      static_cast<long long>(calls.load()), static_cast<long long>(wrong_total),
      static_cast<long long>(hung.load()), static_cast<long long>(mid_rss),
      static_cast<long long>(last_rss), mid_fds, last_fds);
  EXPECT_LE(last_rss, mid_rss + mid_rss / 10) << "resident memory keeps growing";
  EXPECT_LE(last_fds, mid_fds + 16) << "file descriptors keep growing";
}

}  // namespace
}  // namespace marlin::hardening
