// The weights a server holds: versioned, by id, with their device memory accounted.
//
// A weight version is immutable and shared: a request pins the version it was validated against
// (std::shared_ptr), so a replace or delete never pulls a weight from under a running batch; the
// old version's memory is released when its last batch lets go. Device memory is reserved before
// anything is allocated (Reserve), so an upload that would not fit is refused up front.
//
//   ASSIGN_OR_RETURN(auto store, WeightStore::Create({.capacity_bytes = free_bytes}));
//   ASSIGN_OR_RETURN(WeightStore::Reservation r, store->Reserve(id, bytes, /*replace=*/false));
//   ... backend->Prepare(packed) ...
//   ASSIGN_OR_RETURN(auto weight, store->Publish(id, std::move(prepared), std::move(r), false));
//   std::shared_ptr<const Weight> w = store->Get(id);  // nullptr when absent
#ifndef MARLIN_SERVER_WEIGHT_STORE_WEIGHT_STORE_H_
#define MARLIN_SERVER_WEIGHT_STORE_WEIGHT_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/backend/backend.h"

namespace marlin {

// OK when `id` matches [A-Za-z0-9._:/-]{1,128}; INVALID_ARGUMENT naming the rule otherwise.
absl::Status ValidateWeightId(absl::string_view id);

class WeightStore;

// The device bytes accounted by a store, shared with its reservations and weight versions so that
// each can give its bytes back whenever it dies (possibly after the store).
class MemoryLedger {
 public:
  // Adds `bytes` when the total stays within `limit`; false otherwise.
  bool TryAdd(uint64_t bytes, uint64_t limit);
  void Release(uint64_t bytes);
  uint64_t used() const;

 private:
  mutable std::mutex mu_;  // std::mutex so that TSan sees it (docs/reliability.md)
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
};

// One immutable version of a weight. Counters are the only mutable part.
class Weight {
 public:
  ~Weight();
  const std::string& id() const { return id_; }
  uint64_t version() const { return version_; }
  const WeightShape& shape() const { return prepared_->shape(); }
  absl::Time created() const { return created_; }
  uint64_t device_bytes() const { return accounted_bytes_; }
  const backend::PreparedWeight& prepared() const { return *prepared_; }

  void CountServed(int64_t rows) const {
    requests_served_.fetch_add(1, std::memory_order_relaxed);
    rows_served_.fetch_add(static_cast<uint64_t>(rows), std::memory_order_relaxed);
  }
  uint64_t requests_served() const { return requests_served_.load(std::memory_order_relaxed); }
  uint64_t rows_served() const { return rows_served_.load(std::memory_order_relaxed); }

 private:
  friend class WeightStore;
  Weight(std::string id, uint64_t version, std::shared_ptr<const backend::PreparedWeight> prepared,
         uint64_t accounted_bytes, std::shared_ptr<MemoryLedger> ledger)
      : id_(std::move(id)),
        version_(version),
        created_(absl::Now()),
        prepared_(std::move(prepared)),
        accounted_bytes_(accounted_bytes),
        ledger_(std::move(ledger)) {}

  const std::string id_;
  const uint64_t version_;
  const absl::Time created_;
  const std::shared_ptr<const backend::PreparedWeight> prepared_;
  const uint64_t accounted_bytes_;  // reserved in the store until this version dies
  std::shared_ptr<MemoryLedger> ledger_;
  mutable std::atomic<uint64_t> requests_served_{0};
  mutable std::atomic<uint64_t> rows_served_{0};
};

class WeightStore {
 public:
  struct Options {
    uint32_t max_weights = 64;
    uint64_t max_weight_bytes = uint64_t{8} << 30;  // device bytes of one weight
    uint64_t capacity_bytes = 0;  // device bytes the store may account in total (0 = unlimited)
    uint64_t headroom_bytes = 0;  // kept free of weights out of capacity_bytes / live free memory
    // Live free device memory, checked besides the accounting (null = not checked).
    std::function<uint64_t()> device_free = nullptr;
  };

  // Device bytes held for an upload in progress; released on destruction unless published.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept { *this = std::move(other); }
    Reservation& operator=(Reservation&& other) noexcept;
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() { Release(); }
    uint64_t bytes() const { return bytes_; }

   private:
    friend class WeightStore;
    Reservation(std::shared_ptr<MemoryLedger> ledger, uint64_t bytes)
        : ledger_(std::move(ledger)), bytes_(bytes) {}
    void Release();
    std::shared_ptr<MemoryLedger> ledger_;
    uint64_t bytes_ = 0;
  };

  static absl::StatusOr<std::unique_ptr<WeightStore>> Create(const Options& options);
  WeightStore(const WeightStore&) = delete;
  WeightStore& operator=(const WeightStore&) = delete;

  // Checks that `id` may be (re)placed and reserves `bytes`: INVALID_ARGUMENT for a bad id,
  // ALREADY_EXISTS when it exists and !replace, RESOURCE_EXHAUSTED past --max-weights,
  // --max-weight-bytes, or the memory capacity minus headroom.
  absl::StatusOr<Reservation> Reserve(absl::string_view id, uint64_t bytes, bool replace);
  // Makes `prepared` visible under `id` (checks existence and the count again).
  absl::StatusOr<std::shared_ptr<const Weight>> Publish(
      absl::string_view id, std::shared_ptr<const backend::PreparedWeight> prepared,
      Reservation reservation, bool replace);

  std::shared_ptr<const Weight> Get(absl::string_view id) const;
  // NOT_FOUND when absent. Running requests finish on the removed version.
  absl::Status Delete(absl::string_view id);
  std::vector<std::shared_ptr<const Weight>> List() const;

  // Bytes accounted: live versions (also replaced ones still in use) and reservations.
  uint64_t accounted_bytes() const;
  size_t size() const;
  const Options& options() const { return options_; }

 private:
  explicit WeightStore(const Options& options)
      : options_(options), ledger_(std::make_shared<MemoryLedger>()) {}

  const Options options_;
  const std::shared_ptr<MemoryLedger> ledger_;
  mutable std::mutex mu_;  // std::mutex so that TSan sees it (docs/reliability.md)
  std::map<std::string, std::shared_ptr<const Weight>, std::less<>> weights_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t, std::less<>> versions_ ABSL_GUARDED_BY(mu_);  // last per id
};

}  // namespace marlin

#endif  // MARLIN_SERVER_WEIGHT_STORE_WEIGHT_STORE_H_
