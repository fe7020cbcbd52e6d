// Unit tests of the sharded client (ClientOptions::shard_peers) that need no server: the peer list
// checks, routing by the servers' hash, and errors that name the shard when its peer is down.
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"
#include "client/matmul_stream.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/sharding/shard_map.h"

namespace marlin {
namespace {

using ::testing::HasSubstr;

// Loopback ports nobody listens on (the kernel refuses at once).
std::vector<std::string> DeadPeers(int count) {
  std::vector<std::string> peers;
  for (int i = 0; i < count; ++i) peers.push_back(absl::StrCat("127.0.0.1:", i + 1));
  return peers;
}

ClientOptions Options(std::vector<std::string> peers) {
  ClientOptions options;
  options.shard_peers = std::move(peers);
  options.retry.max_attempts = 1;
  options.default_deadline = absl::Seconds(5);
  return options;
}

TEST(ShardedClientTest, RejectsBadPeerLists) {
  for (const std::vector<std::string>& peers : std::vector<std::vector<std::string>>{
           {"127.0.0.1:1", "127.0.0.1:1"}, {"127.0.0.1:1", ""}, {"127.0.0.1:1,127.0.0.1:2"}}) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(Options(peers));
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument)
        << absl::StrJoin(peers, "|");
  }
}

TEST(ShardedClientTest, RoutesByTheServersHash) {
  const std::vector<std::string> peers = DeadPeers(5);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(Options(peers));
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->shard_count(), 5);
  EXPECT_EQ((*client)->channel_target(), absl::StrJoin(peers, ","));
  std::mt19937_64 rng(std::random_device{}());
  std::vector<int> hits(5, 0);
  for (int i = 0; i < 500; ++i) {
    const std::string id = absl::StrCat("w", rng());
    const int shard = (*client)->ShardOf(id);
    EXPECT_EQ(shard, sharding::ShardIndexOf(id, 5)) << id;
    ++hits[shard];
  }
  for (int h : hits) EXPECT_GT(h, 50);

  ClientOptions plain;
  plain.target = "127.0.0.1:1";
  absl::StatusOr<std::unique_ptr<Client>> unsharded = Client::Create(plain);
  ASSERT_TRUE(unsharded.ok());
  EXPECT_EQ((*unsharded)->shard_count(), 1);
  EXPECT_EQ((*unsharded)->ShardOf("anything"), 0);
}

TEST(ShardedClientTest, ErrorsNameTheUnreachableShard) {
  const std::vector<std::string> peers = DeadPeers(3);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(Options(peers));
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<std::vector<WeightInfo>> list = (*client)->ListWeights();
  EXPECT_EQ(list.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(list.status().message(), HasSubstr("shard 0 (127.0.0.1:1)"));
  absl::StatusOr<HealthStatus> health = (*client)->Health();
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(health.status().message(), HasSubstr("shard 0 (127.0.0.1:1)"));

  std::vector<uint16_t> x(256, 0);
  EXPECT_EQ((*client)->Matmul("w", 1, x).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*client)->MatmulAsync("w", 1, x).get().status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ((*client)->Matmul("w", 0, x).status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<std::unique_ptr<MatmulStream>> stream = (*client)->OpenStream();
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->Submit("w", 1, x).get().status().code(), absl::StatusCode::kUnavailable);
  const int owner = (*client)->ShardOf("w");
  absl::Status closed = (*stream)->Close();
  EXPECT_EQ(closed.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(closed.message(), HasSubstr(absl::StrCat("shard ", owner, " (", peers[owner], ")")));
  EXPECT_EQ((*stream)->Submit("w", 1, x).get().status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*stream)->pending(), 0u);
}

TEST(ShardedClientTest, CancelledStreamRefusesLaterRequests) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(Options(DeadPeers(2)));
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<std::unique_ptr<MatmulStream>> stream = (*client)->OpenStream();
  ASSERT_TRUE(stream.ok()) << stream.status();
  (*stream)->Cancel();
  std::vector<uint16_t> x(256, 0);
  EXPECT_EQ((*stream)->Submit("w", 1, x).get().status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace marlin
