#include "tests/client/test_util.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "client/client.h"

#ifndef MARLIN_SERVER_PATH
#define MARLIN_SERVER_PATH "marlin-server"
#endif

namespace marlin::testing {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// fork + exec with stdout/stderr to files; returns the child's pid.
pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
            const std::string& out_path, const std::string& err_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // Everything the child needs is built before fork (only async-signal-safe calls after it).
  std::vector<char*> envp;
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));  // win
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  envp.push_back(nullptr);
  pid_t pid = fork();
  if (pid != 0) return pid;
  // Child.
  int in = open("/dev/null", O_RDONLY);
  int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  if (in < 0 || out < 0 || err < 0) _exit(126);
  dup2(in, 0);
  dup2(out, 1);
  dup2(err, 2);
  execve(args[0], args.data(), envp.data());
  _exit(127);
}

int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/marlin-client-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  char* made = mkdtemp(buf.data());
  path_ = made != nullptr ? made : "/tmp";
}

TempDir::~TempDir() {
  std::error_code ec;
  if (path_ != "/tmp") std::filesystem::remove_all(path_, ec);
}

CommandResult RunCommand(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                         absl::Duration timeout) {
  TempDir dir;
  CommandResult result;
  pid_t pid = Spawn(argv, env, dir.File("out"), dir.File("err"));
  absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (true) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  result.exit_code = ExitCode(status);
  result.out = ReadAll(dir.File("out"));
  result.err = ReadAll(dir.File("err"));
  return result;
}

ServerProcess::ServerProcess(std::vector<std::string> extra_args, int port, int metrics_port)
    : extra_args_(std::move(extra_args)), port_(port), metrics_port_(metrics_port) {}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    std::vector<std::string> extra_args) {
  // Another test may grab a port between FreePort() and the server's bind: try a few times.
  absl::Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    int port = FreePort();
    int metrics_port = FreePort();
    while (metrics_port == port) metrics_port = FreePort();
    if (port <= 0 || metrics_port <= 0) return absl::InternalError("no free port");
    std::unique_ptr<ServerProcess> server(new ServerProcess(extra_args, port, metrics_port));
    last = server->Restart(/*wait=*/true);
    if (last.ok()) return server;
  }
  return last;
}

ServerProcess::~ServerProcess() { Stop(); }

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }
std::string ServerProcess::metrics_address() const {
  return absl::StrCat("127.0.0.1:", metrics_port_);
}

absl::Status ServerProcess::Spawn() {
  std::vector<std::string> argv = {MARLIN_SERVER_PATH, "--listen", address(), "--metrics-listen",
                                   metrics_address()};
  bool has_backend = false;
  for (const std::string& a : extra_args_) has_backend |= a.rfind("--backend", 0) == 0;
  if (!has_backend) {
    argv.push_back("--backend");
    argv.push_back("cpu");
  }
  argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
  pid_ = marlin::testing::Spawn(argv, {}, dir_.File("server.out"), dir_.File("server.err"));
  if (pid_ < 0) return absl::InternalError("fork failed");
  return absl::OkStatus();
}

void ServerProcess::Stop(bool graceful) {
  if (pid_ <= 0) return;
  kill(pid_, graceful ? SIGTERM : SIGKILL);
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  int status = 0;
  while (waitpid(pid_, &status, WNOHANG) == 0) {
    if (absl::Now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  pid_ = -1;
}

absl::Status ServerProcess::Restart(bool wait) {
  Stop();
  if (absl::Status s = Spawn(); !s.ok()) return s;
  return wait ? WaitServing(absl::Seconds(20)) : absl::OkStatus();
}

absl::Status ServerProcess::WaitServing(absl::Duration timeout) {
  ClientOptions options;
  options.target = address();
  options.retry.max_attempts = 1;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  if (!client.ok()) return client.status();
  absl::Time deadline = absl::Now() + timeout;
  absl::Status last;
  while (absl::Now() < deadline) {
    int status = 0;
    if (pid_ > 0 && waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("marlin-server exited with ", ExitCode(status), ": ", Log()));
    }
    CallOptions call;
    call.timeout = absl::Milliseconds(500);
    call.wait_for_ready = true;
    absl::StatusOr<ServerInfo> info = (*client)->GetServerInfo(call);
    if (info.ok()) return absl::OkStatus();
    last = info.status();
  }
  return absl::DeadlineExceededError(
      absl::StrCat("marlin-server did not serve in time (", last.ToString(), "): ", Log()));
}

std::string ServerProcess::Log() const { return ReadAll(dir_.File("server.err")); }

}  // namespace marlin::testing
