// Bearer-token authentication and role-based authorization for marlin-server.
//
// A token file holds one `ROLE TOKEN` pair per line (`#` starts a comment; blank lines are
// ignored). Roles: `admin` may do everything (upload and delete weights included); `user` may run
// matmuls and read (GetWeight, ListWeights, ServerInfo). Clients send `authorization: Bearer
// <token>`. Tokens are compared in constant time against every configured token, so neither the
// match position nor the matching prefix leaks through timing.
//
//   ASSIGN_OR_RETURN(auto auth, TokenAuthenticator::FromFile("/etc/marlin/tokens"));
//   RETURN_IF_ERROR(auth->Authorize(context->client_metadata(), Permission::kWrite));
//
// Missing, malformed or unknown tokens give UNAUTHENTICATED; a known token whose role lacks the
// permission gives PERMISSION_DENIED. Messages never echo the token.
#ifndef MARLIN_SERVER_AUTH_TOKEN_AUTH_H_
#define MARLIN_SERVER_AUTH_TOKEN_AUTH_H_

#include <grpcpp/support/string_ref.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace marlin::auth {

enum class Role { kUser, kAdmin };
// What a call needs: kRead for matmuls and read-only calls, kWrite for uploads and deletes.
enum class Permission { kRead, kWrite };

absl::string_view RoleName(Role role);

// Constant-time equality of two byte strings (time depends only on their lengths).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

class TokenAuthenticator {
 public:
  // Tokens shorter than this are refused when the file is read.
  static constexpr size_t kMinTokenLength = 16;

  // Parses the contents of a token file. INVALID_ARGUMENT naming the line for an unknown role,
  // a missing or short token, extra fields, a duplicate token, or a file with no token at all.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromText(absl::string_view text);
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(const std::string& path);

  // The role of the caller whose metadata is `metadata` (one `authorization` entry, `Bearer`
  // scheme, case-insensitive). UNAUTHENTICATED otherwise.
  absl::StatusOr<Role> Authenticate(
      const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const;
  absl::StatusOr<Role> AuthenticateToken(absl::string_view token) const;
  // Authenticate, then PERMISSION_DENIED when the role lacks `permission`.
  absl::Status Authorize(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                         Permission permission) const;

  size_t size() const { return tokens_.size(); }

 private:
  struct Entry {
    Role role;
    std::string token;
  };
  explicit TokenAuthenticator(std::vector<Entry> tokens) : tokens_(std::move(tokens)) {}

  const std::vector<Entry> tokens_;
};

}  // namespace marlin::auth

#endif  // MARLIN_SERVER_AUTH_TOKEN_AUTH_H_
