#include "server/auth/tls.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace marlin::auth {
namespace {

using ::testing::HasSubstr;

class TlsFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("marlin_tls_test_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(TlsFilesTest, NoFilesIsPlaintext) {
  auto creds = ServerCredentialsFromFiles({});
  ASSERT_TRUE(creds.ok());
  EXPECT_NE(*creds, nullptr);
}

TEST_F(TlsFilesTest, IncompleteOrBadFilesAreRefused) {
  const std::string junk = Write("junk.pem", "not a certificate");
  struct Case {
    TlsFiles files;
    absl::StatusCode code;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{.cert = junk}, absl::StatusCode::kInvalidArgument, "--tls-key"},
           {{.key = junk}, absl::StatusCode::kInvalidArgument, "--tls-cert"},
           {{.client_ca = junk}, absl::StatusCode::kInvalidArgument, "--tls-cert"},
           {{.cert = junk, .key = junk}, absl::StatusCode::kInvalidArgument, "not PEM"},
           {{.cert = "/nonexistent.pem", .key = junk}, absl::StatusCode::kNotFound, "--tls-cert"},
       }) {
    auto creds = ServerCredentialsFromFiles(c.files);
    ASSERT_FALSE(creds.ok());
    EXPECT_EQ(creds.status().code(), c.code) << creds.status();
    EXPECT_THAT(creds.status().message(), HasSubstr(c.message));
  }
}

TEST_F(TlsFilesTest, GeneratedCertificateAndKeyAreAccepted) {
  const std::string cert = (dir_ / "cert.pem").string(), key = (dir_ / "key.pem").string();
  const std::string cmd =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
      "-nodes -days 1 -subj /CN=localhost -keyout " +
      key + " -out " + cert + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl CLI not available";
  auto creds = ServerCredentialsFromFiles({.cert = cert, .key = key, .client_ca = cert});
  ASSERT_TRUE(creds.ok()) << creds.status();
  EXPECT_NE(*creds, nullptr);
}

}  // namespace
}  // namespace marlin::auth
