// A grpc.health.v1.Health/Check probe for tests that talk to a real server: it goes through the
// generic stub (no generated health code is needed) and returns the serving status as a number.
//
//   EXPECT_EQ(marlin::test_support::HealthStatus(channel), 1);                 // SERVING
//   EXPECT_EQ(marlin::test_support::HealthStatus(channel, "marlin.v1.MatmulService"), 2);
#ifndef MARLIN_TESTS_TESTING_HEALTH_PROBE_H_
#define MARLIN_TESTS_TESTING_HEALTH_PROBE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

namespace marlin::test_support {

// The ServingStatus of `service` ("" asks for the server as a whole): 0 UNKNOWN, 1 SERVING,
// 2 NOT_SERVING, or -code when the call itself fails (5 s deadline).
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service = "");

}  // namespace marlin::test_support

#endif  // MARLIN_TESTS_TESTING_HEALTH_PROBE_H_
