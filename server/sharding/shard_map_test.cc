#include "server/sharding/shard_map.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace marlin::sharding {
namespace {

using ::testing::HasSubstr;

std::vector<std::string> Peers(int n) {
  std::vector<std::string> peers;
  for (int i = 0; i < n; ++i) {
    peers.push_back(absl::StrCat("marlin-server-", i, ".marlin-server-headless:50051"));
  }
  return peers;
}

TEST(Fnv1a64Test, MatchesPublishedVectors) {
  // Reference values of the FNV-1a 64-bit test suite.
  EXPECT_EQ(Fnv1a64(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(Fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(Fnv1a64("foobar"), 0x85944171f73967e8ULL);
}

TEST(Fnv1a64Test, HashesBytesNotChars) {
  // Bytes >= 0x80 must not be sign-extended.
  EXPECT_EQ(Fnv1a64("\xff"), (0xcbf29ce484222325ULL ^ 0xffULL) * 0x100000001b3ULL);
}

TEST(ShardIndexOfTest, IsHashModCount) {
  EXPECT_EQ(ShardIndexOf("anything", 1), 0);
  for (const char* id : {"", "a", "foobar", "layer.0.mlp.up_proj", "w1"}) {
    for (int n = 1; n <= 7; ++n) {
      EXPECT_EQ(ShardIndexOf(id, n), static_cast<int>(Fnv1a64(id) % n)) << id << " " << n;
    }
  }
  // Pinned values: changing them silently re-homes every deployed weight.
  EXPECT_EQ(ShardIndexOf("a", 3), static_cast<int>(0xaf63dc4c8601ec8cULL % 3));
  EXPECT_EQ(ShardIndexOf("foobar", 3), static_cast<int>(0x85944171f73967e8ULL % 3));
}

TEST(ShardIndexOfTest, SpreadsIdsEvenly) {
  constexpr int kShards = 4;
  constexpr int kIds = 4000;
  std::vector<int> counts(kShards);
  for (int i = 0; i < kIds; ++i) ++counts[ShardIndexOf(absl::StrCat("layer.", i, ".w"), kShards)];
  for (int c : counts) {
    EXPECT_GT(c, kIds / kShards * 8 / 10);
    EXPECT_LT(c, kIds / kShards * 12 / 10);
  }
}

TEST(ShardMapTest, DefaultIsUnshardedAndOwnsEverything) {
  const ShardMap map;
  EXPECT_FALSE(map.sharded());
  EXPECT_EQ(map.size(), 1);
  EXPECT_EQ(map.self(), 0);
  EXPECT_TRUE(map.IsLocal("w"));
  EXPECT_TRUE(map.CheckOwner("w").ok());
  EXPECT_EQ(map.OwnerIndex("w"), 0);
  EXPECT_EQ(map.OwnerAddress("w"), "");
}

TEST(ShardMapTest, EveryIdHasExactlyOneOwner) {
  const std::vector<std::string> peers = Peers(3);
  std::vector<ShardMap> shards;
  for (int i = 0; i < 3; ++i) {
    auto map = ShardMap::Create(peers, i);
    ASSERT_TRUE(map.ok()) << map.status();
    shards.push_back(*map);
  }
  for (int i = 0; i < 300; ++i) {
    const std::string id = absl::StrCat("w", i);
    int owners = 0;
    for (const ShardMap& shard : shards) {
      if (shard.IsLocal(id)) {
        ++owners;
        EXPECT_TRUE(shard.CheckOwner(id).ok());
        EXPECT_EQ(shard.OwnerIndex(id), shard.self());
        EXPECT_EQ(shard.OwnerAddress(id), peers[shard.self()]);
      } else {
        EXPECT_EQ(shard.CheckOwner(id).code(), absl::StatusCode::kFailedPrecondition);
      }
    }
    EXPECT_EQ(owners, 1) << id;
  }
}

TEST(ShardMapTest, ClientRoutesLikeTheServersWhateverTheNames) {
  // A client may name the pods differently (fully qualified); only order and count matter.
  std::vector<std::string> fqdn;
  for (const std::string& p : Peers(3)) fqdn.push_back(p + ".svc.cluster.local");
  auto client = ShardMap::Create(fqdn);
  auto server = ShardMap::Create(Peers(3), 1);
  ASSERT_TRUE(client.ok() && server.ok());
  EXPECT_EQ(client->self(), ShardMap::kClient);
  for (int i = 0; i < 100; ++i) {
    const std::string id = absl::StrCat("id-", i);
    EXPECT_EQ(client->OwnerIndex(id), server->OwnerIndex(id));
    EXPECT_EQ(client->OwnerAddress(id), fqdn[server->OwnerIndex(id)]);
    EXPECT_FALSE(client->IsLocal(id));
  }
}

TEST(ShardMapTest, CheckOwnerNamesTheOwner) {
  const std::vector<std::string> peers = Peers(3);
  auto map = ShardMap::Create(peers, 0);
  ASSERT_TRUE(map.ok());
  std::string id;
  for (int i = 0;; ++i) {  // The first id owned by shard 2.
    id = absl::StrCat("w", i);
    if (ShardIndexOf(id, 3) == 2) break;
  }
  const absl::Status status = map->CheckOwner(id);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(status.message(), absl::StrCat("weight \"", id, "\" is owned by shard 2 (", peers[2],
                                           "), this is shard 0"));
  const std::optional<Owner> owner = OwnerFromStatus(status);
  ASSERT_TRUE(owner.has_value());
  EXPECT_EQ(owner->index, 2);
  EXPECT_EQ(owner->address, peers[2]);
}

TEST(ShardMapTest, OwnerFromStatusSurvivesOddIdsAndRejectsOtherErrors) {
  auto map = ShardMap::Create({"a:1", "b:2"}, ShardMap::kClient);
  ASSERT_TRUE(map.ok());
  const std::string id = "x\" is owned by shard 9 (evil:1) y";
  const std::optional<Owner> owner = OwnerFromStatus(map->CheckOwner(id));
  ASSERT_TRUE(owner.has_value());
  EXPECT_EQ(owner->index, map->OwnerIndex(id));
  EXPECT_EQ(owner->address, map->OwnerAddress(id));

  const absl::Status refused = map->CheckOwner(id);
  const std::optional<Owner> prefixed = OwnerFromStatus(
      absl::FailedPreconditionError(absl::StrCat("upload ", id, ": ", refused.message())));
  ASSERT_TRUE(prefixed.has_value());
  EXPECT_EQ(prefixed->index, map->OwnerIndex(id));
  EXPECT_EQ(prefixed->address, map->OwnerAddress(id));

  EXPECT_FALSE(OwnerFromStatus(absl::OkStatus()).has_value());
  EXPECT_FALSE(OwnerFromStatus(absl::NotFoundError("weight \"w\" is owned by shard 1 (a)")));
  EXPECT_FALSE(OwnerFromStatus(absl::FailedPreconditionError("upload incomplete")).has_value());
  EXPECT_FALSE(
      OwnerFromStatus(absl::FailedPreconditionError("weight \"w\" is owned by shard x (a)")));
}

TEST(ShardMapTest, CreateRejectsBadPeerLists) {
  EXPECT_EQ(ShardMap::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShardMap::Create({"a", ""}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ShardMap::Create({"a", "b", "a"}).status().message(), HasSubstr("twice"));
  EXPECT_THAT(ShardMap::Create({"a", "b"}, 2).status().message(), HasSubstr("out of range"));
  EXPECT_EQ(ShardMap::Create({"a", "b"}, -2).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ShardMapTest, FromFlags) {
  auto map = ShardMap::FromFlags(" a:1, b:2 ,c:3 ", 2);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->peers(), (std::vector<std::string>{"a:1", "b:2", "c:3"}));
  EXPECT_EQ(map->self(), 2);

  auto unsharded = ShardMap::FromFlags("", 0);
  ASSERT_TRUE(unsharded.ok());
  EXPECT_FALSE(unsharded->sharded());
  EXPECT_TRUE(unsharded->CheckOwner("w").ok());

  EXPECT_FALSE(ShardMap::FromFlags("", 1).ok());
  EXPECT_FALSE(ShardMap::FromFlags("a,,b", 0).ok());
  EXPECT_FALSE(ShardMap::FromFlags("a,b", 5).ok());
}

TEST(OrdinalFromHostnameTest, ParsesStatefulSetNames) {
  EXPECT_EQ(*OrdinalFromHostname("marlin-server-0"), 0);
  EXPECT_EQ(*OrdinalFromHostname("marlin-server-12"), 12);
  EXPECT_EQ(*OrdinalFromHostname("marlin-server-3.marlin-server-headless.ns.svc"), 3);
  EXPECT_FALSE(OrdinalFromHostname("marlin-server").ok());
  EXPECT_FALSE(OrdinalFromHostname("marlin-server-").ok());
  EXPECT_FALSE(OrdinalFromHostname("marlin-server-x1").ok());
  EXPECT_FALSE(OrdinalFromHostname("").ok());
}

}  // namespace
}  // namespace marlin::sharding
