#include "server/sharding/shard_map.h"

#include <charconv>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace marlin::sharding {
namespace {

constexpr uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

constexpr absl::string_view kOwnedBy = "\" is owned by shard ";

// Parses a non-negative decimal int filling all of `s`.
std::optional<int> ParseIndex(absl::string_view s) {
  int value = 0;
  if (s.empty()) return std::nullopt;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || ptr != s.data() + s.size() || value < 0) return std::nullopt;
  return value;
}

const std::string& EmptyString() {
  static const std::string* const kEmpty = new std::string();
  return *kEmpty;
}

}  // namespace

uint64_t Fnv1a64(absl::string_view bytes) {
  uint64_t hash = kFnvOffsetBasis;
  for (const char c : bytes) {
    hash ^= static_cast<uint8_t>(c);
    hash *= kFnvPrime;
  }
  return hash;
}

int ShardIndexOf(absl::string_view weight_id, int shard_count) {
  if (shard_count <= 1) return 0;
  return static_cast<int>(Fnv1a64(weight_id) % static_cast<uint64_t>(shard_count));
}

absl::StatusOr<ShardMap> ShardMap::Create(std::vector<std::string> peers, int self) {
  if (peers.empty()) return absl::InvalidArgumentError("shard map: the list of peers is empty");
  absl::flat_hash_set<absl::string_view> seen;
  for (size_t i = 0; i < peers.size(); ++i) {
    if (peers[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("shard map: peer ", i, " has no address"));
    }
    if (!seen.insert(peers[i]).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard map: peer \"", peers[i], "\" is listed twice"));
    }
  }
  if (self != kClient && (self < 0 || self >= static_cast<int>(peers.size()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shard map: shard index ", self, " is out of range for ", peers.size(), " peers"));
  }
  return ShardMap(std::move(peers), self);
}

absl::StatusOr<ShardMap> ShardMap::FromFlags(absl::string_view peers_csv, int self) {
  peers_csv = absl::StripAsciiWhitespace(peers_csv);
  if (peers_csv.empty()) {
    if (self != 0 && self != kClient) {
      return absl::InvalidArgumentError(
          absl::StrCat("--shard-index=", self, " needs --shard-peers listing every shard"));
    }
    ShardMap unsharded;
    unsharded.self_ = self;
    return unsharded;
  }
  std::vector<std::string> peers;
  for (absl::string_view peer : absl::StrSplit(peers_csv, ',')) {
    peers.emplace_back(absl::StripAsciiWhitespace(peer));
  }
  return Create(std::move(peers), self);
}

int ShardMap::OwnerIndex(absl::string_view weight_id) const {
  return ShardIndexOf(weight_id, size());
}

const std::string& ShardMap::OwnerAddress(absl::string_view weight_id) const {
  if (peers_.empty()) return EmptyString();
  return peers_[OwnerIndex(weight_id)];
}

bool ShardMap::IsLocal(absl::string_view weight_id) const {
  return self_ != kClient && OwnerIndex(weight_id) == self_;
}

absl::Status ShardMap::CheckOwner(absl::string_view weight_id) const {
  if (IsLocal(weight_id)) return absl::OkStatus();
  const int owner = OwnerIndex(weight_id);
  std::string message =
      absl::StrCat("weight \"", weight_id, kOwnedBy, owner, " (", OwnerAddress(weight_id), ")");
  if (self_ == kClient) {
    absl::StrAppend(&message, ", this process is not a shard");
  } else {
    absl::StrAppend(&message, ", this is shard ", self_);
  }
  return absl::FailedPreconditionError(message);
}

std::optional<Owner> OwnerFromStatus(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kFailedPrecondition) return std::nullopt;
  absl::string_view message = status.message();
  // Callers may prefix the server's message with their own context ("upload w: weight ...").
  const size_t start = message.find("weight \"");
  if (start == absl::string_view::npos) return std::nullopt;
  message.remove_prefix(start);
  // Weight ids may themselves contain the marker; the last occurrence is ours.
  const size_t at = message.rfind(kOwnedBy);
  if (at == absl::string_view::npos) return std::nullopt;
  absl::string_view rest = message.substr(at + kOwnedBy.size());
  const size_t open = rest.find(" (");
  const size_t close = rest.find(')', open == absl::string_view::npos ? 0 : open);
  if (open == absl::string_view::npos || close == absl::string_view::npos) return std::nullopt;
  const std::optional<int> index = ParseIndex(rest.substr(0, open));
  if (!index.has_value()) return std::nullopt;
  return Owner{*index, std::string(rest.substr(open + 2, close - open - 2))};
}

absl::StatusOr<int> OrdinalFromHostname(absl::string_view hostname) {
  // A pod's hostname may come fully qualified; the ordinal ends its first label.
  hostname = hostname.substr(0, hostname.find('.'));
  const size_t dash = hostname.rfind('-');
  const std::optional<int> ordinal =
      dash == absl::string_view::npos ? std::nullopt : ParseIndex(hostname.substr(dash + 1));
  if (!ordinal.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hostname \"", hostname, "\" does not end in a StatefulSet ordinal (\"-<n>\")"));
  }
  return *ordinal;
}

}  // namespace marlin::sharding
