// Helpers of the client integration tests: free loopback ports, child processes (the real
// marlin-server, marlin-cli, marlin-loadgen), and temporary directories.
//
//   ASSIGN_OR_RETURN(auto server, marlin::testing::ServerProcess::Start({"--backend", "cpu"}));
//   marlin::ClientOptions options;
//   options.target = server->address();
#ifndef MARLIN_TESTS_CLIENT_TEST_UTIL_H_
#define MARLIN_TESTS_CLIENT_TEST_UTIL_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace marlin::testing {

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort();

// A fresh directory under $TMPDIR (or /tmp), removed with its contents by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;  // 128 + signal when killed by one
  std::string out;
  std::string err;
};

// Runs argv to completion (stdin from /dev/null), capturing stdout and stderr; `env` entries
// ("NAME=value") are added to the environment.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::vector<std::string>& env = {},
                         absl::Duration timeout = absl::Seconds(60));

// A marlin-server child on 127.0.0.1 ports of its own (--backend cpu unless extra_args says).
class ServerProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      std::vector<std::string> extra_args = {});
  ~ServerProcess();

  std::string address() const;          // 127.0.0.1:PORT
  std::string metrics_address() const;  // 127.0.0.1:METRICS_PORT
  int port() const { return port_; }

  // Ends it: SIGKILL (a crash, and quick), or with `graceful` SIGTERM and a wait of up to 5 s
  // before SIGKILL.
  void Stop(bool graceful = false);
  // Starts it again on the same ports; does not wait for it to serve unless `wait`.
  absl::Status Restart(bool wait = true);
  absl::Status WaitServing(absl::Duration timeout);
  // The server's stderr so far (for failure messages).
  std::string Log() const;

 private:
  ServerProcess(std::vector<std::string> extra_args, int port, int metrics_port);
  absl::Status Spawn();

  std::vector<std::string> extra_args_;
  int port_;
  int metrics_port_;
  pid_t pid_ = -1;
  TempDir dir_;
};

}  // namespace marlin::testing

#endif  // MARLIN_TESTS_CLIENT_TEST_UTIL_H_
