#include "server/metrics/metrics.h"

#include <exception>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "prometheus/text_serializer.h"

namespace marlin {
namespace {

using prometheus::Histogram;

Histogram::BucketBoundaries BatchRowBuckets() {
  return {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024};
}

Histogram::BucketBoundaries SecondsBuckets() {
  // 10 us to ~10 s, x2.5 per step.
  Histogram::BucketBoundaries b;
  for (double v = 1e-5; v < 12; v *= 2.5) b.push_back(v);
  return b;
}

}  // namespace

std::string StatusCodeName(absl::StatusCode code) {
  // absl::StatusCodeToString spells them like gRPC, with underscores, in upper case.
  return absl::AsciiStrToUpper(absl::StatusCodeToString(code));
}

ServerMetrics::ServerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  requests_ = &prometheus::BuildCounter()
                   .Name("marlin_requests_total")
                   .Help("Matmul requests answered, by weight id and gRPC status code")
                   .Register(*registry_);
  rows_ = &prometheus::BuildCounter()
               .Name("marlin_rows_total")
               .Help("Rows of the matmul requests answered, by weight id and gRPC status code")
               .Register(*registry_);
  batch_rows_ = &prometheus::BuildHistogram()
                     .Name("marlin_batch_rows")
                     .Help("Rows per batch run on the backend")
                     .Register(*registry_);
  queue_seconds_ = &prometheus::BuildHistogram()
                        .Name("marlin_queue_seconds")
                        .Help("Per request: time from arrival to the start of its batch")
                        .Register(*registry_);
  compute_seconds_ = &prometheus::BuildHistogram()
                          .Name("marlin_compute_seconds")
                          .Help("Per batch: gather, copy-in, kernel, copy-out and scatter")
                          .Register(*registry_);
  uploads_ = &prometheus::BuildCounter()
                  .Name("marlin_uploads_total")
                  .Help("UploadWeight calls, by gRPC status code")
                  .Register(*registry_);
  dropped_answers_ = &prometheus::BuildCounter()
                          .Name("marlin_stream_answers_dropped_total")
                          .Help(
                              "Answers computed for a MatmulStream that could not be written: "
                              "cancelled (the client went) or write_failed")
                          .Register(*registry_);
  in_flight_rows_ = &prometheus::BuildGauge()
                         .Name("marlin_in_flight_rows")
                         .Help("Rows accepted and not yet answered")
                         .Register(*registry_)
                         .Add({});
  queued_rows_ = &prometheus::BuildGauge()
                      .Name("marlin_queued_rows")
                      .Help("Rows waiting in the batch queues")
                      .Register(*registry_)
                      .Add({});
  weight_bytes_ = &prometheus::BuildGauge()
                       .Name("marlin_weight_bytes")
                       .Help("Device bytes held by each weight")
                       .Register(*registry_);
  device_memory_ = &prometheus::BuildGauge()
                        .Name("marlin_device_memory_bytes")
                        .Help("Device memory: total, free, and accounted to weights")
                        .Register(*registry_);
  queue_histogram_ = &queue_seconds_->Add({}, SecondsBuckets());
}

ServerMetrics::~ServerMetrics() = default;

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Create() {
  return std::unique_ptr<ServerMetrics>(new ServerMetrics());
}

absl::StatusOr<int> ServerMetrics::Serve(const std::string& listen) {
  if (exposer_ != nullptr) return absl::FailedPreconditionError("metrics already served");
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/2);
    exposer->RegisterCollectable(registry_);
    const std::vector<int> ports = exposer->GetListeningPorts();
    if (ports.empty()) return absl::UnavailableError("metrics exposer bound no port");
    exposer_ = std::move(exposer);
    return ports.front();
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on '", listen, "': ", e.what()));
  }
}

void ServerMetrics::RecordRequest(absl::string_view weight, absl::StatusCode code, int64_t rows) {
  const std::map<std::string, std::string> labels = {{"weight", std::string(weight)},
                                                     {"code", StatusCodeName(code)}};
  requests_->Add(labels).Increment();
  if (rows > 0) rows_->Add(labels).Increment(static_cast<double>(rows));
}

void ServerMetrics::RecordQueueTime(absl::Duration queued) {
  queue_histogram_->Observe(absl::ToDoubleSeconds(queued));
}

void ServerMetrics::RecordBatch(absl::string_view weight, int64_t rows, absl::Duration compute) {
  const std::map<std::string, std::string> labels = {{"weight", std::string(weight)}};
  batch_rows_->Add(labels, BatchRowBuckets()).Observe(static_cast<double>(rows));
  compute_seconds_->Add(labels, SecondsBuckets()).Observe(absl::ToDoubleSeconds(compute));
}

void ServerMetrics::SetWeightBytes(absl::string_view weight, uint64_t bytes) {
  weight_bytes_->Add({{"weight", std::string(weight)}}).Set(static_cast<double>(bytes));
}

void ServerMetrics::RemoveWeight(absl::string_view weight) {
  auto& gauge = weight_bytes_->Add({{"weight", std::string(weight)}});
  weight_bytes_->Remove(&gauge);
}

void ServerMetrics::SetDeviceMemory(uint64_t total, uint64_t free, uint64_t weights) {
  device_memory_->Add({{"kind", "total"}}).Set(static_cast<double>(total));
  device_memory_->Add({{"kind", "free"}}).Set(static_cast<double>(free));
  device_memory_->Add({{"kind", "weights"}}).Set(static_cast<double>(weights));
}

void ServerMetrics::RecordUpload(absl::StatusCode code) {
  uploads_->Add({{"code", StatusCodeName(code)}}).Increment();
}

void ServerMetrics::RecordDroppedAnswers(bool cancelled, int64_t answers) {
  if (answers <= 0) return;
  dropped_answers_->Add({{"reason", cancelled ? "cancelled" : "write_failed"}})
      .Increment(static_cast<double>(answers));
}

ServerMetrics::HistogramTotals ServerMetrics::Totals(absl::string_view family) const {
  HistogramTotals totals;
  for (const prometheus::MetricFamily& f : registry_->Collect()) {
    if (f.name != family) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      totals.sum += m.histogram.sample_sum;
      totals.count += m.histogram.sample_count;
    }
  }
  return totals;
}

std::string ServerMetrics::Scrape() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace marlin
