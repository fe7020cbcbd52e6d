#include "server/batcher/batcher.h"

#include <atomic>
#include <chrono>
#include <future>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace marlin::batcher {
namespace {

using ::testing::ElementsAre;
using ::testing::SizeIs;

class TestItem : public Item {
 public:
  explicit TestItem(int64_t rows, absl::Time deadline = absl::InfiniteFuture())
      : rows_(rows), deadline_(deadline) {}
  int64_t rows() const override { return rows_; }
  absl::Time deadline() const override { return deadline_; }
  bool cancelled() const override { return cancelled_.load(); }
  void Abort(const absl::Status& status) override {
    ++aborts_;
    aborted_with_ = status;
  }
  void Cancel() { cancelled_ = true; }
  int aborts() const { return aborts_.load(); }
  const absl::Status& aborted_with() const { return aborted_with_; }

 private:
  const int64_t rows_;
  const absl::Time deadline_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int> aborts_{0};
  absl::Status aborted_with_;
};

std::vector<int64_t> RowsOf(const Batch& b) {
  std::vector<int64_t> rows;
  for (const auto& item : b.items) rows.push_back(item->rows());
  return rows;
}

class BatcherTest : public ::testing::Test {
 protected:
  std::unique_ptr<Batcher> Make(Options options) {
    auto b = Batcher::Create(options, &clock_);
    EXPECT_TRUE(b.ok()) << b.status();
    return *std::move(b);
  }
  // The timed policy: a lane that asks takes only full queues and queues whose oldest request
  // waited max_queue_delay. Most tests below pin down those size and delay rules with it (with
  // the default work-conserving policy, TryNext would take any queue at once).
  std::unique_ptr<Batcher> MakeTimed(Options options) {
    options.work_conserving = false;
    return Make(options);
  }
  FakeClock clock_;
};

TEST_F(BatcherTest, RejectsBadOptions) {
  EXPECT_EQ(Batcher::Create({.max_batch_rows = 0}, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Batcher::Create({.max_queue_rows = 0}, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Batcher::Create({.max_queue_delay = absl::Microseconds(-1)}, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(BatcherTest, ClosesOnSize) {
  auto b = MakeTimed({.max_batch_rows = 16, .max_queue_delay = absl::Seconds(10)});
  for (int64_t rows : {4, 8}) ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(rows)).ok());
  EXPECT_FALSE(b->TryNext().has_value()) << "12 rows < 16 and no time passed";
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(4)).ok());
  std::optional<Batch> batch = b->TryNext();
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(batch->reason, CloseReason::kSize);
  EXPECT_EQ(batch->rows, 16);
  EXPECT_EQ(batch->key, "w");
  EXPECT_THAT(RowsOf(*batch), ElementsAre(4, 8, 4));
  EXPECT_EQ(b->queued_rows(), 0);
  EXPECT_FALSE(b->TryNext().has_value());
}

TEST_F(BatcherTest, JoinsWholeRequestsAndLeavesTheRestQueued) {
  auto b = MakeTimed({.max_batch_rows = 16, .max_queue_delay = absl::Seconds(10)});
  for (int64_t rows : {6, 6, 6}) {
    ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(rows)).ok());
  }
  std::optional<Batch> batch = b->TryNext();
  ASSERT_TRUE(batch.has_value());
  EXPECT_THAT(RowsOf(*batch), ElementsAre(6, 6));  // a third 6 would make 18 > 16
  EXPECT_EQ(b->queued_rows(), 6);
  EXPECT_FALSE(b->TryNext().has_value());
}

TEST_F(BatcherTest, ClosesOnDelayOfTheOldest) {
  auto b = MakeTimed({.max_batch_rows = 64, .max_queue_delay = absl::Microseconds(500)});
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(3)).ok());
  clock_.Advance(absl::Microseconds(300));
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(2)).ok());
  EXPECT_EQ(b->NextEvent(), clock_.Now() - absl::Microseconds(300) + absl::Microseconds(500));
  clock_.Advance(absl::Microseconds(199));
  EXPECT_FALSE(b->TryNext().has_value());
  clock_.Advance(absl::Microseconds(1));
  std::optional<Batch> batch = b->TryNext();
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(batch->reason, CloseReason::kDelay);
  EXPECT_THAT(RowsOf(*batch), ElementsAre(3, 2));
  EXPECT_EQ(b->NextEvent(), absl::InfiniteFuture());
}

TEST_F(BatcherTest, LargeRequestRunsAlone) {
  auto b = MakeTimed({.max_batch_rows = 8, .max_queue_delay = absl::Seconds(1)});
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(2)).ok());
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(20)).ok());
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(3)).ok());
  std::optional<Batch> first = b->TryNext();
  ASSERT_TRUE(first.has_value());
  EXPECT_THAT(RowsOf(*first), ElementsAre(2));
  std::optional<Batch> second = b->TryNext();
  ASSERT_TRUE(second.has_value());
  EXPECT_THAT(RowsOf(*second), ElementsAre(20));
  EXPECT_EQ(second->rows, 20);
  EXPECT_FALSE(b->TryNext().has_value()) << "3 rows left, below size and delay";
}

TEST_F(BatcherTest, DeadlinePassedInQueueIsAbortedNeverBatched) {
  auto b = MakeTimed({.max_batch_rows = 64, .max_queue_delay = absl::Milliseconds(10)});
  auto late = std::make_shared<TestItem>(4, clock_.Now() + absl::Milliseconds(2));
  auto fine = std::make_shared<TestItem>(4);
  ASSERT_TRUE(b->Enqueue("w", late).ok());
  ASSERT_TRUE(b->Enqueue("w", fine).ok());
  EXPECT_EQ(b->NextEvent(), clock_.Now() + absl::Milliseconds(2));
  clock_.Advance(absl::Milliseconds(2));
  EXPECT_FALSE(b->TryNext().has_value());
  EXPECT_EQ(late->aborts(), 1);
  EXPECT_EQ(late->aborted_with().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(b->queued_rows(), 4);
  clock_.Advance(absl::Milliseconds(8));
  std::optional<Batch> batch = b->TryNext();
  ASSERT_TRUE(batch.has_value());
  ASSERT_THAT(batch->items, SizeIs(1));
  EXPECT_EQ(batch->items[0], fine);
  EXPECT_EQ(fine->aborts(), 0);
}

TEST_F(BatcherTest, AlreadyExpiredIsRefusedAtEnqueue) {
  auto b = MakeTimed({});
  auto item = std::make_shared<TestItem>(1, clock_.Now());
  EXPECT_EQ(b->Enqueue("w", item).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(item->aborts(), 0);
  EXPECT_EQ(b->queued_requests(), 0);
}

TEST_F(BatcherTest, CancelledIsDropped) {
  auto b = MakeTimed({.max_batch_rows = 8, .max_queue_delay = absl::Seconds(1)});
  auto a = std::make_shared<TestItem>(4);
  auto c = std::make_shared<TestItem>(4);
  auto d = std::make_shared<TestItem>(4);
  for (auto& item : {a, c, d}) ASSERT_TRUE(b->Enqueue("w", item).ok());
  c->Cancel();
  std::optional<Batch> batch = b->TryNext();
  ASSERT_TRUE(batch.has_value());
  EXPECT_THAT(batch->items, ElementsAre(a, d));
  EXPECT_EQ(c->aborts(), 1);
  EXPECT_EQ(c->aborted_with().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(b->queued_rows(), 0);
}

TEST_F(BatcherTest, BoundRefusesAtOnceOverAllQueues) {
  auto b =
      MakeTimed({.max_batch_rows = 64, .max_queue_delay = absl::Seconds(1), .max_queue_rows = 10});
  ASSERT_TRUE(b->Enqueue("a", std::make_shared<TestItem>(6)).ok());
  ASSERT_TRUE(b->Enqueue("b", std::make_shared<TestItem>(4)).ok());
  auto over = std::make_shared<TestItem>(1);
  absl::Status s = b->Enqueue("c", over);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("max-queue-rows"));
  EXPECT_EQ(over->aborts(), 0);
  EXPECT_EQ(b->queued_rows(), 10);
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(b->TryNext().has_value());  // frees room
  EXPECT_TRUE(b->Enqueue("c", over).ok());
}

TEST_F(BatcherTest, WeightsBatchIndependently) {
  auto b = MakeTimed({.max_batch_rows = 8, .max_queue_delay = absl::Seconds(1)});
  ASSERT_TRUE(b->Enqueue("a", std::make_shared<TestItem>(5)).ok());
  ASSERT_TRUE(b->Enqueue("b", std::make_shared<TestItem>(5)).ok());
  EXPECT_FALSE(b->TryNext().has_value()) << "10 rows in total, but 5 per weight";
  ASSERT_TRUE(b->Enqueue("b", std::make_shared<TestItem>(3)).ok());
  std::optional<Batch> batch = b->TryNext();
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(batch->key, "b");
  EXPECT_EQ(batch->rows, 8);
}

TEST_F(BatcherTest, FairnessBetweenWeights) {
  auto b = MakeTimed({.max_batch_rows = 8, .max_queue_delay = absl::Microseconds(100)});
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(b->Enqueue("busy", std::make_shared<TestItem>(8)).ok());
  ASSERT_TRUE(b->Enqueue("quiet", std::make_shared<TestItem>(1)).ok());
  clock_.Advance(absl::Microseconds(100));  // every queue is ready now
  std::vector<std::string> order;
  while (std::optional<Batch> batch = b->TryNext()) order.push_back(batch->key);
  ASSERT_THAT(order, SizeIs(11));
  // The quiet weight is served within the first two batches, not after the busy one's ten.
  EXPECT_TRUE(order[0] == "quiet" || order[1] == "quiet") << order[0] << " " << order[1];

  // With two busy weights, batches alternate.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(b->Enqueue("x", std::make_shared<TestItem>(8)).ok());
    ASSERT_TRUE(b->Enqueue("y", std::make_shared<TestItem>(8)).ok());
  }
  order.clear();
  while (std::optional<Batch> batch = b->TryNext()) order.push_back(batch->key);
  EXPECT_THAT(order, ElementsAre("x", "y", "x", "y", "x", "y"));
}

TEST_F(BatcherTest, CloseFlushesAndRefuses) {
  auto b = MakeTimed({.max_batch_rows = 64, .max_queue_delay = absl::Seconds(10)});
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(2)).ok());
  b->Close();
  EXPECT_EQ(b->Enqueue("w", std::make_shared<TestItem>(1)).code(), absl::StatusCode::kUnavailable);
  std::optional<Batch> batch = b->TryNext();
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(batch->reason, CloseReason::kDrain);
  EXPECT_FALSE(b->Next().has_value()) << "closed and empty: workers exit";
}

TEST_F(BatcherTest, AbortAllAnswersEverythingQueued) {
  auto b = MakeTimed({.max_batch_rows = 64, .max_queue_delay = absl::Seconds(10)});
  std::vector<std::shared_ptr<TestItem>> items;
  for (int i = 0; i < 5; ++i) {
    items.push_back(std::make_shared<TestItem>(1 + i));
    ASSERT_TRUE(b->Enqueue(i % 2 ? "a" : "b", items.back()).ok());
  }
  EXPECT_EQ(b->AbortAll(absl::UnavailableError("drain timeout")), 5);
  for (const auto& item : items) {
    EXPECT_EQ(item->aborts(), 1);
    EXPECT_EQ(item->aborted_with().code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(b->queued_rows(), 0);
}

// ---- Work-conserving (the default policy) ---------------------------------------------------

TEST_F(BatcherTest, LoneRequestGoesAtOnceToAnIdleLane) {
  auto b = Make({.max_batch_rows = 64, .max_queue_delay = absl::Seconds(10)});
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(1)).ok());
  std::optional<Batch> batch = b->TryNext();  // no time has passed
  ASSERT_TRUE(batch.has_value()) << "an idle lane does not wait 10 s for company";
  EXPECT_EQ(batch->reason, CloseReason::kIdleLane);
  EXPECT_EQ(batch->rows, 1);
  EXPECT_EQ(batch->closed, batch->items.front()->enqueued());
  EXPECT_EQ(b->queued_requests(), 0);
}

TEST_F(BatcherTest, BatchesFormWhileTheLaneIsBusy) {
  auto b = Make({.max_batch_rows = 8, .max_queue_delay = absl::Seconds(10)});
  ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(1)).ok());
  std::optional<Batch> first = b->TryNext();
  ASSERT_TRUE(first.has_value());
  EXPECT_THAT(RowsOf(*first), ElementsAre(1));
  // The lane runs `first` (it does not ask): requests arrive and wait together.
  for (int64_t rows : {1, 2, 3}) {
    ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(rows)).ok());
    clock_.Advance(absl::Microseconds(50));
  }
  std::optional<Batch> second = b->TryNext();  // the lane is back
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->reason, CloseReason::kIdleLane);
  EXPECT_THAT(RowsOf(*second), ElementsAre(1, 2, 3));
  EXPECT_EQ(second->closed - second->items.front()->enqueued(), absl::Microseconds(150));
  // A longer wait still makes batches of at most max_batch_rows.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(b->Enqueue("w", std::make_shared<TestItem>(3)).ok());
  std::optional<Batch> full = b->TryNext();
  ASSERT_TRUE(full.has_value());
  EXPECT_EQ(full->reason, CloseReason::kSize);
  EXPECT_THAT(RowsOf(*full), ElementsAre(3, 3));
  ASSERT_TRUE(b->TryNext().has_value());  // 3, 3 (9 rows were waiting: still full)
  std::optional<Batch> rest = b->TryNext();
  ASSERT_TRUE(rest.has_value());
  EXPECT_EQ(rest->reason, CloseReason::kIdleLane);
  EXPECT_THAT(RowsOf(*rest), ElementsAre(3));
  EXPECT_FALSE(b->TryNext().has_value());
}

TEST_F(BatcherTest, IdleLanesStillSweepAndServeRoundRobin) {
  auto b = Make({.max_batch_rows = 64, .max_queue_delay = absl::Seconds(10)});
  auto cancelled = std::make_shared<TestItem>(2);
  ASSERT_TRUE(b->Enqueue("x", cancelled).ok());
  ASSERT_TRUE(b->Enqueue("y", std::make_shared<TestItem>(1)).ok());
  ASSERT_TRUE(b->Enqueue("x", std::make_shared<TestItem>(4)).ok());
  cancelled->Cancel();
  std::optional<Batch> first = b->TryNext();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->key, "x");
  EXPECT_THAT(RowsOf(*first), ElementsAre(4)) << "the cancelled request is never handed out";
  EXPECT_EQ(cancelled->aborts(), 1);
  std::optional<Batch> second = b->TryNext();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->key, "y");
}

// The blocking path on the real clock: concurrent producers and consumers, every item either
// batched once or aborted once.
class BatcherRealClockTest : public ::testing::TestWithParam<bool> {};

TEST_P(BatcherRealClockTest, EveryItemHandedOutExactlyOnce) {
  auto created = Batcher::Create({.max_batch_rows = 16,
                                  .max_queue_delay = absl::Microseconds(200),
                                  .max_queue_rows = 1 << 20,
                                  .work_conserving = GetParam()});
  ASSERT_TRUE(created.ok());
  Batcher& b = **created;
  constexpr int kProducers = 4, kPerProducer = 500;
  std::vector<std::shared_ptr<TestItem>> all(kProducers * kPerProducer);
  std::atomic<int64_t> batched_rows{0}, batched_items{0};
  std::atomic<int64_t> max_rows{0};
  std::vector<std::thread> consumers;
  for (int c = 0; c < 2; ++c) {
    consumers.emplace_back([&] {
      while (std::optional<Batch> batch = b.Next()) {
        batched_rows += batch->rows;
        batched_items += static_cast<int64_t>(batch->items.size());
        int64_t prev = max_rows.load();
        while (batch->rows > prev && !max_rows.compare_exchange_weak(prev, batch->rows)) {
        }
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      std::mt19937 rng(p);
      for (int i = 0; i < kPerProducer; ++i) {
        auto item = std::make_shared<TestItem>(1 + rng() % 8);
        all[p * kPerProducer + i] = item;
        ASSERT_TRUE(b.Enqueue(rng() % 2 ? "a" : "b", item).ok());
      }
    });
  }
  for (auto& t : producers) t.join();
  b.Close();
  for (auto& t : consumers) t.join();
  int64_t total_rows = 0;
  for (const auto& item : all) {
    total_rows += item->rows();
    EXPECT_EQ(item->aborts(), 0);
  }
  EXPECT_EQ(batched_items.load(), kProducers * kPerProducer);
  EXPECT_EQ(batched_rows.load(), total_rows);
  EXPECT_LE(max_rows.load(), 16);
}

INSTANTIATE_TEST_SUITE_P(Policies, BatcherRealClockTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "WorkConserving" : "Timed";
                         });

// A lane blocked in Next() gets a lone request at once, not after max_queue_delay.
TEST(BatcherThreadsTest, WaitingLaneTakesALoneRequestAtOnce) {
  auto created = Batcher::Create({.max_batch_rows = 64, .max_queue_delay = absl::Seconds(30)});
  ASSERT_TRUE(created.ok());
  Batcher& b = **created;
  std::optional<Batch> got;
  std::thread lane([&] { got = b.Next(); });
  while (b.waiting_lanes() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const absl::Time start = absl::Now();
  ASSERT_TRUE(b.Enqueue("w", std::make_shared<TestItem>(1)).ok());
  lane.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "waited for the 30 s delay";
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->reason, CloseReason::kIdleLane);
  EXPECT_EQ(b.wakeups(), 1);
}

// While the only lane is busy, requests wake nobody and leave as one batch when it comes back.
TEST(BatcherThreadsTest, BusyLaneFindsTheNextBatchWithoutAWakeup) {
  auto created = Batcher::Create({.max_batch_rows = 64, .max_queue_delay = absl::Seconds(30)});
  ASSERT_TRUE(created.ok());
  Batcher& b = **created;
  ASSERT_TRUE(b.Enqueue("w", std::make_shared<TestItem>(1)).ok());
  std::promise<void> took_first, release;
  std::shared_future<void> released = release.get_future().share();
  std::vector<Batch> batches;
  std::thread lane([&] {
    std::optional<Batch> first = b.Next();
    if (first.has_value()) batches.push_back(*std::move(first));
    took_first.set_value();
    released.wait();  // "running" the first batch
    std::optional<Batch> second = b.Next();
    if (second.has_value()) batches.push_back(*std::move(second));
  });
  took_first.get_future().wait();
  for (int64_t rows : {2, 3, 4, 5}) {
    ASSERT_TRUE(b.Enqueue("w", std::make_shared<TestItem>(rows)).ok());
  }
  EXPECT_EQ(b.wakeups(), 0) << "no lane was waiting";
  release.set_value();
  lane.join();
  ASSERT_THAT(batches, SizeIs(2));
  EXPECT_THAT(RowsOf(batches[0]), ElementsAre(1));
  EXPECT_THAT(RowsOf(batches[1]), ElementsAre(2, 3, 4, 5));
  EXPECT_EQ(batches[1].reason, CloseReason::kIdleLane);
}

}  // namespace
}  // namespace marlin::batcher
