#include "server/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace marlin {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// GET /metrics over a plain socket.
std::string HttpGet(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

TEST(MetricsTest, RecordsAndServesOverHttp) {
  auto m = ServerMetrics::Create();
  ASSERT_TRUE(m.ok());
  ServerMetrics& metrics = **m;
  metrics.RecordRequest("w1", absl::StatusCode::kOk, 3);
  metrics.RecordRequest("w1", absl::StatusCode::kOk, 5);
  metrics.RecordRequest("", absl::StatusCode::kNotFound, 1);
  metrics.RecordBatch("w1", 8, absl::Microseconds(250));
  metrics.RecordBatch("w1", 2, absl::Microseconds(50));
  metrics.RecordQueueTime(absl::Microseconds(100));
  metrics.AddInFlightRows(7);
  metrics.SetWeightBytes("w1", 4096);
  metrics.SetDeviceMemory(1000, 600, 300);
  metrics.RecordUpload(absl::StatusCode::kDataLoss);
  metrics.RecordDroppedAnswers(/*cancelled=*/true, 3);
  metrics.RecordDroppedAnswers(/*cancelled=*/true, 2);
  metrics.RecordDroppedAnswers(/*cancelled=*/false, 1);
  metrics.RecordDroppedAnswers(/*cancelled=*/false, 0);  // nothing dropped: no change

  ServerMetrics::HistogramTotals batch = metrics.Totals("marlin_batch_rows");
  EXPECT_EQ(batch.count, 2u);
  EXPECT_DOUBLE_EQ(batch.sum, 10.0);

  auto port = metrics.Serve("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string body = HttpGet(*port);
  EXPECT_THAT(body, HasSubstr("marlin_requests_total{code=\"OK\",weight=\"w1\"} 2"));
  EXPECT_THAT(body, HasSubstr("marlin_rows_total{code=\"OK\",weight=\"w1\"} 8"));
  EXPECT_THAT(body, HasSubstr("marlin_requests_total{code=\"NOT_FOUND\",weight=\"\"} 1"));
  EXPECT_THAT(body, HasSubstr("marlin_batch_rows_count{weight=\"w1\"} 2"));
  EXPECT_THAT(body, HasSubstr("marlin_in_flight_rows 7"));
  EXPECT_THAT(body, HasSubstr("marlin_weight_bytes{weight=\"w1\"} 4096"));
  EXPECT_THAT(body, HasSubstr("marlin_device_memory_bytes{kind=\"free\"} 600"));
  EXPECT_THAT(body, HasSubstr("marlin_uploads_total{code=\"DATA_LOSS\"} 1"));
  EXPECT_THAT(body, HasSubstr("marlin_stream_answers_dropped_total{reason=\"cancelled\"} 5"));
  EXPECT_THAT(body, HasSubstr("marlin_stream_answers_dropped_total{reason=\"write_failed\"} 1"));

  metrics.RemoveWeight("w1");
  EXPECT_THAT(metrics.Scrape(), Not(HasSubstr("marlin_weight_bytes{weight=\"w1\"}")));
  EXPECT_FALSE(metrics.Serve("127.0.0.1:0").ok()) << "served twice";
}

TEST(MetricsTest, BadListenAddressIsAnError) {
  auto m = ServerMetrics::Create();
  ASSERT_TRUE(m.ok());
  auto port = (*m)->Serve("256.1.1.1:99999");
  EXPECT_FALSE(port.ok());
}

TEST(MetricsTest, StatusCodeNames) {
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kResourceExhausted), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kOk), "OK");
}

}  // namespace
}  // namespace marlin
