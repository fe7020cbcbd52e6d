// Unit tests of the client library that need no server: target parsing, the service config, the
// cancellation token, argument checks, and the errors of calls to an address nobody listens on.
#include "client/client.h"

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "client/matmul_stream.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace marlin {
namespace {

using ::testing::HasSubstr;

TEST(ResolveChannelTargetTest, SingleTargetsPassThrough) {
  bool multi = true;
  EXPECT_EQ(*ResolveChannelTarget("localhost:50051", &multi), "localhost:50051");
  EXPECT_FALSE(multi);
  EXPECT_EQ(*ResolveChannelTarget("dns:///svc.local:50051", &multi), "dns:///svc.local:50051");
  EXPECT_FALSE(multi);
  EXPECT_EQ(*ResolveChannelTarget(" 10.0.0.1:1 ", &multi), "10.0.0.1:1");
}

TEST(ResolveChannelTargetTest, SeveralAddressesBecomeStaticList) {
  bool multi = false;
  EXPECT_EQ(*ResolveChannelTarget("127.0.0.1:1,localhost:2", &multi),
            "ipv4:127.0.0.1:1,127.0.0.1:2");
  EXPECT_TRUE(multi);
  EXPECT_EQ(*ResolveChannelTarget("[::1]:5,[::1]:6", &multi), "ipv6:[::1]:5,[::1]:6");
  EXPECT_EQ(*ResolveChannelTarget("ipv4:1.2.3.4:5,1.2.3.4:6", &multi), "ipv4:1.2.3.4:5,1.2.3.4:6");
  EXPECT_TRUE(multi);
}

TEST(ResolveChannelTargetTest, RejectsBadLists) {
  bool multi = false;
  EXPECT_EQ(ResolveChannelTarget("", &multi).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ResolveChannelTarget("a.example:1,b.example:2", &multi).status().message(),
              HasSubstr("IP addresses only"));
  EXPECT_THAT(ResolveChannelTarget("1.2.3.4,1.2.3.5:1", &multi).status().message(),
              HasSubstr("no port"));
  EXPECT_THAT(ResolveChannelTarget("1.2.3.4:99999,1.2.3.5:1", &multi).status().message(),
              HasSubstr("bad port"));
  EXPECT_FALSE(ResolveChannelTarget("1.2.3.4:1,[::1]:2", &multi).ok());
}

TEST(ServiceConfigTest, RetriesIdempotentMethodsOnly) {
  ClientOptions options;
  std::string config = BuildServiceConfig(options, /*multi_address=*/true);
  EXPECT_THAT(config, HasSubstr(R"("loadBalancingConfig":[{"round_robin":{}}])"));
  EXPECT_THAT(config, HasSubstr(R"("method":"Matmul")"));
  EXPECT_THAT(config, HasSubstr(R"("method":"GetWeight")"));
  EXPECT_THAT(config, HasSubstr(R"("method":"ListWeights")"));
  EXPECT_THAT(config, HasSubstr(R"("method":"ServerInfo")"));
  EXPECT_THAT(config, HasSubstr(R"("retryableStatusCodes":["UNAVAILABLE"])"));
  EXPECT_THAT(config, HasSubstr(R"("maxAttempts":5)"));
  EXPECT_FALSE(absl::StrContains(config, "UploadWeight"));
  EXPECT_FALSE(absl::StrContains(config, "DeleteWeight"));

  std::string single = BuildServiceConfig(options, /*multi_address=*/false);
  EXPECT_FALSE(absl::StrContains(single, "loadBalancingConfig"));
  options.retry.max_attempts = 1;
  EXPECT_FALSE(absl::StrContains(BuildServiceConfig(options, false), "retryPolicy"));
}

TEST(CancellationTokenTest, CancelsRegisteredAndLaterCalls) {
  CancellationToken token;
  int cancelled = 0;
  uint64_t a = token.Register([&] { ++cancelled; });
  uint64_t b = token.Register([&] { ++cancelled; });
  token.Unregister(b);
  EXPECT_FALSE(token.cancelled());
  token.Cancel();
  EXPECT_TRUE(token.cancelled());
  EXPECT_EQ(cancelled, 1);
  token.Unregister(a);
  EXPECT_EQ(token.Register([&] { ++cancelled; }), 0u);  // runs at once
  EXPECT_EQ(cancelled, 2);
  token.Cancel();  // idempotent
  EXPECT_EQ(cancelled, 2);
}

// A second Cancel() while the first is inside a call's cancel_fn must not let that call's
// Unregister return early (its state would be freed under the running cancel_fn).
TEST(CancellationTokenTest, UnregisterWaitsForARunningCancelFnDespiteASecondCancel) {
  CancellationToken token;
  std::promise<void> inside, release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> fn_returned{false};
  token.Register([] {});
  const uint64_t slow = token.Register([&] {  // registered last: cancelled first
    inside.set_value();
    released.wait();
    fn_returned = true;
  });
  std::thread first([&] { token.Cancel(); });
  inside.get_future().wait();
  std::thread second([&] { token.Cancel(); });
  second.join();
  std::atomic<bool> unregistered{false};
  std::thread owner([&] {
    token.Unregister(slow);
    unregistered = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(unregistered.load()) << "Unregister returned while its cancel_fn was running";
  release.set_value();
  owner.join();
  first.join();
  EXPECT_TRUE(fn_returned.load());
}

TEST(TlsOptionsTest, FromFilesNamesTheMissingFile) {
  absl::StatusOr<TlsOptions> tls = TlsOptions::FromFiles("/nonexistent/ca.pem");
  ASSERT_FALSE(tls.ok());
  EXPECT_THAT(tls.status().message(), HasSubstr("/nonexistent/ca.pem"));
  EXPECT_EQ(TlsOptions::FromFiles("", "cert.pem", "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ClientTest, CreateRejectsBadOptions) {
  ClientOptions options;
  options.load_balancing = "random";
  EXPECT_FALSE(Client::Create(options).ok());
  options.load_balancing = "";
  options.target = "a.example:1,b.example:2";
  EXPECT_FALSE(Client::Create(options).ok());
}

// 127.0.0.1:1 refuses connections: calls fail fast with UNAVAILABLE (after the retries).
std::unique_ptr<Client> DeadServerClient() {
  ClientOptions options;
  options.target = "127.0.0.1:1";
  options.retry.max_attempts = 2;
  options.retry.initial_backoff = absl::Milliseconds(10);
  options.default_deadline = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return *std::move(client);
}

TEST(ClientTest, DeadServerCallsFailUnavailable) {
  std::unique_ptr<Client> client = DeadServerClient();
  EXPECT_EQ(client->ListWeights().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->GetServerInfo().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->Health().status().code(), absl::StatusCode::kUnavailable);
  std::vector<uint16_t> x(64, 0);
  EXPECT_EQ(client->Matmul("w", 1, x).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->MatmulAsync("w", 1, x).get().status().code(), absl::StatusCode::kUnavailable);
  std::vector<uint16_t> w(64 * 64, 0);
  EXPECT_EQ(client->UploadFp16("w", 64, 64, w, WeightLayout::kKN).status().code(),
            absl::StatusCode::kUnavailable);
  absl::StatusOr<std::unique_ptr<MatmulStream>> stream = client->OpenStream();
  ASSERT_TRUE(stream.ok());
  EXPECT_EQ((*stream)->Submit("w", 1, x).get().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*stream)->Close().code(), absl::StatusCode::kUnavailable);
}

TEST(ClientTest, ArgumentChecksRunBeforeTheCall) {
  std::unique_ptr<Client> client = DeadServerClient();
  std::vector<uint16_t> x(10, 0);
  EXPECT_EQ(client->Matmul("w", 0, x).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Matmul("w", 3, x).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->UploadFp16("w", 64, 64, x, WeightLayout::kKN).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> qweight(8 * 64), qzeros(7), g_idx;
  std::vector<uint16_t> scales(64);
  EXPECT_EQ(client->UploadGptq("w", 64, 64, qweight, scales, qzeros, g_idx).status().code(),
            absl::StatusCode::kInvalidArgument);  // qzeros must be (K/G)*(N/8) = 8
  EXPECT_EQ(client->UploadNpy("w", "/nonexistent.npy", WeightLayout::kKN).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ClientTest, CancelledTokenCancelsTheCall) {
  std::unique_ptr<Client> client = DeadServerClient();
  CallOptions call;
  call.cancel = std::make_shared<CancellationToken>();
  call.cancel->Cancel();
  call.wait_for_ready = true;  // would otherwise wait for the whole deadline
  EXPECT_EQ(client->ListWeights(call).status().code(), absl::StatusCode::kCancelled);
}

TEST(ClientTest, WaitForReadyHonoursTheDeadline) {
  std::unique_ptr<Client> client = DeadServerClient();
  CallOptions call;
  call.wait_for_ready = true;
  call.timeout = absl::Milliseconds(200);
  absl::Time start = absl::Now();
  EXPECT_EQ(client->ListWeights(call).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

}  // namespace
}  // namespace marlin
