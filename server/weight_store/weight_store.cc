#include "server/weight_store/weight_store.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace marlin {

absl::Status ValidateWeightId(absl::string_view id) {
  if (id.empty() || id.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight id must be 1 to 128 characters, got ", id.size()));
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '/' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat("weight id '",
                                                     absl::CHexEscape(std::string(id)),
                                                     "' has a character outside [A-Za-z0-9._:/-]"));
    }
  }
  return absl::OkStatus();
}

bool MemoryLedger::TryAdd(uint64_t bytes, uint64_t limit) {
  std::lock_guard<std::mutex> lock(mu_);
  if (used_ + bytes > limit) return false;
  used_ += bytes;
  return true;
}

void MemoryLedger::Release(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  used_ -= std::min(bytes, used_);
}

uint64_t MemoryLedger::used() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

Weight::~Weight() {
  if (ledger_ != nullptr) ledger_->Release(accounted_bytes_);
}

WeightStore::Reservation& WeightStore::Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    ledger_ = std::move(other.ledger_);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void WeightStore::Reservation::Release() {
  if (ledger_ != nullptr) ledger_->Release(bytes_);
  ledger_.reset();
  bytes_ = 0;
}

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::Create(const Options& options) {
  if (options.max_weights < 1) return absl::InvalidArgumentError("max_weights must be >= 1");
  if (options.capacity_bytes != 0 && options.headroom_bytes >= options.capacity_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("memory headroom (", options.headroom_bytes,
                                                   " bytes) leaves nothing of the capacity (",
                                                   options.capacity_bytes, " bytes) for weights"));
  }
  return std::unique_ptr<WeightStore>(new WeightStore(options));
}

absl::StatusOr<WeightStore::Reservation> WeightStore::Reserve(absl::string_view id, uint64_t bytes,
                                                              bool replace) {
  if (absl::Status st = ValidateWeightId(id); !st.ok()) return st;
  if (bytes > options_.max_weight_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("weight '", id, "' needs ", bytes,
                     " device bytes, over --max-weight-bytes=", options_.max_weight_bytes));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    const bool exists = weights_.find(id) != weights_.end();
    if (exists && !replace) {
      return absl::AlreadyExistsError(
          absl::StrCat("weight '", id, "' already exists; set replace to overwrite it"));
    }
    if (!exists && weights_.size() >= options_.max_weights) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the server holds ", weights_.size(), " weights, --max-weights=", options_.max_weights));
    }
  }
  if (options_.device_free) {
    const uint64_t free = options_.device_free();
    if (bytes + options_.headroom_bytes > free) {
      return absl::ResourceExhaustedError(
          absl::StrCat("weight '", id, "' needs ", bytes, " device bytes; ", free,
                       " are free and --memory-headroom keeps ", options_.headroom_bytes));
    }
  }
  const uint64_t limit =
      options_.capacity_bytes == 0 ? UINT64_MAX : options_.capacity_bytes - options_.headroom_bytes;
  if (!ledger_->TryAdd(bytes, limit)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("weight '", id, "' needs ", bytes, " device bytes; ", ledger_->used(), " of ",
                     limit, " are taken (capacity ", options_.capacity_bytes,
                     " minus --memory-headroom ", options_.headroom_bytes, ")"));
  }
  return Reservation(ledger_, bytes);
}

absl::StatusOr<std::shared_ptr<const Weight>> WeightStore::Publish(
    absl::string_view id, std::shared_ptr<const backend::PreparedWeight> prepared,
    Reservation reservation, bool replace) {
  if (absl::Status st = ValidateWeightId(id); !st.ok()) return st;
  if (prepared == nullptr) return absl::InvalidArgumentError("no prepared weight");
  if (reservation.ledger_ != ledger_) {
    return absl::InvalidArgumentError("reservation belongs to another store");
  }
  std::shared_ptr<const Weight> replaced;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  auto it = weights_.find(id);
  if (it != weights_.end() && !replace) {
    return absl::AlreadyExistsError(
        absl::StrCat("weight '", id, "' already exists; set replace to overwrite it"));
  }
  if (it == weights_.end() && weights_.size() >= options_.max_weights) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server holds ", weights_.size(), " weights, --max-weights=", options_.max_weights));
  }
  uint64_t& last_version = versions_[std::string(id)];
  // The reservation's bytes move to the weight version, which releases them when it dies.
  const uint64_t bytes = std::exchange(reservation.bytes_, 0);
  reservation.ledger_.reset();
  auto weight = std::shared_ptr<const Weight>(
      new Weight(std::string(id), ++last_version, std::move(prepared), bytes, ledger_));
  if (it != weights_.end()) {
    replaced = std::exchange(it->second, weight);
  } else {
    weights_.emplace(std::string(id), weight);
  }
  return weight;
}

std::shared_ptr<const Weight> WeightStore::Get(absl::string_view id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = weights_.find(id);
  return it == weights_.end() ? nullptr : it->second;
}

absl::Status WeightStore::Delete(absl::string_view id) {
  std::shared_ptr<const Weight> removed;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  auto it = weights_.find(id);
  if (it == weights_.end()) {
    return absl::NotFoundError(absl::StrCat("no weight '", id, "'"));
  }
  removed = std::move(it->second);
  weights_.erase(it);
  return absl::OkStatus();
}

std::vector<std::shared_ptr<const Weight>> WeightStore::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<const Weight>> out;
  out.reserve(weights_.size());
  for (const auto& [id, w] : weights_) out.push_back(w);
  return out;
}

uint64_t WeightStore::accounted_bytes() const { return ledger_->used(); }

size_t WeightStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return weights_.size();
}

}  // namespace marlin
