#include "server/auth/token_auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace marlin::auth {

absl::string_view RoleName(Role role) { return role == Role::kAdmin ? "admin" : "user"; }

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  // volatile: keep the compiler from turning the loop into an early-exit comparison.
  volatile unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromText(
    absl::string_view text) {
  std::vector<Entry> entries;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "auth tokens line ", line_no, ": expected `ROLE TOKEN`, got ", fields.size(), " fields"));
    }
    Role role;
    if (fields[0] == "admin") {
      role = Role::kAdmin;
    } else if (fields[0] == "user") {
      role = Role::kUser;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("auth tokens line ", line_no,
                                                     ": role must be admin or user, got '",
                                                     absl::CEscape(fields[0].substr(0, 32)), "'"));
    }
    if (fields[1].size() < kMinTokenLength) {
      return absl::InvalidArgumentError(absl::StrCat(
          "auth tokens line ", line_no, ": token shorter than ", kMinTokenLength, " characters"));
    }
    for (const Entry& e : entries) {
      if (e.token == fields[1]) {
        return absl::InvalidArgumentError(
            absl::StrCat("auth tokens line ", line_no, ": duplicate token"));
      }
    }
    entries.push_back({role, std::string(fields[1])});
  }
  if (entries.empty()) return absl::InvalidArgumentError("auth tokens: no token configured");
  return std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator(std::move(entries)));
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromFile(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read --auth-tokens file ", path));
  std::ostringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::unique_ptr<TokenAuthenticator>> auth = FromText(text.str());
  if (!auth.ok()) {
    return absl::Status(auth.status().code(), absl::StrCat(path, ": ", auth.status().message()));
  }
  return auth;
}

absl::StatusOr<Role> TokenAuthenticator::AuthenticateToken(absl::string_view token) const {
  // Compare against every entry, whatever matches, so the time does not tell which one did.
  bool found = false;
  Role role = Role::kUser;
  for (const Entry& e : tokens_) {
    const bool match = ConstantTimeEquals(e.token, token);
    found = found || match;
    if (match) role = e.role;
  }
  if (!found) return absl::UnauthenticatedError("invalid bearer token");
  return role;
}

absl::StatusOr<Role> TokenAuthenticator::Authenticate(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const {
  auto [begin, end] = metadata.equal_range("authorization");
  if (begin == end) {
    return absl::UnauthenticatedError(
        "missing credentials: send metadata `authorization: Bearer <token>`");
  }
  if (std::next(begin) != end) {
    return absl::UnauthenticatedError("more than one authorization header");
  }
  const absl::string_view value(begin->second.data(), begin->second.size());
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError("authorization header must use the Bearer scheme");
  }
  return AuthenticateToken(absl::StripAsciiWhitespace(value.substr(kScheme.size())));
}

absl::Status TokenAuthenticator::Authorize(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
    Permission permission) const {
  absl::StatusOr<Role> role = Authenticate(metadata);
  if (!role.ok()) return role.status();
  if (permission == Permission::kWrite && *role != Role::kAdmin) {
    return absl::PermissionDeniedError(
        "role 'user' may run matmuls and read weights; uploading and deleting need role 'admin'");
  }
  return absl::OkStatus();
}

}  // namespace marlin::auth
