// marlin-cli and marlin-loadgen as subprocesses against a real marlin-server (CPU backend):
// upload -> matmul -> list -> get -> delete through .npy and .safetensors files with the answers
// checked against CpuGemm, the one-line errors, and a short loadgen run whose counts add up,
// whose verified answers match and whose JSON, CSV and HTML reports parse.
#include <fstream>
#include <random>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_gemm.h"
#include "kernels/format/weight_format.h"
#include "kernels/io/npy.h"
#include "kernels/io/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/client/test_util.h"

#ifndef MARLIN_CLI_PATH
#define MARLIN_CLI_PATH "marlin-cli"
#endif
#ifndef MARLIN_LOADGEN_PATH
#define MARLIN_LOADGEN_PATH "marlin-loadgen"
#endif

namespace marlin {
namespace {

using ::marlin::testing::CommandResult;
using ::marlin::testing::RunCommand;
using ::marlin::testing::ServerProcess;
using ::marlin::testing::TempDir;
using ::testing::HasSubstr;

constexpr int64_t kK = 256;
constexpr int64_t kN = 128;

std::vector<float> RandomFloats(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> out(count);
  for (float& v : out) v = dist(rng);
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// y = x . W on the CPU reference, W quantized from FP32 values as the server does.
std::vector<uint16_t> Reference(absl::Span<const float> w, DenseLayout layout,
                                absl::Span<const uint16_t> x, int64_t rows) {
  absl::StatusOr<QuantizedWeight> q = QuantizeFp32(w, {.k = kK, .n = kN}, layout);
  EXPECT_TRUE(q.ok()) << q.status();
  absl::StatusOr<PackedWeight> packed = Pack(*q);
  EXPECT_TRUE(packed.ok());
  std::unique_ptr<CpuGemm> gemm = *CpuGemm::Create(*packed, 1);
  std::vector<uint16_t> y(rows * kN);
  EXPECT_TRUE(gemm->Run(x.data(), rows, y.data()).ok());
  return y;
}

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr); }

  CommandResult Cli(std::vector<std::string> args, std::vector<std::string> env = {}) {
    std::vector<std::string> argv = {MARLIN_CLI_PATH, "--server", server_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, env);
  }

  // Expects a failure: non-zero exit, one line on stderr that contains `cause`.
  void ExpectFailure(const CommandResult& r, const std::string& cause) {
    EXPECT_NE(r.exit_code, 0) << r.out;
    EXPECT_THAT(r.err, HasSubstr(cause));
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }

  static ServerProcess* server_;
  TempDir dir_;
};

ServerProcess* CliTest::server_ = nullptr;

TEST_F(CliTest, NpyAndSafetensorsRoundTrip) {
  // A K x N FP32 .npy weight, an [N, K] FP32 safetensors tensor, FP32 and FP16 inputs.
  std::vector<float> w_kn = RandomFloats(kK * kN, 1);
  std::vector<float> w_nk = RandomFloats(kN * kK, 2);
  ASSERT_TRUE(io::WriteNpy(dir_.File("w.npy"),
                           io::Tensor::FromValues<float>(io::DType::kF32, {kK, kN}, w_kn))
                  .ok());
  ASSERT_TRUE(io::WriteSafetensors(
                  dir_.File("m.safetensors"),
                  {{"fc.weight", io::Tensor::FromValues<float>(io::DType::kF32, {kN, kK}, w_nk)}})
                  .ok());
  const int64_t rows = 3;
  std::vector<float> x32 = RandomFloats(rows * kK, 3);
  std::vector<uint16_t> x16;
  for (float v : x32) x16.push_back(FloatToHalf(v));
  ASSERT_TRUE(io::WriteNpy(dir_.File("x32.npy"),
                           io::Tensor::FromValues<float>(io::DType::kF32, {rows, kK}, x32))
                  .ok());
  ASSERT_TRUE(io::WriteNpy(dir_.File("x16.npy"),
                           io::Tensor::FromValues<uint16_t>(io::DType::kF16, {rows, kK}, x16))
                  .ok());

  CommandResult up = Cli({"upload", "--id", "cli-npy", "--weights", dir_.File("w.npy")});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_THAT(up.out, HasSubstr("uploaded cli-npy"));
  up = Cli({"--json", "upload", "--id", "cli-st", "--weights", dir_.File("m.safetensors"),
            "--tensor", "fc.weight", "--layout", "nk"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  nlohmann::json info = nlohmann::json::parse(up.out);
  EXPECT_EQ(info["k"], kK);
  EXPECT_EQ(info["n"], kN);

  CommandResult mm = Cli({"matmul", "--id", "cli-npy", "--input", dir_.File("x32.npy"), "--output",
                          dir_.File("y1.npy")});
  ASSERT_EQ(mm.exit_code, 0) << mm.err;
  absl::StatusOr<io::Tensor> y1 = io::ReadNpy(dir_.File("y1.npy"));
  ASSERT_TRUE(y1.ok()) << y1.status();
  EXPECT_EQ(y1->dtype, io::DType::kF16);
  EXPECT_EQ(y1->shape, (std::vector<int64_t>{rows, kN}));
  EXPECT_EQ(y1->ToVector<uint16_t>(), Reference(w_kn, DenseLayout::kKN, x16, rows));

  mm = Cli({"--json", "matmul", "--id", "cli-st", "--input", dir_.File("x16.npy"), "--output",
            dir_.File("y2.npy")});
  ASSERT_EQ(mm.exit_code, 0) << mm.err;
  EXPECT_EQ(nlohmann::json::parse(mm.out)["rows"], rows);
  absl::StatusOr<io::Tensor> y2 = io::ReadNpy(dir_.File("y2.npy"));
  ASSERT_TRUE(y2.ok());
  EXPECT_EQ(y2->ToVector<uint16_t>(), Reference(w_nk, DenseLayout::kNK, x16, rows));

  CommandResult list = Cli({"--json", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  std::vector<std::string> ids;
  nlohmann::json listed = nlohmann::json::parse(list.out);
  for (const auto& w : listed["weights"]) ids.push_back(w["weight_id"]);
  EXPECT_THAT(ids, ::testing::IsSupersetOf({"cli-npy", "cli-st"}));
  list = Cli({"list"});
  EXPECT_THAT(list.out, HasSubstr("cli-npy"));

  CommandResult get = Cli({"--json", "get", "--id", "cli-npy"});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  EXPECT_GE(nlohmann::json::parse(get.out)["requests_served"].get<int>(), 1);

  EXPECT_EQ(Cli({"delete", "--id", "cli-npy"}).exit_code, 0);
  EXPECT_EQ(Cli({"delete", "--id", "cli-st"}).exit_code, 0);
  ExpectFailure(Cli({"get", "--id", "cli-npy"}), "NOT_FOUND");
}

TEST_F(CliTest, InfoAndHealth) {
  CommandResult info = Cli({"--json", "info"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(nlohmann::json::parse(info.out)["backend"], "cpu");
  CommandResult health = Cli({"health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_THAT(health.out, HasSubstr("SERVING"));
  EXPECT_EQ(Cli({"info"}).exit_code, 0);
}

TEST_F(CliTest, ErrorsNameTheirCause) {
  std::vector<float> w = RandomFloats(kK * kN, 4);
  ASSERT_TRUE(
      io::WriteNpy(dir_.File("w.npy"), io::Tensor::FromValues<float>(io::DType::kF32, {kK, kN}, w))
          .ok());
  ASSERT_TRUE(io::WriteNpy(dir_.File("bad_w.npy"),
                           io::Tensor::FromValues<float>(io::DType::kF32, {kK, kN / 2, 2}, w))
                  .ok());
  std::vector<float> x = RandomFloats(2 * (kK + 16), 5);
  ASSERT_TRUE(io::WriteNpy(dir_.File("bad_x.npy"),
                           io::Tensor::FromValues<float>(io::DType::kF32, {2, kK + 16}, x))
                  .ok());

  ExpectFailure(Cli({"upload", "--id", "e", "--weights", dir_.File("missing.npy")}), "missing.npy");
  ExpectFailure(Cli({"upload", "--id", "e", "--weights", dir_.File("bad_w.npy")}), "2-D");
  ExpectFailure(Cli({"upload", "--id", "e", "--weights", dir_.File("w.safetensors")}), "--tensor");
  ExpectFailure(Cli({"upload", "--id", "e"}), "--weights");
  ExpectFailure(Cli({"get"}), "--id");
  ExpectFailure(Cli({"frobnicate"}), "unknown command 'frobnicate'");
  ExpectFailure(Cli({"get", "--id", "no-such-weight"}), "NOT_FOUND");
  ExpectFailure(Cli({"matmul", "--id", "no-such-weight", "--input", dir_.File("bad_x.npy"),
                     "--output", dir_.File("y.npy")}),
                "NOT_FOUND");
  ASSERT_EQ(Cli({"upload", "--id", "e", "--weights", dir_.File("w.npy")}).exit_code, 0);
  ExpectFailure(Cli({"matmul", "--id", "e", "--input", dir_.File("bad_x.npy"), "--output",
                     dir_.File("y.npy")}),
                "K = 272");
  ExpectFailure(Cli({"upload", "--id", "e", "--weights", dir_.File("w.npy")}), "ALREADY_EXISTS");
  ExpectFailure(Cli({"--token-file", dir_.File("no-token"), "list"}), "no-token");
  EXPECT_EQ(Cli({"delete", "--id", "e"}).exit_code, 0);

  // A dead server.
  std::string dead = absl::StrCat("127.0.0.1:", ::marlin::testing::FreePort());
  CommandResult r = RunCommand({MARLIN_CLI_PATH, "--server", dead, "--max-attempts", "1", "list"});
  ExpectFailure(r, "UNAVAILABLE");
  r = RunCommand({MARLIN_CLI_PATH, "--server", dead, "--max-attempts", "1", "health"});
  ExpectFailure(r, "UNAVAILABLE");
}

TEST_F(CliTest, TokenFromTheEnvironmentIsAccepted) {
  // The CPU test server runs without auth: a token is simply sent along and ignored.
  CommandResult r = Cli({"list"}, {"MARLIN_TOKEN=secret"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(CliTest, LoadgenShortRunCountsVerifiesAndReports) {
  const std::string json = dir_.File("run.json"), csv = dir_.File("run.csv"),
                    html = dir_.File("run.html");
  CommandResult r = RunCommand({MARLIN_LOADGEN_PATH,
                                "--server",
                                server_->address(),
                                "--create",
                                "256,128",
                                "--concurrency",
                                "1,8",
                                "--duration",
                                "1",
                                "--warmup",
                                "0.3",
                                "--rows",
                                "1-8",
                                "--verify-fraction",
                                "0.3",
                                "--metrics",
                                server_->metrics_address(),
                                "--json",
                                json,
                                "--csv",
                                csv,
                                "--report",
                                html,
                                "--progress",
                                "always"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("p99.9ms"));
  EXPECT_THAT(r.err, HasSubstr("[c=8]"));  // progress lines

  nlohmann::json j = nlohmann::json::parse(ReadFile(json));
  ASSERT_EQ(j["points"].size(), 2u);
  for (const auto& p : j["points"]) {
    EXPECT_GT(p["sent"].get<uint64_t>(), 0u);
    EXPECT_EQ(p["sent"].get<uint64_t>(),
              p["answers"].get<uint64_t>() + p["errors"].get<uint64_t>());
    EXPECT_EQ(p["errors"].get<uint64_t>(), 0u) << p["errors_by_code"];
    EXPECT_EQ(p["warmup"]["sent"].get<uint64_t>(),
              p["warmup"]["answers"].get<uint64_t>() + p["warmup"]["errors"].get<uint64_t>());
    EXPECT_GT(p["verify"]["checked"].get<uint64_t>(), 0u);
    EXPECT_EQ(p["verify"]["mismatches"].get<uint64_t>(), 0u);
    EXPECT_GT(p["req_per_s"].get<double>(), 0);
    EXPECT_LE(p["latency_ms"]["p50"].get<double>(), p["latency_ms"]["p99"].get<double>());
    ASSERT_FALSE(p["server_metrics"].is_null()) << p.value("metrics_error", "");
    EXPECT_GE(p["server_metrics"]["mean_batch_rows"].get<double>(), 1.0);
    EXPECT_TRUE(p["send_lag_ms"].is_null());  // closed loop: sends follow answers, no schedule
  }
  std::vector<std::string> lines = absl::StrSplit(ReadFile(csv), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_TRUE(absl::StartsWith(lines[0], "label,"));
  EXPECT_TRUE(absl::StartsWith(lines[2], "c=8,closed,unary,8,"));
  std::string page = ReadFile(html);
  EXPECT_TRUE(absl::StartsWith(page, "<!DOCTYPE html>"));
  EXPECT_THAT(page, HasSubstr("<svg"));
  EXPECT_THAT(page, HasSubstr("</html>"));
}

TEST_F(CliTest, LoadgenOpenLoopStreamMode) {
  const std::string json = dir_.File("open.json");
  CommandResult r = RunCommand({MARLIN_LOADGEN_PATH,
                                "--server",
                                server_->address(),
                                "--create",
                                "256,128",
                                "--mode",
                                "stream",
                                "--streams",
                                "2",
                                "--rate",
                                "300",
                                "--duration",
                                "1",
                                "--warmup",
                                "0.2",
                                "--rows",
                                "4",
                                "--verify-fraction",
                                "0.2",
                                "--json",
                                json,
                                "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(ReadFile(json));
  ASSERT_EQ(j["points"].size(), 1u);
  const auto& p = j["points"][0];
  EXPECT_EQ(p["loop"], "open");
  EXPECT_EQ(p["mode"], "stream");
  EXPECT_EQ(p["sent"].get<uint64_t>(), p["answers"].get<uint64_t>() + p["errors"].get<uint64_t>());
  EXPECT_GT(p["sent"].get<uint64_t>(), 150u);  // ~300 expected
  EXPECT_EQ(p["verify"]["mismatches"].get<uint64_t>(), 0u);
  EXPECT_EQ(p["rows_answered"].get<uint64_t>(), 4 * p["answers"].get<uint64_t>());
  // Open loop reports how late the load generator itself sent (one lag per measured request);
  // latency counts from the same scheduled time and ends later, so its quantiles are not smaller.
  ASSERT_TRUE(p["send_lag_ms"].is_object()) << p.dump();
  EXPECT_EQ(p["send_lag_ms"]["count"].get<uint64_t>(), p["sent"].get<uint64_t>());
  EXPECT_GE(p["send_lag_ms"]["p50"].get<double>(), 0.0);
  EXPECT_LE(p["send_lag_ms"]["p50"].get<double>(), p["latency_ms"]["p50"].get<double>());
  EXPECT_LE(p["send_lag_ms"]["max"].get<double>(), p["latency_ms"]["max"].get<double>());
}

// Closed loop over several streams and connections (more chains than streams, streams not a
// multiple of the connections): every request answered once and bit-exact on the CPU backend.
TEST_F(CliTest, LoadgenStreamsOverSeveralConnections) {
  const std::string json = dir_.File("conns.json");
  CommandResult r = RunCommand({MARLIN_LOADGEN_PATH,
                                "--server",
                                server_->address(),
                                "--create",
                                "256,128",
                                "--mode",
                                "stream",
                                "--streams",
                                "5",
                                "--connections",
                                "3",
                                "--concurrency",
                                "1,12",
                                "--duration",
                                "0.5",
                                "--warmup",
                                "0.2",
                                "--rows",
                                "1-4",
                                "--verify-fraction",
                                "0.2",
                                "--json",
                                json,
                                "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(ReadFile(json));
  ASSERT_EQ(j["points"].size(), 2u);
  for (const auto& p : j["points"]) {
    EXPECT_GT(p["answers"].get<uint64_t>(), 0u);
    EXPECT_EQ(p["sent"].get<uint64_t>(),
              p["answers"].get<uint64_t>() + p["errors"].get<uint64_t>());
    EXPECT_EQ(p["errors"].get<uint64_t>(), 0u) << p["errors_by_code"];
    EXPECT_GT(p["verify"]["checked"].get<uint64_t>(), 0u);
    EXPECT_EQ(p["verify"]["mismatches"].get<uint64_t>(), 0u);
  }
}

TEST_F(CliTest, LoadgenFailsClearlyOnADeadServer) {
  std::string dead = absl::StrCat("127.0.0.1:", ::marlin::testing::FreePort());
  CommandResult r = RunCommand({MARLIN_LOADGEN_PATH, "--server", dead, "--max-attempts", "1",
                                "--create", "256,128", "--duration", "1"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("marlin-loadgen:"));
  EXPECT_THAT(r.err, HasSubstr("ServerInfo"));
}

}  // namespace
}  // namespace marlin
