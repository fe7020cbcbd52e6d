// Prometheus metrics of marlin-server, served over HTTP by prometheus-cpp (--metrics-listen).
//
//   marlin_requests_total{weight,code}     matmul requests answered, by gRPC status code name
//   marlin_rows_total{weight,code}         rows of those requests
//   marlin_batch_rows{weight}              histogram: rows per batch run on the backend
//   marlin_queue_seconds                   histogram: per request, arrival to start of its batch
//   marlin_compute_seconds{weight}         histogram: per batch, gather + copy-in + kernel + out
//   marlin_in_flight_rows                  rows accepted and not yet answered
//   marlin_queued_rows                     rows waiting in the batch queues
//   marlin_weight_bytes{weight}            device bytes of each weight
//   marlin_device_memory_bytes{kind}       total | free | weights (accounted by the store)
//   marlin_uploads_total{code}             UploadWeight calls by status code
//   marlin_stream_answers_dropped_total{reason}
//                                          answers computed for a MatmulStream that could not be
//                                          written: cancelled (the client went) | write_failed
//
// Requests naming an unknown weight are counted under weight="" so that bad ids cannot grow the
// label set without bound.
//
//   ASSIGN_OR_RETURN(auto metrics, ServerMetrics::Create());
//   ASSIGN_OR_RETURN(int port, metrics->Serve("127.0.0.1:9090"));
//   metrics->RecordRequest("w1", absl::StatusCode::kOk, 4);
#ifndef MARLIN_SERVER_METRICS_METRICS_H_
#define MARLIN_SERVER_METRICS_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace marlin {

class ServerMetrics {
 public:
  static absl::StatusOr<std::unique_ptr<ServerMetrics>> Create();
  ~ServerMetrics();

  // Serves /metrics on `listen` (host:port; port 0 picks one). Returns the bound port.
  absl::StatusOr<int> Serve(const std::string& listen);

  void RecordRequest(absl::string_view weight, absl::StatusCode code, int64_t rows);
  void RecordQueueTime(absl::Duration queued);
  void RecordBatch(absl::string_view weight, int64_t rows, absl::Duration compute);
  void AddInFlightRows(int64_t delta) { in_flight_rows_->Increment(static_cast<double>(delta)); }
  void SetQueuedRows(int64_t rows) { queued_rows_->Set(static_cast<double>(rows)); }
  void SetWeightBytes(absl::string_view weight, uint64_t bytes);
  void RemoveWeight(absl::string_view weight);
  void SetDeviceMemory(uint64_t total, uint64_t free, uint64_t weights);
  void RecordUpload(absl::StatusCode code);
  // `answers` answers of a stream dropped because it was cancelled, else because a write failed.
  void RecordDroppedAnswers(bool cancelled, int64_t answers);

  // Sum and count of a histogram family over all its label sets (tests, ServerInfo).
  struct HistogramTotals {
    double sum = 0;
    uint64_t count = 0;
  };
  HistogramTotals Totals(absl::string_view family) const;
  // The text exposition format, as /metrics serves it.
  std::string Scrape() const;
  prometheus::Registry& registry() { return *registry_; }

 private:
  ServerMetrics();

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* rows_;
  prometheus::Family<prometheus::Histogram>* batch_rows_;
  prometheus::Family<prometheus::Histogram>* queue_seconds_;
  prometheus::Family<prometheus::Histogram>* compute_seconds_;
  prometheus::Family<prometheus::Counter>* uploads_;
  prometheus::Family<prometheus::Counter>* dropped_answers_;
  prometheus::Gauge* in_flight_rows_;
  prometheus::Gauge* queued_rows_;
  prometheus::Family<prometheus::Gauge>* weight_bytes_;
  prometheus::Family<prometheus::Gauge>* device_memory_;
  prometheus::Histogram* queue_histogram_;  // the single unlabeled member of queue_seconds_
};

// The canonical name of a status code ("OK", "NOT_FOUND", ...), as gRPC spells it.
std::string StatusCodeName(absl::StatusCode code);

}  // namespace marlin

#endif  // MARLIN_SERVER_METRICS_METRICS_H_
