// Faults over a real channel: clients that cancel or vanish mid-call, deadlines that pass in the
// queue, an injected device error (test-only --inject-backend-fault-after) and an injected
// out-of-memory during an upload (--inject-upload-oom-after). Every accepted request gets exactly
// one answer, nothing hangs, and nothing half-done stays behind.
#include <atomic>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/hardening/harness.h"

namespace marlin::hardening {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

class FaultTest : public ::testing::Test {
 protected:
  void Start(ServerOptions o) {
    auto server = MarlinServer::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = PlaintextChannel(server_->port());
    stub_ = v1::MatmulService::NewStub(channel_);
  }
  void Put(const std::string& id, const TestWeight& w) {
    grpc::Status s = Upload(*stub_, Header(id, w.shape, w.data), w.data);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  void ExpectIdle() {
    EXPECT_TRUE(Eventually([&] {
      return server_->service().in_flight_requests() == 0 &&
             server_->service().open_streams() == 0 && server_->batcher().queued_requests() == 0;
    })) << "in flight "
        << server_->service().in_flight_requests() << ", streams "
        << server_->service().open_streams();
  }

  std::mt19937 rng_{std::random_device{}()};
  const WeightShape shape_{.k = 256, .n = 128, .group_size = 128};
  std::unique_ptr<MarlinServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MatmulService::Stub> stub_;
};

TEST_F(FaultTest, InjectedDeviceErrorTurnsHealthNotServingAndNothingHangs) {
  ServerOptions o = SmallServerOptions();
  o.inject_backend_fault_after = 3;
  Start(o);
  TestWeight w = RandomWeight(shape_, rng_);
  Put("w", w);
  EXPECT_EQ(HealthStatus(channel_), 1);
  std::map<grpc::StatusCode, int> codes;
  for (int i = 0; i < 12; ++i) {
    const std::string x = RandomRows(2, shape_.k, rng_);
    v1::MatmulResponse resp;
    grpc::Status s = Matmul(*stub_, Request("w", 2, x), &resp, "", std::chrono::seconds(5));
    ++codes[s.error_code()];
    if (s.ok()) {
      EXPECT_EQ(resp.output(), w.Reference(x, 2));
    } else {
      EXPECT_THAT(s.error_code(), AnyOf(grpc::StatusCode::INTERNAL, grpc::StatusCode::UNAVAILABLE));
      EXPECT_NE(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    }
  }
  EXPECT_EQ(codes[grpc::StatusCode::OK], 3);
  EXPECT_EQ(codes[grpc::StatusCode::INTERNAL], 1);     // the batch that failed
  EXPECT_EQ(codes[grpc::StatusCode::UNAVAILABLE], 8);  // refused up front afterwards
  EXPECT_TRUE(Eventually([&] { return HealthStatus(channel_) == 2; }));
  // A stream after the failure: every request answered UNAVAILABLE, the stream ends.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto stream = stub_->MatmulStream(&ctx);
  for (uint64_t i = 0; i < 5; ++i) stream->Write(Request("w", 1, RandomRows(1, 256, rng_), i));
  stream->WritesDone();
  v1::MatmulResponse resp;
  int answers = 0;
  while (stream->Read(&resp)) {
    ++answers;
    EXPECT_EQ(resp.status().code(), static_cast<int>(grpc::StatusCode::UNAVAILABLE));
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(answers, 5);
  ExpectIdle();
}

TEST_F(FaultTest, OutOfMemoryDuringAnUploadLeavesNothingBehind) {
  ServerOptions o = SmallServerOptions();
  o.inject_upload_oom_after = 1;
  Start(o);
  TestWeight a = RandomWeight(shape_, rng_), b = RandomWeight(shape_, rng_);
  Put("a", a);
  grpc::Status s = Upload(*stub_, Header("b", shape_, b.data), b.data);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("out of memory"));
  // Replacing fails the same way and keeps the old version serving.
  s = Upload(*stub_, Header("a", shape_, b.data, /*replace=*/true), b.data);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ExpectStoreHoldsExactly(*server_, {"a"});
  const std::string x = RandomRows(3, shape_.k, rng_);
  v1::MatmulResponse resp;
  ASSERT_TRUE(Matmul(*stub_, Request("a", 3, x), &resp).ok());
  EXPECT_EQ(resp.output(), a.Reference(x, 3));
  EXPECT_EQ(HealthStatus(channel_), 1);  // running out of memory is not a device failure
}

TEST_F(FaultTest, DeviceMemoryLimitRefusesAtTheHeader) {
  Start(SmallServerOptions());
  const uint64_t bytes = server_->backend().BytesFor(shape_);
  server_.reset();
  ServerOptions o = SmallServerOptions();
  o.device_memory_limit = bytes + bytes / 2;  // holds one weight of shape_, not two
  Start(o);
  TestWeight a = RandomWeight(shape_, rng_);
  Put("a", a);
  grpc::Status s = Upload(*stub_, Header("b", shape_, a.data), a.data);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  ExpectStoreHoldsExactly(*server_, {"a"});
}

TEST_F(FaultTest, ClientCancelsMidStream) {
  ServerOptions o = SmallServerOptions();
  o.max_queue_delay_us = 20'000;
  Start(o);
  TestWeight w = RandomWeight(shape_, rng_);
  Put("w", w);
  for (int round = 0; round < 5; ++round) {
    grpc::ClientContext ctx;
    auto stream = stub_->MatmulStream(&ctx);
    for (uint64_t i = 0; i < 100; ++i) {
      if (!stream->Write(Request("w", 2, RandomRows(2, shape_.k, rng_), i))) break;
    }
    v1::MatmulResponse resp;
    if (round % 2 == 1) stream->Read(&resp);  // some answers under way
    ctx.TryCancel();
    while (stream->Read(&resp)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ExpectIdle();
  const std::string x = RandomRows(2, shape_.k, rng_);
  v1::MatmulResponse resp;
  ASSERT_TRUE(Matmul(*stub_, Request("w", 2, x), &resp).ok());
  EXPECT_EQ(resp.output(), w.Reference(x, 2));
}

TEST_F(FaultTest, AnswersOfACancelledStreamAreDroppedAndCounted) {
  ServerOptions o = SmallServerOptions();
  o.work_conserving = false;         // batches close only when full or late:
  o.max_batch_rows = 128;            // eight two-row requests never fill one,
  o.max_queue_delay_us = 1'000'000;  // and they wait a second for company
  Start(o);
  TestWeight w = RandomWeight(shape_, rng_);
  Put("w", w);
  constexpr int kRequests = 8;
  grpc::ClientContext ctx;
  auto stream = stub_->MatmulStream(&ctx);
  for (uint64_t i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(stream->Write(Request("w", 2, RandomRows(2, shape_.k, rng_), i)));
  }
  ASSERT_TRUE(Eventually([&] { return server_->batcher().queued_requests() == kRequests; }));
  ctx.TryCancel();
  v1::MatmulResponse resp;
  while (stream->Read(&resp)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectIdle();
  EXPECT_THAT(server_->metrics().Scrape(),
              HasSubstr(absl::StrCat("marlin_stream_answers_dropped_total{reason=\"cancelled\"} ",
                                     kRequests)));
}

TEST_F(FaultTest, ClientVanishesMidUpload) {
  Start(SmallServerOptions());
  TestWeight w = RandomWeight({.k = 1024, .n = 1024, .group_size = 128}, rng_);
  for (int round = 0; round < 3; ++round) {
    grpc::ClientContext ctx;
    v1::WeightInfo info;
    auto writer = stub_->UploadWeight(&ctx, &info);
    v1::UploadWeightRequest m;
    *m.mutable_header() = Header("half", w.shape, w.data);
    ASSERT_TRUE(writer->Write(m));
    m.set_chunk(w.data.substr(0, 256 << 10));
    writer->Write(m);
    ctx.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // A channel that is closed mid-upload (the process of a client dies).
  {
    auto channel = PlaintextChannel(server_->port());
    auto stub = v1::MatmulService::NewStub(channel);
    auto ctx = std::make_unique<grpc::ClientContext>();
    v1::WeightInfo info;
    auto writer = stub->UploadWeight(ctx.get(), &info);
    v1::UploadWeightRequest m;
    *m.mutable_header() = Header("half", w.shape, w.data);
    ASSERT_TRUE(writer->Write(m));
    ctx->TryCancel();
    writer->Finish();
  }
  EXPECT_TRUE(Eventually([&] { return server_->store().accounted_bytes() == 0; }));
  ExpectStoreHoldsExactly(*server_, {});
  ASSERT_TRUE(Upload(*stub_, Header("half", w.shape, w.data), w.data).ok());  // id is free
}

TEST_F(FaultTest, StreamDeadlinePassesInTheQueue) {
  ServerOptions o = SmallServerOptions();
  o.max_queue_delay_us = 400'000;
  o.work_conserving = false;  // requests wait the whole delay even with idle lanes
  o.max_batch_rows = 1024;
  Start(o);
  TestWeight w = RandomWeight(shape_, rng_);
  Put("w", w);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  auto stream = stub_->MatmulStream(&ctx);
  for (uint64_t i = 0; i < 5; ++i) stream->Write(Request("w", 1, RandomRows(1, 256, rng_), i));
  stream->WritesDone();
  v1::MatmulResponse resp;
  int answers = 0;
  while (stream->Read(&resp)) {
    ++answers;  // nothing computed after its deadline
    EXPECT_EQ(resp.status().code(), static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
  }
  // The server's queue sweep answers each request DEADLINE_EXCEEDED and, the client having
  // half-closed, may end the stream OK just before gRPC's own deadline ends it.
  const grpc::Status end = stream->Finish();
  if (end.ok()) {
    EXPECT_EQ(answers, 5);
  } else {
    EXPECT_EQ(end.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << end.error_message();
  }
  ExpectIdle();
  EXPECT_EQ(server_->store().Get("w")->rows_served(), 0u);
}

TEST_F(FaultTest, ManyClientsWithCancellationsGetExactlyOneAnswerPerRequest) {
  ServerOptions o = SmallServerOptions();
  o.max_in_flight_per_stream = 8;
  Start(o);
  TestWeight w = RandomWeight(shape_, rng_);
  Put("w", w);
  const std::string x = RandomRows(2, shape_.k, rng_);
  const std::string want = w.Reference(x, 2);
  std::atomic<int> bad{0}, complete_streams{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 12; ++c) {
    clients.emplace_back([&, c] {
      for (int round = 0; round < 4; ++round) {
        const bool cancel = (c + round) % 3 == 0;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
        auto stream = stub_->MatmulStream(&ctx);
        std::thread reader([&] {
          std::map<uint64_t, int> seen;
          v1::MatmulResponse resp;
          while (stream->Read(&resp)) {
            if (++seen[resp.request_id()] > 1 || resp.status().code() != 0 ||
                resp.output() != want) {
              ++bad;
            }
          }
          if (!cancel && seen.size() != 40) ++bad;
        });
        for (uint64_t i = 0; i < 40; ++i) {
          if (cancel && i == 20) ctx.TryCancel();
          if (!stream->Write(Request("w", 2, x, i))) break;
        }
        stream->WritesDone();
        reader.join();
        grpc::Status s = stream->Finish();
        if (!cancel && !s.ok()) ++bad;
        if (!cancel) ++complete_streams;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(complete_streams.load(), 32);
  ExpectIdle();
}

}  // namespace
}  // namespace marlin::hardening
