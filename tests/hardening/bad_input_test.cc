// A table of bad inputs over a real channel. Each row names an input, what the server must answer
// (the status in docs/server.md's table) and a word the message must contain. After every row the
// server still computes a good request bit-exactly and holds no half-uploaded weight.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/hardening/harness.h"

namespace marlin::hardening {
namespace {

using ::testing::HasSubstr;

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = MarlinServer::Start(SmallServerOptions());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = PlaintextChannel(server_->port());
    stub_ = v1::MatmulService::NewStub(channel_);
    w_ = RandomWeight(shape_, rng_);
    ASSERT_TRUE(Upload(*stub_, Header("w", shape_, w_.data), w_.data).ok());
  }
  void TearDown() override { server_.reset(); }

  void ExpectStillServing() {
    const std::string x = RandomRows(4, shape_.k, rng_);
    v1::MatmulResponse resp;
    grpc::Status s = Matmul(*stub_, Request("w", 4, x), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.output(), w_.Reference(x, 4));
    EXPECT_EQ(HealthStatus(channel_), 1);
    EXPECT_EQ(server_->service().in_flight_requests(), 0);
  }

  // Sends raw upload messages; the call's final status.
  grpc::Status RawUpload(const std::vector<v1::UploadWeightRequest>& messages) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::WeightInfo info;
    auto writer = stub_->UploadWeight(&ctx, &info);
    for (const auto& m : messages) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  const WeightShape shape_{.k = 256, .n = 128, .group_size = 128};
  std::mt19937 rng_{std::random_device{}()};
  std::unique_ptr<MarlinServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MatmulService::Stub> stub_;
  TestWeight w_;
};

v1::UploadWeightRequest HeaderMsg(const v1::UploadHeader& h) {
  v1::UploadWeightRequest m;
  *m.mutable_header() = h;
  return m;
}
v1::UploadWeightRequest ChunkMsg(std::string bytes) {
  v1::UploadWeightRequest m;
  m.set_chunk(std::move(bytes));
  return m;
}

struct Case {
  std::string name;
  grpc::StatusCode code;
  std::string message;  // a substring of the status message
};

TEST_F(BadInputTest, MatmulRequests) {
  const int64_t k = shape_.k;
  const std::string x = RandomRows(2, k, rng_);
  struct Row {
    Case c;
    v1::MatmulRequest request;
  };
  const std::vector<Row> rows = {
      {{"activations one byte short", grpc::StatusCode::INVALID_ARGUMENT, "activations"},
       Request("w", 2, x.substr(1))},
      {{"activations one row long", grpc::StatusCode::INVALID_ARGUMENT, "rows x K x 2"},
       Request("w", 1, x)},
      {{"no activations", grpc::StatusCode::INVALID_ARGUMENT, "activations"}, Request("w", 2, "")},
      {{"zero rows", grpc::StatusCode::INVALID_ARGUMENT, "rows must be at least 1"},
       Request("w", 0, "")},
      {{"rows over the limit", grpc::StatusCode::INVALID_ARGUMENT, "--max-rows-per-request"},
       Request("w", 129, RandomRows(129, k, rng_))},
      {{"rows 2^32-1", grpc::StatusCode::INVALID_ARGUMENT, "--max-rows-per-request"},
       Request("w", 0xffffffffu, x)},
      {{"unknown id", grpc::StatusCode::NOT_FOUND, "no weight"}, Request("nope", 2, x)},
      {{"empty id", grpc::StatusCode::INVALID_ARGUMENT, "weight_id is empty"}, Request("", 2, x)},
      {{"100 KB id", grpc::StatusCode::NOT_FOUND, "no weight"},
       Request(std::string(100000, 'a'), 2, x)},
      {{"malformed id", grpc::StatusCode::NOT_FOUND, "no weight"},
       Request("../a b\n\xc3\xbc", 2, x)},
      // Not UTF-8 in a proto3 string: the message cannot be parsed, the handler never runs and
      // gRPC answers UNIMPLEMENTED with no message (a stream just ends: see docs/server.md).
      {{"non-UTF-8 id (unparseable message)", grpc::StatusCode::UNIMPLEMENTED, ""},
       Request(std::string("\0\xff\n", 3), 2, x)},
      {{"message over --max-message-bytes", grpc::StatusCode::RESOURCE_EXHAUSTED, "max"},
       Request("w", 2, std::string(server_->options().max_message_bytes + 1, '\0'))},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.c.name);
    v1::MatmulResponse resp;
    grpc::Status s = Matmul(*stub_, row.request, &resp);
    EXPECT_EQ(s.error_code(), row.c.code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(row.c.message));
    EXPECT_LE(s.error_message().size(), 1024u);  // an id is never echoed whole
    // The same request inside a stream: answered by a status, the stream goes on.
    if (row.c.code != grpc::StatusCode::RESOURCE_EXHAUSTED &&
        row.c.code != grpc::StatusCode::UNIMPLEMENTED) {
      grpc::ClientContext ctx;
      auto stream = stub_->MatmulStream(&ctx);
      v1::MatmulRequest bad = row.request;
      bad.set_request_id(1);
      ASSERT_TRUE(stream->Write(bad));
      ASSERT_TRUE(stream->Write(Request("w", 2, x, 2)));
      stream->WritesDone();
      std::map<uint64_t, v1::MatmulResponse> got;
      while (stream->Read(&resp)) got[resp.request_id()] = resp;
      EXPECT_TRUE(stream->Finish().ok());
      EXPECT_EQ(got[1].status().code(), static_cast<int>(row.c.code));
      EXPECT_EQ(got[2].status().code(), 0);
      EXPECT_EQ(got[2].output(), w_.Reference(x, 2));
    }
    ExpectStillServing();
  }
  ExpectStoreHoldsExactly(*server_, {"w"});
}

TEST_F(BadInputTest, NanAndInfActivationsAreComputedLikeTheReference) {
  std::string x = RandomRows(3, shape_.k, rng_);
  const uint16_t specials[] = {0x7e00, 0x7c00, 0xfc00, 0x7bff, 0xfbff, 0x0001};  // NaN ±Inf max sub
  for (size_t i = 0; i < x.size() / 2; i += 7) {
    const uint16_t v = specials[i % 6];
    std::memcpy(&x[2 * i], &v, 2);
  }
  v1::MatmulResponse resp;
  grpc::Status s = Matmul(*stub_, Request("w", 3, x), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.output(), w_.Reference(x, 3));
  ExpectStillServing();
}

TEST_F(BadInputTest, AnswerOverTheMessageLimitIsRefusedBeforeComputing) {
  // N large enough that 128 rows of answer exceed the message size sized for 128 rows of K = 32768.
  const WeightShape wide{.k = 128, .n = 33024, .group_size = 128};
  TestWeight w = RandomWeight(wide, rng_);
  ASSERT_TRUE(Upload(*stub_, Header("wide", wide, w.data), w.data).ok());
  v1::MatmulResponse resp;
  grpc::Status s = Matmul(*stub_, Request("wide", 128, RandomRows(128, 128, rng_)), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("--max-message-bytes"));
  const std::string x = RandomRows(2, 128, rng_);
  s = Matmul(*stub_, Request("wide", 2, x), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.output(), w.Reference(x, 2));
  ExpectStillServing();
}

TEST_F(BadInputTest, DuplicateRequestIdsInOneStreamAreEachAnswered) {
  // Documented behaviour: request_id is opaque to the server; duplicates are computed and
  // answered separately (each exactly once), in any order.
  grpc::ClientContext ctx;
  auto stream = stub_->MatmulStream(&ctx);
  std::vector<std::string> xs;
  for (int i = 0; i < 6; ++i) {
    xs.push_back(RandomRows(1 + i, shape_.k, rng_));
    ASSERT_TRUE(stream->Write(Request("w", 1 + i, xs.back(), /*request_id=*/42)));
  }
  stream->WritesDone();
  std::multiset<std::string> want, got;
  for (int i = 0; i < 6; ++i) want.insert(w_.Reference(xs[i], 1 + i));
  v1::MatmulResponse resp;
  while (stream->Read(&resp)) {
    EXPECT_EQ(resp.request_id(), 42u);
    EXPECT_EQ(resp.status().code(), 0);
    got.insert(resp.output());
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(got, want);
  ExpectStillServing();
}

TEST_F(BadInputTest, Uploads) {
  const WeightShape s{.k = 128, .n = 64, .group_size = 128};
  TestWeight w = RandomWeight(s, rng_);
  const std::string& d = w.data;
  auto hdr = [&](std::function<void(v1::UploadHeader&)> edit) {
    v1::UploadHeader h = Header("u", s, d);
    edit(h);
    return HeaderMsg(h);
  };
  std::string flipped = d;
  flipped[d.size() / 2] ^= 0x40;
  struct Row {
    Case c;
    std::vector<v1::UploadWeightRequest> messages;
  };
  const std::vector<Row> rows = {
      {{"total_bytes one short", grpc::StatusCode::INVALID_ARGUMENT, "total_bytes"},
       {hdr([&](auto& h) { h.set_total_bytes(d.size() - 1); }), ChunkMsg(d)}},
      {{"more bytes than total_bytes", grpc::StatusCode::INVALID_ARGUMENT, "more than"},
       {hdr([](auto&) {}), ChunkMsg(d), ChunkMsg("x")}},
      {{"truncated", grpc::StatusCode::INVALID_ARGUMENT, "truncated"},
       {hdr([](auto&) {}), ChunkMsg(d.substr(0, d.size() / 2))}},
      {{"header only", grpc::StatusCode::INVALID_ARGUMENT, "truncated"}, {hdr([](auto&) {})}},
      {{"wrong checksum", grpc::StatusCode::DATA_LOSS, "checksum"},
       {hdr([](auto&) {}), ChunkMsg(flipped)}},
      {{"chunk before header", grpc::StatusCode::INVALID_ARGUMENT, "first upload message"},
       {ChunkMsg(d), hdr([](auto&) {})}},
      {{"no messages", grpc::StatusCode::INVALID_ARGUMENT, "without a header"}, {}},
      {{"empty message", grpc::StatusCode::INVALID_ARGUMENT, "neither"},
       {v1::UploadWeightRequest()}},
      {{"second header (interleaved uploads in one call)", grpc::StatusCode::INVALID_ARGUMENT,
        "second header"},
       {hdr([](auto&) {}), ChunkMsg(d.substr(0, 100)), hdr([](auto& h) { h.set_weight_id("v"); }),
        ChunkMsg(d.substr(100))}},
      {{"oversized chunk", grpc::StatusCode::INVALID_ARGUMENT, "1 MiB"},
       {hdr([](auto& h) {
          h.set_k(4096);
          h.set_n(256);
          h.set_total_bytes(4096 * 256 * 2);
        }),
        ChunkMsg(std::string((1 << 20) + 1, '\0'))}},
      {{"K = 0", grpc::StatusCode::INVALID_ARGUMENT, "K"}, {hdr([](auto& h) { h.set_k(0); })}},
      {{"N not a tile multiple", grpc::StatusCode::INVALID_ARGUMENT, "N"},
       {hdr([](auto& h) { h.set_n(65); })}},
      {{"group size 7", grpc::StatusCode::INVALID_ARGUMENT, "group_size"},
       {hdr([](auto& h) { h.set_group_size(7); })}},
      {{"unknown source", grpc::StatusCode::INVALID_ARGUMENT, "header.source"},
       {hdr([](auto& h) { h.set_source(static_cast<v1::WeightSource>(99)); })}},
      {{"layout on GPTQ", grpc::StatusCode::INVALID_ARGUMENT, "layout"},
       {hdr([](auto& h) { h.set_source(v1::WEIGHT_SOURCE_GPTQ); })}},
      {{"bad id", grpc::StatusCode::INVALID_ARGUMENT, "weight"},
       {hdr([](auto& h) { h.set_weight_id("a b"); }), ChunkMsg(d)}},
      {{"huge shape (over --max-weight-bytes)", grpc::StatusCode::RESOURCE_EXHAUSTED,
        "max-weight-bytes"},
       {hdr([](auto& h) {
         h.set_k(1 << 20);
         h.set_n(1 << 16);
         h.set_total_bytes(uint64_t{1} << 37);
       })}},
      {{"existing id without replace", grpc::StatusCode::ALREADY_EXISTS, "replace"},
       {hdr([](auto& h) { h.set_weight_id("w"); })}},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.c.name);
    grpc::Status st = RawUpload(row.messages);
    EXPECT_EQ(st.error_code(), row.c.code) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(row.c.message));
    ExpectStoreHoldsExactly(*server_, {"w"});
    ExpectStillServing();
  }
  // GPTQ data that is not a symmetric checkpoint: refused after all bytes arrived.
  const WeightShape g{.k = 128, .n = 64, .group_size = 128};
  std::string gptq(g.k / 8 * g.n * 4 + g.n * 2 + g.n / 8 * 4, '\x13');
  v1::UploadHeader gh = Header("g", g, gptq);
  gh.set_source(v1::WEIGHT_SOURCE_GPTQ);
  gh.set_layout(v1::DENSE_LAYOUT_UNSPECIFIED);
  grpc::Status st = Upload(*stub_, gh, gptq);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  ExpectStoreHoldsExactly(*server_, {"w"});
}

TEST_F(BadInputTest, InterleavedUploadsOfOneIdPublishExactlyOne) {
  const WeightShape s{.k = 128, .n = 64, .group_size = 128};
  TestWeight a = RandomWeight(s, rng_), b = RandomWeight(s, rng_);
  grpc::ClientContext ca, cb;
  v1::WeightInfo ia, ib;
  auto wa = stub_->UploadWeight(&ca, &ia);
  auto wb = stub_->UploadWeight(&cb, &ib);
  ASSERT_TRUE(wa->Write(HeaderMsg(Header("same", s, a.data))));
  wb->Write(HeaderMsg(Header("same", s, b.data)));
  for (size_t at = 0; at < a.data.size(); at += 4096) {
    wa->Write(ChunkMsg(a.data.substr(at, 4096)));
    wb->Write(ChunkMsg(b.data.substr(at, 4096)));
  }
  wa->WritesDone();
  wb->WritesDone();
  grpc::Status sa = wa->Finish(), sb = wb->Finish();
  // Either the second header is refused at once (the first reserved the id), or both reserve
  // and the second to finish is refused when publishing. Exactly one wins.
  ASSERT_NE(sa.ok(), sb.ok()) << sa.error_message() << " / " << sb.error_message();
  const grpc::Status& loser = sa.ok() ? sb : sa;
  EXPECT_EQ(loser.error_code(), grpc::StatusCode::ALREADY_EXISTS) << loser.error_message();
  const TestWeight& winner = sa.ok() ? a : b;
  const std::string x = RandomRows(2, s.k, rng_);
  v1::MatmulResponse resp;
  ASSERT_TRUE(Matmul(*stub_, Request("same", 2, x), &resp).ok());
  EXPECT_EQ(resp.output(), winner.Reference(x, 2));
  ExpectStoreHoldsExactly(*server_, {"w", "same"});
}

// Raw bytes written to the gRPC port by a plain TCP client.
void SendJunk(int port, const std::string& bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  (void)!write(fd, bytes.data(), bytes.size());
  char buf[256];
  timeval tv{.tv_sec = 0, .tv_usec = 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  (void)!read(fd, buf, sizeof(buf));  // whatever the server says (GOAWAY) or a timeout
  close(fd);
}

TEST_F(BadInputTest, GarbageBytesOnThePortDoNotHurtTheServer) {
  std::string random(64 << 10, '\0');
  for (char& c : random) c = static_cast<char>(rng_());
  const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  const std::vector<std::string> junk = {
      random,
      "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
      preface,                           // then silence
      preface + random.substr(0, 4096),  // a preface, then junk frames
      preface + std::string("\x00\x00\x04\x08\x00\x00\x00\x00\x00\xff\xff\xff\xff", 13),
      std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),  // a TLS ClientHello
      "",
  };
  std::vector<std::thread> threads;
  for (int round = 0; round < 3; ++round) {
    for (const std::string& j : junk) {
      threads.emplace_back([this, j] { SendJunk(server_->port(), j); });
    }
  }
  for (auto& t : threads) t.join();
  ExpectStillServing();
  ExpectStoreHoldsExactly(*server_, {"w"});
}

}  // namespace
}  // namespace marlin::hardening
