// Sharding end to end, as the sharded overlay (deploy/k8s/overlays/sharded) runs it: three
// marlin-server processes on loopback, each started with the full ordered --shard-peers list and
// its own --shard-index, and a marlin::Client given the same list (ClientOptions::shard_peers).
// Checks that uploads and matmuls land on each id's owner (asked directly through each server's
// ListWeights/GetWeight), that the answers are bit-exact against CpuGemm on the same packed weight,
// that a direct request to a non-owner is refused with FAILED_PRECONDITION naming the owner, and
// how a client whose peer list disagrees with the servers' redirects or explains.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/matmul_stream.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_gemm.h"
#include "kernels/format/weight_format.h"
#include "server/sharding/shard_map.h"
#include "tests/client/test_util.h"

extern char** environ;

namespace marlin {
namespace {

using ::marlin::testing::FreePort;
using ::marlin::testing::TempDir;
using ::testing::HasSubstr;

constexpr int kShards = 3;
constexpr int kIds = 12;
constexpr int64_t kK = 256;
constexpr int64_t kN = 64;

// Three marlin-server processes that know each other: shard i listens on peers[i].
class ShardCluster {
 public:
  // Ports are picked free a moment before the servers bind them: on a collision (a server that
  // never serves) the whole cluster starts again on new ports.
  static absl::StatusOr<std::unique_ptr<ShardCluster>> Start() {
    absl::Status last;
    for (int attempt = 0; attempt < 3; ++attempt) {
      auto cluster = std::unique_ptr<ShardCluster>(new ShardCluster());
      last = cluster->Spawn();
      if (last.ok()) return cluster;
    }
    return last;
  }

  ~ShardCluster() { StopAll(); }

  const std::vector<std::string>& peers() const { return peers_; }

  // A plain (unsharded) client of shard i only.
  std::unique_ptr<Client> Direct(int i) const {
    ClientOptions options;
    options.target = peers_[i];
    options.default_deadline = absl::Seconds(10);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return *std::move(client);
  }

  std::string Logs() const {
    std::string all;
    for (int i = 0; i < kShards; ++i) {
      std::ifstream in(dir_.File(absl::StrCat("shard", i, ".err")));
      std::stringstream ss;
      ss << in.rdbuf();
      absl::StrAppend(&all, "---- shard ", i, " ----\n", ss.str());
    }
    return all;
  }

 private:
  ShardCluster() = default;

  absl::Status Spawn() {
    std::set<int> ports;
    while (static_cast<int>(ports.size()) < kShards) ports.insert(FreePort());
    for (int port : ports) peers_.push_back(absl::StrCat("127.0.0.1:", port));
    const std::string peers_flag = absl::StrJoin(peers_, ",");
    for (int i = 0; i < kShards; ++i) {
      std::vector<std::string> argv = {MARLIN_SERVER_PATH,
                                       "--backend=cpu",
                                       absl::StrCat("--listen=", peers_[i]),
                                       "--metrics-listen",
                                       "",
                                       "--cuda-streams=1",
                                       "--cpu-threads=1",
                                       absl::StrCat("--shard-peers=", peers_flag),
                                       absl::StrCat("--shard-index=", i)};
      absl::StatusOr<pid_t> pid = SpawnProcess(argv, dir_.File(absl::StrCat("shard", i, ".err")));
      if (!pid.ok()) return pid.status();
      pids_.push_back(*pid);
    }
    for (int i = 0; i < kShards; ++i) {
      if (absl::Status s = WaitServing(i, absl::Seconds(20)); !s.ok()) {
        StopAll();
        return s;
      }
    }
    return absl::OkStatus();
  }

  static absl::StatusOr<pid_t> SpawnProcess(const std::vector<std::string>& argv,
                                            const std::string& err_path) {
    const int log_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open ", err_path));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, log_fd, 1);
    posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(log_fd);
    if (rc != 0) return absl::InternalError(absl::StrCat("cannot start ", argv[0], ": rc ", rc));
    return pid;
  }

  absl::Status WaitServing(int i, absl::Duration timeout) {
    std::unique_ptr<Client> client = Direct(i);
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int status = 0;
      if (waitpid(pids_[i], &status, WNOHANG) == pids_[i]) {
        pids_[i] = -1;
        return absl::UnavailableError(absl::StrCat("shard ", i, " exited:\n", Logs()));
      }
      CallOptions call;
      call.timeout = absl::Milliseconds(500);
      absl::StatusOr<HealthStatus> health = client->Health("", call);
      if (health.ok() && *health == HealthStatus::kServing) return absl::OkStatus();
      absl::SleepFor(absl::Milliseconds(50));
    }
    return absl::DeadlineExceededError(absl::StrCat("shard ", i, " never served:\n", Logs()));
  }

  void StopAll() {
    for (pid_t& pid : pids_) {
      if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
        pid = -1;
      }
    }
  }

  TempDir dir_;
  std::vector<std::string> peers_;
  std::vector<pid_t> pids_;
};

std::vector<uint16_t> RandomHalfs(size_t count, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<uint16_t> out(count);
  for (uint16_t& v : out) v = FloatToHalf(dist(rng));
  return out;
}

// The server's arithmetic, locally: quantize as the server does, pack, CpuGemm.
std::unique_ptr<CpuGemm> Reference(absl::Span<const uint16_t> w) {
  absl::StatusOr<QuantizedWeight> q =
      QuantizeFp16(w, WeightShape{.k = kK, .n = kN, .group_size = 128}, DenseLayout::kKN);
  EXPECT_TRUE(q.ok()) << q.status();
  absl::StatusOr<PackedWeight> packed = Pack(*q);
  EXPECT_TRUE(packed.ok()) << packed.status();
  absl::StatusOr<std::unique_ptr<CpuGemm>> gemm = CpuGemm::Create(*packed, 1);
  EXPECT_TRUE(gemm.ok()) << gemm.status();
  return *std::move(gemm);
}

std::vector<uint16_t> Expected(const CpuGemm& gemm, absl::Span<const uint16_t> x, int64_t rows) {
  std::vector<uint16_t> y(static_cast<size_t>(rows * kN));
  EXPECT_TRUE(gemm.Run(x.data(), rows, y.data()).ok());
  return y;
}

// kIds fresh random ids, every shard owning at least two of them.
std::vector<std::string> RandomIds(std::mt19937_64& rng) {
  while (true) {
    std::vector<std::string> ids;
    std::vector<int> per_shard(kShards, 0);
    for (int i = 0; i < kIds; ++i) {
      ids.push_back(absl::StrCat("layer", i, ".", rng() % 1000000));
      ++per_shard[sharding::ShardIndexOf(ids.back(), kShards)];
    }
    if (*std::min_element(per_shard.begin(), per_shard.end()) >= 2) return ids;
  }
}

std::unique_ptr<Client> ShardedClient(std::vector<std::string> peers, bool redirect = true) {
  ClientOptions options;
  options.shard_peers = std::move(peers);
  options.shard_redirect = redirect;
  options.default_deadline = absl::Seconds(10);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return *std::move(client);
}

// The owner that a refusal names, as "shard J (ADDR)".
std::string OwnerText(const std::vector<std::string>& peers, absl::string_view id) {
  const int owner = sharding::ShardIndexOf(id, kShards);
  return absl::StrCat("shard ", owner, " (", peers[owner], ")");
}

TEST(ShardRoutingTest, UploadsAndMatmulsLandOnTheirOwners) {
  absl::StatusOr<std::unique_ptr<ShardCluster>> cluster = ShardCluster::Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::vector<std::string>& peers = (*cluster)->peers();
  std::mt19937_64 rng(std::random_device{}());
  const std::vector<std::string> ids = RandomIds(rng);

  // No redirects: a request the client sends to the wrong shard fails.
  std::unique_ptr<Client> client = ShardedClient(peers, /*redirect=*/false);
  EXPECT_EQ(client->shard_count(), kShards);
  EXPECT_EQ(client->channel_target(), absl::StrJoin(peers, ","));
  absl::StatusOr<HealthStatus> health = client->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthStatus::kServing);

  // Upload every id through the sharded client.
  std::map<std::string, std::unique_ptr<CpuGemm>> refs;
  for (const std::string& id : ids) {
    EXPECT_EQ(client->ShardOf(id), sharding::ShardIndexOf(id, kShards));
    std::vector<uint16_t> w = RandomHalfs(kK * kN, rng);
    absl::StatusOr<WeightInfo> info = client->UploadFp16(id, kK, kN, w, WeightLayout::kKN);
    ASSERT_TRUE(info.ok()) << id << ": " << info.status();
    EXPECT_EQ(info->weight_id, id);
    refs[id] = Reference(w);
  }

  // Each server holds exactly the ids it owns.
  std::vector<std::unique_ptr<Client>> direct;
  for (int i = 0; i < kShards; ++i) direct.push_back((*cluster)->Direct(i));
  for (int i = 0; i < kShards; ++i) {
    absl::StatusOr<std::vector<WeightInfo>> held = direct[i]->ListWeights();
    ASSERT_TRUE(held.ok()) << held.status();
    std::set<std::string> got, want;
    for (const WeightInfo& w : *held) got.insert(w.weight_id);
    for (const std::string& id : ids) {
      if (sharding::ShardIndexOf(id, kShards) == i) want.insert(id);
    }
    EXPECT_EQ(got, want) << "shard " << i;
  }
  absl::StatusOr<std::vector<WeightInfo>> all = client->ListWeights();
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> listed;
  for (const WeightInfo& w : *all) listed.push_back(w.weight_id);
  std::vector<std::string> sorted_ids = ids;
  std::sort(sorted_ids.begin(), sorted_ids.end());
  EXPECT_EQ(listed, sorted_ids);

  // Unary, asynchronous and streamed matmuls, bit-exact against CpuGemm.
  std::uniform_int_distribution<int> rows_dist(1, 8);
  std::map<std::string, uint64_t> sent;
  for (const std::string& id : ids) {
    const int rows = rows_dist(rng);
    std::vector<uint16_t> x = RandomHalfs(rows * kK, rng);
    absl::StatusOr<MatmulResult> y = client->Matmul(id, rows, x);
    ASSERT_TRUE(y.ok()) << id << ": " << y.status();
    EXPECT_EQ(y->output, Expected(*refs[id], x, rows)) << id;
    std::vector<uint16_t> x2 = RandomHalfs(rows * kK, rng);
    absl::StatusOr<MatmulResult> y2 = client->MatmulAsync(id, rows, x2).get();
    ASSERT_TRUE(y2.ok()) << id << ": " << y2.status();
    EXPECT_EQ(y2->output, Expected(*refs[id], x2, rows)) << id;
    sent[id] += 2;
  }
  absl::StatusOr<std::unique_ptr<MatmulStream>> stream = client->OpenStream();
  ASSERT_TRUE(stream.ok()) << stream.status();
  struct Pending {
    std::string id;
    int rows;
    std::vector<uint16_t> x;
    std::future<absl::StatusOr<MatmulResult>> y;
  };
  std::vector<Pending> pending;
  for (int round = 0; round < 3; ++round) {
    for (const std::string& id : ids) {
      Pending p{id, rows_dist(rng), {}, {}};
      p.x = RandomHalfs(p.rows * kK, rng);
      p.y = (*stream)->Submit(id, p.rows, p.x);
      pending.push_back(std::move(p));
      ++sent[id];
    }
  }
  for (Pending& p : pending) {
    absl::StatusOr<MatmulResult> y = p.y.get();
    ASSERT_TRUE(y.ok()) << p.id << ": " << y.status();
    EXPECT_EQ(y->output, Expected(*refs[p.id], p.x, p.rows)) << p.id;
  }
  EXPECT_TRUE((*stream)->Close().ok());

  // The owner served every request of its ids; a non-owner refuses them, naming the owner.
  for (const std::string& id : ids) {
    const int owner = sharding::ShardIndexOf(id, kShards);
    absl::StatusOr<WeightInfo> info = direct[owner]->GetWeight(id);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->requests_served, sent[id]) << id;
    UploadOptions replace;
    replace.replace = true;
    const int other = (owner + 1) % kShards;
    std::vector<uint16_t> x = RandomHalfs(kK, rng);
    absl::StatusOr<std::unique_ptr<MatmulStream>> other_stream = direct[other]->OpenStream();
    ASSERT_TRUE(other_stream.ok()) << other_stream.status();
    for (const absl::Status& refused :
         {direct[other]->Matmul(id, 1, x).status(),
          (*other_stream)->Submit(id, 1, x).get().status(),
          direct[other]
              ->UploadFp16(id, kK, kN, RandomHalfs(kK * kN, rng), WeightLayout::kKN, replace)
              .status()}) {
      EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
      EXPECT_THAT(refused.message(), HasSubstr(OwnerText(peers, id)));
      std::optional<sharding::Owner> named = sharding::OwnerFromStatus(refused);
      ASSERT_TRUE(named.has_value()) << refused;
      EXPECT_EQ(named->index, owner);
      EXPECT_EQ(named->address, peers[owner]);
    }
    EXPECT_TRUE((*other_stream)->Close().ok());
    // GetWeight and DeleteWeight on a non-owner are refused the same way; the owner keeps it.
    EXPECT_EQ(direct[other]->GetWeight(id).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(direct[other]->DeleteWeight(id).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(direct[owner]->GetWeight(id).ok());
  }

  // marlin-cli --shard-peers: list merges every shard, get finds each id on its owner.
  const std::string peers_flag = absl::StrCat("--shard-peers=", absl::StrJoin(peers, ","));
  testing::CommandResult list =
      testing::RunCommand({MARLIN_CLI_PATH, peers_flag, "--json", "list"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  for (const std::string& id : ids) EXPECT_THAT(list.out, HasSubstr(absl::StrCat("\"", id, "\"")));
  testing::CommandResult get =
      testing::RunCommand({MARLIN_CLI_PATH, peers_flag, "get", "--id", ids.back()});
  EXPECT_EQ(get.exit_code, 0) << get.err;
  EXPECT_THAT(get.out, HasSubstr(ids.back()));

  // Deletes go to the owners too: every shard ends empty.
  for (const std::string& id : ids) EXPECT_TRUE(client->DeleteWeight(id).ok()) << id;
  for (int i = 0; i < kShards; ++i) {
    absl::StatusOr<std::vector<WeightInfo>> held = direct[i]->ListWeights();
    ASSERT_TRUE(held.ok()) << held.status();
    EXPECT_TRUE(held->empty()) << "shard " << i << " still holds " << held->size();
  }
  EXPECT_EQ(client->GetWeight(ids[0]).status().code(), absl::StatusCode::kNotFound);
}

TEST(ShardRoutingTest, ClientWithAnotherPeerOrderRedirectsOrExplains) {
  absl::StatusOr<std::unique_ptr<ShardCluster>> cluster = ShardCluster::Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::vector<std::string>& peers = (*cluster)->peers();
  std::mt19937_64 rng(std::random_device{}());
  const std::vector<std::string> ids = RandomIds(rng);

  // The servers' list rotated: the client sends every id to a shard that does not own it.
  const std::vector<std::string> rotated = {peers[1], peers[2], peers[0]};
  std::unique_ptr<Client> redirecting = ShardedClient(rotated);
  std::unique_ptr<Client> strict = ShardedClient(rotated, /*redirect=*/false);
  std::unique_ptr<Client> correct = ShardedClient(peers);
  UploadOptions replace;
  replace.replace = true;
  for (const std::string& id : ids) {
    ASSERT_NE(rotated[sharding::ShardIndexOf(id, kShards)],
              peers[sharding::ShardIndexOf(id, kShards)]);
    std::vector<uint16_t> w = RandomHalfs(kK * kN, rng);
    // Refused by the wrong shard, retried once at the owner it named.
    absl::StatusOr<WeightInfo> info = redirecting->UploadFp16(id, kK, kN, w, WeightLayout::kKN);
    ASSERT_TRUE(info.ok()) << id << ": " << info.status();
    absl::StatusOr<WeightInfo> placed = correct->GetWeight(id);
    ASSERT_TRUE(placed.ok()) << placed.status();
    EXPECT_EQ(placed->version, info->version);

    std::vector<uint16_t> x = RandomHalfs(2 * kK, rng);
    absl::StatusOr<MatmulResult> y = redirecting->Matmul(id, 2, x);
    ASSERT_TRUE(y.ok()) << id << ": " << y.status();
    EXPECT_EQ(y->output, Expected(*Reference(w), x, 2));

    // Without redirects the refusal says where the client sent it and why.
    const std::string routed = absl::StrCat("shard ", sharding::ShardIndexOf(id, kShards), " (",
                                            rotated[sharding::ShardIndexOf(id, kShards)], ")");
    for (const absl::Status& refused :
         {strict->Matmul(id, 2, x).status(), strict->MatmulAsync(id, 2, x).get().status(),
          strict->UploadFp16(id, kK, kN, w, WeightLayout::kKN, replace).status()}) {
      EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
      EXPECT_THAT(refused.message(), HasSubstr(OwnerText(peers, id)));
      EXPECT_THAT(refused.message(),
                  HasSubstr(absl::StrCat("the client routed \"", id, "\" to ", routed)));
      EXPECT_THAT(refused.message(), HasSubstr("--shard-peers disagree"));
    }
    absl::StatusOr<std::unique_ptr<MatmulStream>> stream = strict->OpenStream();
    ASSERT_TRUE(stream.ok()) << stream.status();
    absl::StatusOr<MatmulResult> streamed = (*stream)->Submit(id, 2, x).get();
    EXPECT_EQ(streamed.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(streamed.status().message(), HasSubstr("--shard-peers disagree"));
    EXPECT_TRUE((*stream)->Close().ok());
  }
  // A peer list of another length cannot be redirected to an address it does not list.
  std::unique_ptr<Client> partial = ShardedClient({peers[0], peers[1]});
  for (const std::string& id : ids) {
    if (sharding::ShardIndexOf(id, kShards) != 2) continue;
    absl::StatusOr<MatmulResult> y = partial->Matmul(id, 1, RandomHalfs(kK, rng));
    EXPECT_EQ(y.status().code(), absl::StatusCode::kFailedPrecondition) << y.status();
    EXPECT_THAT(y.status().message(), HasSubstr(OwnerText(peers, id)));
  }
}

}  // namespace
}  // namespace marlin
