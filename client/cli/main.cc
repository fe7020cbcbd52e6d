// marlin-cli: the operator's command line for a marlin-serve server.
//
//   marlin-cli [--server ADDR | --shard-peers A,B,C] [--json] [--token-file F] [--tls-ca F] COMMAND
//     upload --id ID --weights FILE.npy [--layout kn|nk] [--group-size 128|-1] [--replace]
//     upload --id ID --weights FILE.safetensors --tensor NAME [...]
//     upload --id ID --gptq FILE.safetensors --prefix PREFIX
//     matmul --id ID --input X.npy --output Y.npy
//     list | get --id ID | delete --id ID | info | health [--service NAME]
//
// Every failure exits non-zero with one line on stderr naming the cause. Output is for people by
// default and JSON (one document on stdout) with --json. The bearer token comes from --token-file
// or the MARLIN_TOKEN environment variable.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "kernels/format/weight_format.h"
#include "kernels/io/npy.h"
#include "kernels/io/tensor.h"
#include "nlohmann/json.hpp"

namespace {

using nlohmann::json;

struct GlobalFlags {
  std::string server = "localhost:50051";
  std::string shard_peers;  // sharded servers: every shard's address, in shard order
  bool json = false;
  std::string token_file;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_server_name;
  double timeout_s = 30;
  int max_attempts = 5;
};

// One line on stderr, the exit status of a failure.
int Fail(absl::string_view command, const absl::Status& status) {
  std::string message = absl::StrReplaceAll(status.message(), {{"\n", " "}, {"\r", " "}});
  std::fprintf(stderr, "marlin-cli: %s: %s: %s\n", std::string(command).c_str(),
               absl::StatusCodeToString(status.code()).c_str(), message.c_str());
  return 1;
}

std::string TimeText(absl::Time t) {
  if (t == absl::InfinitePast()) return "-";
  return absl::FormatTime(absl::RFC3339_sec, t, absl::UTCTimeZone());
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

json WeightJson(const marlin::WeightInfo& w) {
  return json{{"weight_id", w.weight_id},
              {"k", w.k},
              {"n", w.n},
              {"group_size", w.group_size},
              {"device_bytes", w.device_bytes},
              {"created", TimeText(w.created)},
              {"requests_served", w.requests_served},
              {"rows_served", w.rows_served},
              {"version", w.version}};
}

void PrintWeight(const marlin::WeightInfo& w) {
  std::printf("id:              %s\n", w.weight_id.c_str());
  std::printf("shape (K x N):   %lld x %lld\n", static_cast<long long>(w.k),
              static_cast<long long>(w.n));
  std::printf("group size:      %d\n", w.group_size);
  std::printf("device bytes:    %s\n", HumanBytes(w.device_bytes).c_str());
  std::printf("version:         %llu\n", static_cast<unsigned long long>(w.version));
  std::printf("created:         %s\n", TimeText(w.created).c_str());
  std::printf("requests served: %llu\n", static_cast<unsigned long long>(w.requests_served));
  std::printf("rows served:     %llu\n", static_cast<unsigned long long>(w.rows_served));
}

absl::StatusOr<std::unique_ptr<marlin::Client>> MakeClient(const GlobalFlags& flags) {
  marlin::ClientOptions options;
  options.target = flags.server;
  options.shard_peers = absl::StrSplit(flags.shard_peers, ',', absl::SkipWhitespace());
  if (!(flags.timeout_s > 0)) return absl::InvalidArgumentError("--timeout must be positive");
  options.default_deadline = absl::Seconds(flags.timeout_s);
  options.retry.max_attempts = flags.max_attempts;
  options.user_agent_prefix = "marlin-cli";
  if (!flags.token_file.empty()) {
    std::ifstream in(flags.token_file);
    if (!in) {
      return absl::NotFoundError(absl::StrCat("cannot read --token-file ", flags.token_file));
    }
    std::stringstream ss;
    ss << in.rdbuf();
    options.bearer_token = std::string(absl::StripAsciiWhitespace(ss.str()));
    if (options.bearer_token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token-file ", flags.token_file, " is empty"));
    }
  } else if (const char* env = std::getenv("MARLIN_TOKEN"); env != nullptr && *env != '\0') {
    options.bearer_token = env;
  }
  if (!flags.tls_ca.empty() || !flags.tls_cert.empty() || !flags.tls_key.empty()) {
    absl::StatusOr<marlin::TlsOptions> tls =
        marlin::TlsOptions::FromFiles(flags.tls_ca, flags.tls_cert, flags.tls_key);
    if (!tls.ok()) return tls.status();
    tls->server_name_override = flags.tls_server_name;
    options.tls = *std::move(tls);
  }
  return marlin::Client::Create(options);
}

// A progress bar on stderr, drawn only when stderr is a terminal.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  ~ProgressBar() {
    if (drawn_) std::fprintf(stderr, "\n");
  }
  void Update(uint64_t sent, uint64_t total) {
    if (!enabled_ || total == 0) return;
    int percent = static_cast<int>(100 * sent / total);
    if (percent == last_percent_) return;
    last_percent_ = percent;
    constexpr int kWidth = 40;
    int filled = kWidth * percent / 100;
    std::fprintf(stderr, "\r[%s%s] %3d%% %s / %s", std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), percent, HumanBytes(sent).c_str(),
                 HumanBytes(total).c_str());
    std::fflush(stderr);
    drawn_ = true;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
  int last_percent_ = -1;
};

struct UploadFlags {
  std::string id;
  std::string weights;
  std::string tensor;
  std::string gptq;
  std::string prefix;
  std::string layout = "kn";
  int group_size = 128;
  bool replace = false;
};

int RunUpload(const GlobalFlags& g, const UploadFlags& f) {
  if (f.weights.empty() == f.gptq.empty()) {
    return Fail("upload", absl::InvalidArgumentError("give exactly one of --weights and --gptq"));
  }
  absl::StatusOr<std::unique_ptr<marlin::Client>> client = MakeClient(g);
  if (!client.ok()) return Fail("upload", client.status());
  ProgressBar bar(isatty(STDERR_FILENO) != 0);
  marlin::UploadOptions options;
  options.group_size = f.group_size;
  options.replace = f.replace;
  options.progress = [&bar](uint64_t sent, uint64_t total) { bar.Update(sent, total); };
  marlin::WeightLayout layout =
      f.layout == "nk" ? marlin::WeightLayout::kNK : marlin::WeightLayout::kKN;
  absl::StatusOr<marlin::WeightInfo> info;
  if (!f.gptq.empty()) {
    if (f.prefix.empty()) {
      return Fail("upload", absl::InvalidArgumentError("--gptq needs --prefix"));
    }
    info = (*client)->UploadGptqSafetensors(f.id, f.gptq, f.prefix, options);
  } else if (absl::EndsWith(f.weights, ".safetensors")) {
    if (f.tensor.empty()) {
      return Fail("upload", absl::InvalidArgumentError("a .safetensors file needs --tensor NAME"));
    }
    info = (*client)->UploadSafetensors(f.id, f.weights, f.tensor, layout, options);
  } else if (absl::EndsWith(f.weights, ".npy")) {
    info = (*client)->UploadNpy(f.id, f.weights, layout, options);
  } else {
    return Fail("upload", absl::InvalidArgumentError(absl::StrCat(
                              "--weights ", f.weights, ": want a .npy or .safetensors file")));
  }
  if (!info.ok()) return Fail("upload", info.status());
  if (g.json) {
    std::cout << WeightJson(*info).dump(2) << "\n";
  } else {
    std::printf("uploaded %s: %lld x %lld, group size %d, %s on the device, version %llu\n",
                info->weight_id.c_str(), static_cast<long long>(info->k),
                static_cast<long long>(info->n), info->group_size,
                HumanBytes(info->device_bytes).c_str(),
                static_cast<unsigned long long>(info->version));
  }
  return 0;
}

struct MatmulFlags {
  std::string id;
  std::string input;
  std::string output;
};

int RunMatmul(const GlobalFlags& g, const MatmulFlags& f) {
  absl::StatusOr<marlin::io::Tensor> x = marlin::io::ReadNpy(f.input);
  if (!x.ok()) return Fail("matmul", x.status());
  if (x->shape.size() != 2 && x->shape.size() != 1) {
    return Fail("matmul", absl::InvalidArgumentError(
                              absl::StrCat(f.input, ": want a 2-D [M, K] (or 1-D [K]) array, got ",
                                           x->shape.size(), " dimensions")));
  }
  int64_t rows = x->shape.size() == 2 ? x->shape[0] : 1;
  int64_t k = x->shape.back();
  if (rows <= 0 || k <= 0 || rows > 0xFFFFFFFFll) {
    return Fail("matmul", absl::InvalidArgumentError(absl::StrCat(f.input, ": empty array")));
  }
  std::vector<uint16_t> halfs;
  if (x->dtype == marlin::io::DType::kF16) {
    halfs = x->ToVector<uint16_t>();
  } else if (x->dtype == marlin::io::DType::kF32) {
    std::vector<float> floats = x->ToVector<float>();
    halfs.reserve(floats.size());
    for (float v : floats) halfs.push_back(marlin::FloatToHalf(v));
  } else {
    return Fail("matmul", absl::InvalidArgumentError(absl::StrCat(
                              f.input, ": dtype ", marlin::io::SafetensorsDTypeName(x->dtype),
                              " is not float16 or float32")));
  }
  absl::StatusOr<std::unique_ptr<marlin::Client>> client = MakeClient(g);
  if (!client.ok()) return Fail("matmul", client.status());
  absl::StatusOr<marlin::WeightInfo> weight = (*client)->GetWeight(f.id);
  if (!weight.ok()) return Fail("matmul", weight.status());
  if (weight->k != k) {
    return Fail("matmul", absl::InvalidArgumentError(
                              absl::StrCat(f.input, " has K = ", k, " columns but weight ", f.id,
                                           " is ", weight->k, " x ", weight->n)));
  }
  absl::StatusOr<marlin::MatmulResult> y =
      (*client)->Matmul(f.id, static_cast<uint32_t>(rows), halfs);
  if (!y.ok()) return Fail("matmul", y.status());
  marlin::io::Tensor out = marlin::io::Tensor::FromValues<uint16_t>(
      marlin::io::DType::kF16, {static_cast<int64_t>(y->rows), static_cast<int64_t>(y->n)},
      y->output);
  if (absl::Status s = marlin::io::WriteNpy(f.output, out); !s.ok()) return Fail("matmul", s);
  if (g.json) {
    std::cout << json{{"weight_id", f.id},
                      {"output", f.output},
                      {"rows", y->rows},
                      {"n", y->n},
                      {"timing",
                       {{"queue_us", y->timing.queue_us},
                        {"compute_us", y->timing.compute_us},
                        {"batch_rows", y->timing.batch_rows}}}}
                     .dump(2)
              << "\n";
  } else {
    std::printf("wrote %s: %u x %llu float16 (queue %llu us, compute %llu us, batch of %u rows)\n",
                f.output.c_str(), y->rows, static_cast<unsigned long long>(y->n),
                static_cast<unsigned long long>(y->timing.queue_us),
                static_cast<unsigned long long>(y->timing.compute_us), y->timing.batch_rows);
  }
  return 0;
}

int RunList(const GlobalFlags& g) {
  absl::StatusOr<std::unique_ptr<marlin::Client>> client = MakeClient(g);
  if (!client.ok()) return Fail("list", client.status());
  absl::StatusOr<std::vector<marlin::WeightInfo>> weights = (*client)->ListWeights();
  if (!weights.ok()) return Fail("list", weights.status());
  if (g.json) {
    json j = json::array();
    for (const marlin::WeightInfo& w : *weights) j.push_back(WeightJson(w));
    std::cout << json{{"weights", j}}.dump(2) << "\n";
    return 0;
  }
  if (weights->empty()) {
    std::printf("no weights\n");
    return 0;
  }
  std::printf("%-32s %7s %7s %6s %11s %8s %10s %12s  %s\n", "ID", "K", "N", "GROUP", "DEVICE",
              "VERSION", "REQUESTS", "ROWS", "CREATED");
  for (const marlin::WeightInfo& w : *weights) {
    std::printf("%-32s %7lld %7lld %6d %11s %8llu %10llu %12llu  %s\n", w.weight_id.c_str(),
                static_cast<long long>(w.k), static_cast<long long>(w.n), w.group_size,
                HumanBytes(w.device_bytes).c_str(), static_cast<unsigned long long>(w.version),
                static_cast<unsigned long long>(w.requests_served),
                static_cast<unsigned long long>(w.rows_served), TimeText(w.created).c_str());
  }
  return 0;
}

int RunGet(const GlobalFlags& g, const std::string& id) {
  absl::StatusOr<std::unique_ptr<marlin::Client>> client = MakeClient(g);
  if (!client.ok()) return Fail("get", client.status());
  absl::StatusOr<marlin::WeightInfo> w = (*client)->GetWeight(id);
  if (!w.ok()) return Fail("get", w.status());
  if (g.json) {
    std::cout << WeightJson(*w).dump(2) << "\n";
  } else {
    PrintWeight(*w);
  }
  return 0;
}

int RunDelete(const GlobalFlags& g, const std::string& id) {
  absl::StatusOr<std::unique_ptr<marlin::Client>> client = MakeClient(g);
  if (!client.ok()) return Fail("delete", client.status());
  if (absl::Status s = (*client)->DeleteWeight(id); !s.ok()) return Fail("delete", s);
  if (g.json) {
    std::cout << json{{"deleted", id}}.dump(2) << "\n";
  } else {
    std::printf("deleted %s\n", id.c_str());
  }
  return 0;
}

int RunInfo(const GlobalFlags& g) {
  absl::StatusOr<std::unique_ptr<marlin::Client>> client = MakeClient(g);
  if (!client.ok()) return Fail("info", client.status());
  absl::StatusOr<marlin::ServerInfo> info = (*client)->GetServerInfo();
  if (!info.ok()) return Fail("info", info.status());
  if (g.json) {
    std::cout << json{{"version", info->version},
                      {"backend", info->backend},
                      {"device_name", info->device_name},
                      {"device_memory_total", info->device_memory_total},
                      {"device_memory_free", info->device_memory_free},
                      {"limits",
                       {{"max_rows_per_request", info->limits.max_rows_per_request},
                        {"max_weight_bytes", info->limits.max_weight_bytes},
                        {"max_weights", info->limits.max_weights},
                        {"max_receive_message_bytes", info->limits.max_receive_message_bytes},
                        {"max_in_flight_per_stream", info->limits.max_in_flight_per_stream}}},
                      {"batching",
                       {{"max_batch_rows", info->max_batch_rows},
                        {"max_queue_delay_us", info->max_queue_delay_us},
                        {"max_queue_rows", info->max_queue_rows}}}}
                     .dump(2)
              << "\n";
    return 0;
  }
  std::printf("server:            %s\n", g.server.c_str());
  std::printf("version:           %s\n", info->version.c_str());
  std::printf("backend:           %s\n", info->backend.c_str());
  std::printf("device:            %s\n", info->device_name.c_str());
  std::printf("device memory:     %s free of %s\n", HumanBytes(info->device_memory_free).c_str(),
              HumanBytes(info->device_memory_total).c_str());
  std::printf("max rows/request:  %u\n", info->limits.max_rows_per_request);
  std::printf("max weight bytes:  %s\n", HumanBytes(info->limits.max_weight_bytes).c_str());
  std::printf("max weights:       %u\n", info->limits.max_weights);
  std::printf("max message bytes: %s\n",
              HumanBytes(info->limits.max_receive_message_bytes).c_str());
  std::printf("max in flight/stream: %u\n", info->limits.max_in_flight_per_stream);
  std::printf("batching:          up to %u rows, %llu us queue delay, %llu queued rows\n",
              info->max_batch_rows, static_cast<unsigned long long>(info->max_queue_delay_us),
              static_cast<unsigned long long>(info->max_queue_rows));
  return 0;
}

int RunHealth(const GlobalFlags& g, const std::string& service) {
  absl::StatusOr<std::unique_ptr<marlin::Client>> client = MakeClient(g);
  if (!client.ok()) return Fail("health", client.status());
  absl::StatusOr<marlin::HealthStatus> status = (*client)->Health(service);
  if (!status.ok()) return Fail("health", status.status());
  std::string name(marlin::HealthStatusName(*status));
  if (g.json) {
    std::cout << json{{"service", service}, {"status", name}}.dump(2) << "\n";
  } else {
    std::printf("%s\n", name.c_str());
  }
  if (*status != marlin::HealthStatus::kServing) {
    std::fprintf(stderr, "marlin-cli: health: server %s is %s\n",
                 (g.shard_peers.empty() ? g.server : g.shard_peers).c_str(), name.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"marlin-cli: manage weights on a marlin-serve server and run products",
               "marlin-cli"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags may also follow the command
  GlobalFlags g;
  if (const char* env = std::getenv("MARLIN_SERVER"); env != nullptr && *env != '\0') {
    g.server = env;
  }
  app.add_option("--server", g.server, "host:port, dns:///name:port or a,b,... ($MARLIN_SERVER)")
      ->capture_default_str();
  if (const char* env = std::getenv("MARLIN_SHARD_PEERS"); env != nullptr) g.shard_peers = env;
  app.add_option("--shard-peers", g.shard_peers,
                 "sharded servers: every shard's host:port in shard order, a,b,c; each weight id "
                 "goes to its owner and --server is not used ($MARLIN_SHARD_PEERS)");
  app.add_flag("--json", g.json, "JSON output on stdout");
  app.add_option("--token-file", g.token_file, "file holding a bearer token (or $MARLIN_TOKEN)");
  app.add_option("--tls-ca", g.tls_ca, "PEM root CA: connect with TLS");
  app.add_option("--tls-cert", g.tls_cert, "PEM client certificate (mutual TLS)");
  app.add_option("--tls-key", g.tls_key, "PEM client key (mutual TLS)");
  app.add_option("--tls-server-name", g.tls_server_name, "expected name in the server's cert");
  app.add_option("--timeout", g.timeout_s, "deadline of each call, seconds")->capture_default_str();
  app.add_option("--max-attempts", g.max_attempts,
                 "tries of idempotent calls on UNAVAILABLE (1 = no retry, at most 5)")
      ->check(CLI::Range(1, 5))
      ->capture_default_str();

  UploadFlags upload;
  CLI::App* up = app.add_subcommand("upload", "upload a weight from .npy, .safetensors or GPTQ");
  up->add_option("--id", upload.id, "weight id")->required();
  up->add_option("--weights", upload.weights, "FILE.npy or FILE.safetensors (FP16/FP32)");
  up->add_option("--tensor", upload.tensor, "tensor name in a .safetensors file");
  up->add_option("--layout", upload.layout, "kn (K x N) or nk (N x K, nn.Linear.weight)")
      ->check(CLI::IsMember({"kn", "nk"}))
      ->capture_default_str();
  up->add_option("--group-size", upload.group_size, "128, or -1 for one scale per column")
      ->check(CLI::IsMember({128, -1}))
      ->capture_default_str();
  up->add_option("--gptq", upload.gptq, "GPTQ checkpoint FILE.safetensors");
  up->add_option("--prefix", upload.prefix, "GPTQ tensor prefix (PREFIX.qweight, ...)");
  up->add_flag("--replace", upload.replace, "replace an existing weight of that id");

  MatmulFlags matmul;
  CLI::App* mm = app.add_subcommand("matmul", "y = x . W for x from .npy; y written as .npy");
  mm->add_option("--id", matmul.id, "weight id")->required();
  mm->add_option("--input", matmul.input, "X.npy: [M, K] float16 or float32")->required();
  mm->add_option("--output", matmul.output, "Y.npy: [M, N] float16")->required();

  CLI::App* list = app.add_subcommand("list", "list the weights");
  std::string get_id, delete_id, service;
  CLI::App* get = app.add_subcommand("get", "show one weight");
  get->add_option("--id", get_id, "weight id")->required();
  CLI::App* del = app.add_subcommand("delete", "delete a weight");
  del->add_option("--id", delete_id, "weight id")->required();
  CLI::App* info = app.add_subcommand("info", "show the server's settings and device");
  CLI::App* health = app.add_subcommand("health", "grpc.health.v1 check (exit 0 when SERVING)");
  health->add_option("--service", service, "service name; empty: the whole server");

  // An unknown command word is named (CLI11 would only say that a command is missing).
  const std::vector<std::string> kValued = {"--server",          "--shard-peers", "--token-file",
                                            "--tls-ca",          "--tls-cert",    "--tls-key",
                                            "--tls-server-name", "--timeout",     "--max-attempts"};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (absl::StartsWith(arg, "-")) {
      if (std::find(kValued.begin(), kValued.end(), arg) != kValued.end()) ++i;
      continue;
    }
    const std::vector<std::string> kCommands = {"upload", "matmul", "list",  "get",
                                                "delete", "info",   "health"};
    if (std::find(kCommands.begin(), kCommands.end(), arg) == kCommands.end()) {
      std::fprintf(stderr, "marlin-cli: unknown command '%s' (see --help)\n", arg.c_str());
      return 2;
    }
    break;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string message = absl::StrReplaceAll(e.what(), {{"\n", " "}});
    std::fprintf(stderr, "marlin-cli: %s (see --help)\n", message.c_str());
    return 2;
  }

  if (up->parsed()) return RunUpload(g, upload);
  if (mm->parsed()) return RunMatmul(g, matmul);
  if (list->parsed()) return RunList(g);
  if (get->parsed()) return RunGet(g, get_id);
  if (del->parsed()) return RunDelete(g, delete_id);
  if (info->parsed()) return RunInfo(g);
  if (health->parsed()) return RunHealth(g, service);
  std::fprintf(stderr, "marlin-cli: no command (see --help)\n");
  return 2;
}
