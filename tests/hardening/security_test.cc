// TLS, mutual TLS and bearer tokens with roles, over real channels to an in-process server with
// certificates made at test time; and the listening addresses (nothing on 0.0.0.0 by default).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/hardening/harness.h"

namespace marlin::hardening {
namespace {

using ::testing::HasSubstr;

std::string TempDir(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          absl::StrCat("marlin_", name, "_", getpid(), "_", std::random_device{}()))
      .string();
}

std::shared_ptr<grpc::Channel> TlsChannel(int port, const Certificates& c, bool client_cert,
                                          bool rogue = false) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(c.ca);
  if (client_cert) {
    ssl.pem_cert_chain = ReadFile(rogue ? c.rogue_cert : c.client_cert);
    ssl.pem_private_key = ReadFile(rogue ? c.rogue_key : c.client_key);
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), grpc::SslCredentials(ssl),
                                   args);
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("tls");
    auto certs = MakeCertificates(dir_);
    if (!certs.ok()) GTEST_SKIP() << "openssl CLI unavailable: " << certs.status();
    certs_ = *certs;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
  Certificates certs_;
};

TEST_F(TlsTest, TlsServesTlsClientsAndRefusesPlaintext) {
  ServerOptions o = SmallServerOptions();
  o.tls_cert = certs_.server_cert;
  o.tls_key = certs_.server_key;
  auto server = MarlinServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  std::mt19937 rng(std::random_device{}());
  TestWeight w = RandomWeight({.k = 128, .n = 64, .group_size = 128}, rng);
  auto stub = v1::MatmulService::NewStub(TlsChannel(port, certs_, /*client_cert=*/false));
  ASSERT_TRUE(Upload(*stub, Header("w", w.shape, w.data), w.data).ok());
  const std::string x = RandomRows(5, 128, rng);
  v1::MatmulResponse resp;
  grpc::Status s = Matmul(*stub, Request("w", 5, x), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.output(), w.Reference(x, 5));

  auto plain = v1::MatmulService::NewStub(PlaintextChannel(port));
  s = Matmul(*plain, Request("w", 5, x), &resp, "", std::chrono::seconds(3));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_EQ(HealthStatus(TlsChannel(port, certs_, false)), 1);
}

TEST_F(TlsTest, MutualTlsRefusesClientsWithoutATrustedCertificate) {
  ServerOptions o = SmallServerOptions();
  o.tls_cert = certs_.server_cert;
  o.tls_key = certs_.server_key;
  o.tls_client_ca = certs_.ca;
  auto server = MarlinServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  v1::ServerInfoResponse info;
  auto call = [&](std::shared_ptr<grpc::Channel> ch) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    return v1::MatmulService::NewStub(ch)->ServerInfo(&ctx, {}, &info);
  };
  EXPECT_TRUE(call(TlsChannel(port, certs_, /*client_cert=*/true)).ok());
  EXPECT_EQ(call(TlsChannel(port, certs_, /*client_cert=*/false)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(call(TlsChannel(port, certs_, true, /*rogue=*/true)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(call(PlaintextChannel(port)).error_code(), grpc::StatusCode::UNAVAILABLE);
  // The refused handshakes did not hurt the server.
  EXPECT_TRUE(call(TlsChannel(port, certs_, true)).ok());
}

TEST_F(TlsTest, BadTlsFlagsStopTheStart) {
  ServerOptions o = SmallServerOptions();
  o.tls_cert = certs_.server_cert;  // no key
  EXPECT_EQ(MarlinServer::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.tls_key = certs_.server_cert;  // a certificate is not a key
  EXPECT_EQ(MarlinServer::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
}

std::string RandomToken(std::mt19937& rng) {
  std::string t;
  for (int i = 0; i < 40; ++i) t.push_back("0123456789abcdef"[rng() % 16]);
  return t;
}

class TokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(std::random_device{}());
    admin_ = RandomToken(rng);
    user_ = RandomToken(rng);
    file_ = TempDir("tokens");
    std::ofstream(file_) << "# test tokens\nadmin " << admin_ << "\nuser " << user_ << "\n";
    ServerOptions o = SmallServerOptions();
    o.auth_tokens = file_;
    auto server = MarlinServer::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = PlaintextChannel(server_->port());
    stub_ = v1::MatmulService::NewStub(channel_);
    w_ = RandomWeight({.k = 256, .n = 128, .group_size = 128}, rng);
    x_ = RandomRows(3, 256, rng);
  }
  void TearDown() override {
    std::filesystem::remove(file_);
    server_.reset();
  }

  grpc::Status Delete(const std::string& token, const std::string& id) {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    v1::DeleteWeightRequest req;
    req.set_weight_id(id);
    v1::DeleteWeightResponse resp;
    return stub_->DeleteWeight(&ctx, req, &resp);
  }
  grpc::Status List(const std::string& token) {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    v1::ListWeightsResponse resp;
    return stub_->ListWeights(&ctx, {}, &resp);
  }
  grpc::Status Get(const std::string& token) {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    v1::GetWeightRequest req;
    req.set_weight_id("w");
    v1::WeightInfo resp;
    return stub_->GetWeight(&ctx, req, &resp);
  }
  grpc::Status Info(const std::string& token) {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    v1::ServerInfoResponse resp;
    return stub_->ServerInfo(&ctx, {}, &resp);
  }
  // One request on a stream: the stream's final status (the request's own when OK).
  grpc::Status Stream(const std::string& token, v1::MatmulResponse* out) {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    auto stream = stub_->MatmulStream(&ctx);
    stream->Write(Request("w", 3, x_, 7));
    stream->WritesDone();
    bool got = stream->Read(out);
    grpc::Status s = stream->Finish();
    if (s.ok() && !got) return grpc::Status(grpc::StatusCode::INTERNAL, "no answer");
    return s;
  }

  std::string admin_, user_, file_;
  std::unique_ptr<MarlinServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MatmulService::Stub> stub_;
  TestWeight w_;
  std::string x_;
};

TEST_F(TokenTest, AdminMayDoEverything) {
  ASSERT_TRUE(Upload(*stub_, Header("w", w_.shape, w_.data), w_.data, admin_).ok());
  v1::MatmulResponse resp;
  ASSERT_TRUE(Matmul(*stub_, Request("w", 3, x_), &resp, admin_).ok());
  EXPECT_EQ(resp.output(), w_.Reference(x_, 3));
  ASSERT_TRUE(Stream(admin_, &resp).ok());
  EXPECT_EQ(resp.output(), w_.Reference(x_, 3));
  EXPECT_TRUE(List(admin_).ok());
  EXPECT_TRUE(Get(admin_).ok());
  EXPECT_TRUE(Info(admin_).ok());
  EXPECT_TRUE(Delete(admin_, "w").ok());
  ExpectStoreHoldsExactly(*server_, {});
}

TEST_F(TokenTest, UserMayComputeAndReadButNotWrite) {
  ASSERT_TRUE(Upload(*stub_, Header("w", w_.shape, w_.data), w_.data, admin_).ok());
  v1::MatmulResponse resp;
  ASSERT_TRUE(Matmul(*stub_, Request("w", 3, x_), &resp, user_).ok());
  EXPECT_EQ(resp.output(), w_.Reference(x_, 3));
  ASSERT_TRUE(Stream(user_, &resp).ok());
  EXPECT_EQ(resp.output(), w_.Reference(x_, 3));
  EXPECT_TRUE(List(user_).ok());
  EXPECT_TRUE(Get(user_).ok());
  EXPECT_TRUE(Info(user_).ok());

  grpc::Status s = Upload(*stub_, Header("w2", w_.shape, w_.data), w_.data, user_);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("admin"));
  s = Upload(*stub_, Header("w", w_.shape, w_.data, /*replace=*/true), w_.data, user_);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Delete(user_, "w").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ExpectStoreHoldsExactly(*server_, {"w"});
  EXPECT_EQ(server_->store().Get("w")->version(), 1u);
}

TEST_F(TokenTest, MissingOrWrongTokensAreUnauthenticatedAndHealthStaysOpen) {
  ASSERT_TRUE(Upload(*stub_, Header("w", w_.shape, w_.data), w_.data, admin_).ok());
  std::string near = admin_;
  near[near.size() / 2] = near[near.size() / 2] == 'a' ? 'b' : 'a';
  for (const std::string& token :
       {std::string(), near, admin_ + "0", admin_.substr(1), std::string("x")}) {
    SCOPED_TRACE(token);
    v1::MatmulResponse resp;
    EXPECT_EQ(Matmul(*stub_, Request("w", 3, x_), &resp, token).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(Stream(token, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    grpc::Status s = Upload(*stub_, Header("evil", w_.shape, w_.data), w_.data, token);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(Delete(token, "w").error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(List(token).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(Get(token).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(Info(token).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // A scheme other than Bearer.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Basic " + admin_);
  v1::ListWeightsResponse list;
  EXPECT_EQ(stub_->ListWeights(&ctx, {}, &list).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(HealthStatus(channel_), 1);  // no token needed
  ExpectStoreHoldsExactly(*server_, {"w"});
}

// Local TCP listeners of this process: "ADDR:PORT" in /proc/net/tcp{,6} hex, state 0A (LISTEN).
std::set<std::string> ListeningSockets() {
  std::set<std::string> out;
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream in(ReadFile(file));
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (f.size() > 3 && f[3] == "0A") out.insert(f[1]);
    }
  }
  return out;
}

TEST(ListenTest, DefaultAddressesAreLoopbackOnly) {
  ServerOptions o = SmallServerOptions();
  o.metrics_listen = "127.0.0.1:0";
  auto server = MarlinServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::set<std::string> sockets = ListeningSockets();
  for (int port : {(*server)->port(), (*server)->metrics_port()}) {
    ASSERT_NE(port, 0);
    char suffix[8];
    std::snprintf(suffix, sizeof(suffix), ":%04X", port);
    int found = 0;
    for (const std::string& s : sockets) {
      if (!absl::EndsWith(s, suffix)) continue;
      ++found;
      // 127.0.0.1, or its IPv4-mapped IPv6 form ::ffff:127.0.0.1.
      EXPECT_TRUE(s == absl::StrCat("0100007F", suffix) ||
                  s == absl::StrCat("0000000000000000FFFF00000100007F", suffix))
          << s << ": port " << port << " is not on 127.0.0.1";
    }
    EXPECT_EQ(found, 1) << "port " << port;
  }
  // The defaults of the flags themselves.
  ServerOptions defaults;
  EXPECT_TRUE(absl::StartsWith(defaults.listen, "127.0.0.1:"));
  EXPECT_TRUE(absl::StartsWith(defaults.metrics_listen, "127.0.0.1:"));
}

}  // namespace
}  // namespace marlin::hardening
