#include "server/auth/token_auth.h"

#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace marlin::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using Metadata = std::multimap<grpc::string_ref, grpc::string_ref>;

std::string RandomToken(std::mt19937& rng) {
  static constexpr char kChars[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string t(32, ' ');
  for (char& c : t) c = kChars[rng() % (sizeof(kChars) - 1)];
  return t;
}

class TokenAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(std::random_device{}());
    admin_ = RandomToken(rng);
    user_ = RandomToken(rng);
    auto auth = TokenAuthenticator::FromText("# tokens\n\nadmin " + admin_ + "   # ops\n\tuser\t" +
                                             user_ + "\r\n");
    ASSERT_TRUE(auth.ok()) << auth.status();
    auth_ = *std::move(auth);
  }

  absl::Status Check(const std::string& header, Permission p) {
    Metadata md;
    md.emplace("authorization", header);
    return auth_->Authorize(md, p);
  }

  std::string admin_, user_;
  std::unique_ptr<TokenAuthenticator> auth_;
};

TEST_F(TokenAuthTest, RolesGrantTheirPermissions) {
  EXPECT_EQ(auth_->size(), 2u);
  EXPECT_TRUE(Check("Bearer " + admin_, Permission::kRead).ok());
  EXPECT_TRUE(Check("Bearer " + admin_, Permission::kWrite).ok());
  EXPECT_TRUE(Check("bearer " + user_, Permission::kRead).ok());
  absl::Status st = Check("Bearer " + user_, Permission::kWrite);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(st.message(), HasSubstr("admin"));
  EXPECT_EQ(*auth_->AuthenticateToken(admin_), Role::kAdmin);
  EXPECT_EQ(*auth_->AuthenticateToken(user_), Role::kUser);
}

TEST_F(TokenAuthTest, MissingMalformedOrWrongTokensAreUnauthenticated) {
  Metadata none;
  EXPECT_EQ(auth_->Authorize(none, Permission::kRead).code(), absl::StatusCode::kUnauthenticated);
  std::string near = admin_;
  near.back() ^= 1;
  for (const std::string& header :
       {std::string("Bearer "), "Basic " + admin_, admin_, "Bearer " + near,
        "Bearer " + admin_ + "x", "Bearer " + admin_.substr(1), std::string("Bearer")}) {
    absl::Status st = Check(header, Permission::kRead);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << header;
    EXPECT_THAT(st.message(), Not(HasSubstr(admin_)));
  }
  Metadata two;
  two.emplace("authorization", "Bearer " + admin_);
  two.emplace("authorization", "Bearer " + user_);
  EXPECT_EQ(auth_->Authorize(two, Permission::kRead).code(), absl::StatusCode::kUnauthenticated);
}

TEST(TokenAuthFileTest, BadFilesNameTheLine) {
  const std::string tok(20, 'a');
  struct Case {
    std::string text;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {"", "no token"},
           {"# only a comment\n", "no token"},
           {"root " + tok, "line 1: role"},
           {"admin " + tok + "\nuser short", "line 2: token shorter"},
           {"admin " + tok + " extra", "line 1: expected"},
           {"admin\n", "line 1: expected"},
           {"admin " + tok + "\nuser " + tok, "line 2: duplicate"},
       }) {
    auto auth = TokenAuthenticator::FromText(c.text);
    ASSERT_FALSE(auth.ok()) << c.text;
    EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(auth.status().message(), HasSubstr(c.message));
    EXPECT_THAT(auth.status().message(), Not(HasSubstr(tok)));
  }
  EXPECT_EQ(TokenAuthenticator::FromFile("/nonexistent/tokens").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ConstantTimeEqualsTest, ComparesBytes) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
}

}  // namespace
}  // namespace marlin::auth
