#include "client/client.h"

#include <grpcpp/grpcpp.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/client_internal.h"
#include "client/matmul_stream.h"

namespace marlin {
namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", what, " file ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string DurationJson(absl::Duration d) {
  return absl::StrFormat("%.3fs", absl::ToDoubleSeconds(std::max(d, absl::Milliseconds(1))));
}

bool IsIpv4(absl::string_view host) {
  std::vector<absl::string_view> parts = absl::StrSplit(host, '.');
  if (parts.size() != 4) return false;
  for (absl::string_view p : parts) {
    int v = 0;
    if (p.empty() || p.size() > 3 || !absl::SimpleAtoi(p, &v) || v < 0 || v > 255) return false;
  }
  return true;
}

v1::DenseLayout ToProto(WeightLayout layout) {
  return layout == WeightLayout::kNK ? v1::DENSE_LAYOUT_NK : v1::DENSE_LAYOUT_KN;
}

v1::WeightSource ToProto(WeightSourceKind kind) {
  switch (kind) {
    case WeightSourceKind::kDenseFp16:
      return v1::WEIGHT_SOURCE_DENSE_FP16;
    case WeightSourceKind::kDenseFp32:
      return v1::WEIGHT_SOURCE_DENSE_FP32;
    case WeightSourceKind::kGptq:
      return v1::WEIGHT_SOURCE_GPTQ;
    case WeightSourceKind::kPacked:
      return v1::WEIGHT_SOURCE_PACKED;
  }
  return v1::WEIGHT_SOURCE_UNSPECIFIED;
}

WeightInfo FromProto(const v1::WeightInfo& w) {
  WeightInfo info;
  info.weight_id = w.weight_id();
  info.k = w.k();
  info.n = w.n();
  info.group_size = w.group_size();
  info.device_bytes = w.device_bytes();
  if (w.has_created()) {
    info.created =
        absl::FromUnixSeconds(w.created().seconds()) + absl::Nanoseconds(w.created().nanos());
  }
  info.requests_served = w.requests_served();
  info.rows_served = w.rows_served();
  info.version = w.version();
  return info;
}

template <typename T>
absl::Span<const uint8_t> AsBytes(absl::Span<const T> values) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(values.data()),
                                   values.size() * sizeof(T));
}

// A dense upload of `count` values that must make a k x n weight.
absl::StatusOr<UploadSource> DenseSource(absl::string_view weight_id, int64_t k, int64_t n,
                                         WeightSourceKind kind, uint64_t count,
                                         absl::Span<const uint8_t> bytes, WeightLayout layout) {
  if (k <= 0 || n <= 0 || count != static_cast<uint64_t>(k) * static_cast<uint64_t>(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload ", weight_id, ": ", count, " values for a ", k, " x ", n, " weight"));
  }
  UploadSource source;
  source.kind = kind;
  source.k = k;
  source.n = n;
  source.layout = layout;
  source.pieces.push_back(bytes);
  return source;
}

absl::Status CheckRows(uint32_t rows, absl::Span<const uint16_t> activations) {
  if (rows == 0) return absl::InvalidArgumentError("matmul: rows must be > 0");
  if (activations.empty() || activations.size() % rows != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "matmul: ", activations.size(), " activation values are not ", rows, " rows of K values"));
  }
  return absl::OkStatus();
}

v1::MatmulRequest MakeRequest(absl::string_view weight_id, uint32_t rows,
                              absl::Span<const uint16_t> activations) {
  v1::MatmulRequest req;
  req.set_weight_id(std::string(weight_id));
  req.set_rows(rows);
  req.set_activations(reinterpret_cast<const char*>(activations.data()),
                      activations.size() * sizeof(uint16_t));
  return req;
}

}  // namespace

// ---- CancellationToken
// ---------------------------------------------------------------------------

void CancellationToken::Cancel() {
  std::unique_lock<std::mutex> lock(mu_);
  // One thread runs the cancel_fns: running_ tracks a single call, and once cancelled_ is set
  // Register runs cancel_fn itself instead of adding to active_.
  if (cancelled_) return;
  cancelled_ = true;
  while (!active_.empty()) {
    auto [handle, fn] = std::move(active_.back());
    active_.pop_back();
    running_ = handle;
    running_thread_ = std::this_thread::get_id();
    lock.unlock();
    fn();
    lock.lock();
    running_ = 0;
    idle_.notify_all();
  }
}

bool CancellationToken::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

uint64_t CancellationToken::Register(std::function<void()> cancel_fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!cancelled_) {
      uint64_t handle = next_++;
      active_.emplace_back(handle, std::move(cancel_fn));
      return handle;
    }
  }
  cancel_fn();
  return 0;
}

void CancellationToken::Unregister(uint64_t handle) {
  if (handle == 0) return;
  std::unique_lock<std::mutex> lock(mu_);
  auto it = std::find_if(active_.begin(), active_.end(),
                         [handle](const auto& entry) { return entry.first == handle; });
  if (it != active_.end()) active_.erase(it);
  // The call completing from inside its own cancel_fn (same thread) must not wait for itself.
  idle_.wait(lock, [this, handle]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return running_ != handle || running_thread_ == std::this_thread::get_id();
  });
}

CancelRegistration::CancelRegistration(std::shared_ptr<CancellationToken> token,
                                       grpc::ClientContext* ctx)
    : token_(std::move(token)) {
  if (token_ != nullptr) handle_ = token_->Register([ctx] { ctx->TryCancel(); });
}

CancelRegistration::~CancelRegistration() {
  if (token_ != nullptr) token_->Unregister(handle_);
}

// ---- Helpers
// -------------------------------------------------------------------------------------

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

MatmulResult FromProto(v1::MatmulResponse& response) {
  MatmulResult result;
  result.rows = response.rows();
  result.n = response.n();
  const std::string& out = response.output();
  result.output.resize(out.size() / sizeof(uint16_t));
  if (!out.empty()) std::memcpy(result.output.data(), out.data(), result.output.size() * 2);
  result.timing.queue_us = response.timing().queue_us();
  result.timing.compute_us = response.timing().compute_us();
  result.timing.batch_rows = response.timing().batch_rows();
  return result;
}

absl::string_view HealthStatusName(HealthStatus status) {
  switch (status) {
    case HealthStatus::kServing:
      return "SERVING";
    case HealthStatus::kNotServing:
      return "NOT_SERVING";
    case HealthStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case HealthStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

absl::StatusOr<TlsOptions> TlsOptions::FromFiles(const std::string& root_ca_path,
                                                 const std::string& client_cert_path,
                                                 const std::string& client_key_path) {
  TlsOptions tls;
  if (client_cert_path.empty() != client_key_path.empty()) {
    return absl::InvalidArgumentError("TLS: give both a client certificate and its key, or none");
  }
  if (!root_ca_path.empty()) {
    absl::StatusOr<std::string> ca = ReadWholeFile(root_ca_path, "TLS root CA");
    if (!ca.ok()) return ca.status();
    tls.root_ca_pem = *std::move(ca);
  }
  if (!client_cert_path.empty()) {
    absl::StatusOr<std::string> cert = ReadWholeFile(client_cert_path, "TLS client certificate");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadWholeFile(client_key_path, "TLS client key");
    if (!key.ok()) return key.status();
    tls.client_cert_pem = *std::move(cert);
    tls.client_key_pem = *std::move(key);
  }
  return tls;
}

absl::StatusOr<std::string> ResolveChannelTarget(absl::string_view target, bool* multi_address) {
  *multi_address = false;
  target = absl::StripAsciiWhitespace(target);
  if (target.empty()) return absl::InvalidArgumentError("empty server target");
  if (!absl::StrContains(target, ',')) return std::string(target);
  // A URI with a scheme ("ipv4:a,b") is the user's own gRPC target.
  if (absl::StartsWith(target, "ipv4:") || absl::StartsWith(target, "ipv6:") ||
      absl::StrContains(target, "://")) {
    *multi_address = true;
    return std::string(target);
  }
  std::vector<std::string> v4;
  std::vector<std::string> v6;
  for (absl::string_view raw : absl::StrSplit(target, ',', absl::SkipWhitespace())) {
    absl::string_view addr = absl::StripAsciiWhitespace(raw);
    size_t colon = addr.rfind(':');
    if (colon == absl::string_view::npos || colon + 1 == addr.size()) {
      return absl::InvalidArgumentError(absl::StrCat("server address '", addr, "' has no port"));
    }
    absl::string_view host = addr.substr(0, colon);
    absl::string_view port = addr.substr(colon + 1);
    int port_num = 0;
    if (!absl::SimpleAtoi(port, &port_num) || port_num <= 0 || port_num > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("server address '", addr, "': bad port"));
    }
    if (host == "localhost") host = "127.0.0.1";
    if (IsIpv4(host)) {
      v4.push_back(absl::StrCat(host, ":", port));
    } else if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      v6.push_back(absl::StrCat(host, ":", port));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("server address '", addr,
                       "': a multi-address target takes IP addresses only (use dns:/// for "
                       "names)"));
    }
  }
  if (!v4.empty() && !v6.empty()) {
    return absl::InvalidArgumentError("a multi-address target cannot mix IPv4 and IPv6");
  }
  *multi_address = true;
  return v4.empty() ? absl::StrCat("ipv6:", absl::StrJoin(v6, ","))
                    : absl::StrCat("ipv4:", absl::StrJoin(v4, ","));
}

std::string BuildServiceConfig(const ClientOptions& options, bool multi_address) {
  std::string lb = options.load_balancing;
  if (lb.empty() && multi_address) lb = "round_robin";
  std::vector<std::string> names;
  for (const char* method : {"GetWeight", "ListWeights", "ServerInfo", "Matmul"}) {
    names.push_back(
        absl::StrFormat(R"({"service":"marlin.v1.MatmulService","method":"%s"})", method));
  }
  names.push_back(R"({"service":"grpc.health.v1.Health","method":"Check"})");
  std::string config = "{";
  if (!lb.empty()) absl::StrAppend(&config, R"("loadBalancingConfig":[{")", lb, R"(":{}}],)");
  int attempts = std::clamp(options.retry.max_attempts, 1, 5);
  absl::StrAppend(&config, R"("methodConfig":[{"name":[)", absl::StrJoin(names, ","), "]");
  if (attempts >= 2) {
    absl::StrAppendFormat(
        &config,
        R"(,"retryPolicy":{"maxAttempts":%d,"initialBackoff":"%s","maxBackoff":"%s",)"
        R"("backoffMultiplier":%.3f,"retryableStatusCodes":["UNAVAILABLE"]})",
        attempts, DurationJson(options.retry.initial_backoff),
        DurationJson(options.retry.max_backoff), std::max(1.0, options.retry.backoff_multiplier));
  }
  absl::StrAppend(&config, "}]}");
  return config;
}

// ---- Client
// --------------------------------------------------------------------------------------

void Client::Impl::PrepareContext(grpc::ClientContext* ctx,
                                  const std::optional<absl::Duration>& timeout,
                                  absl::Duration default_timeout, bool wait_for_ready) const {
  absl::Duration d = timeout.value_or(default_timeout);
  if (d != absl::InfiniteDuration()) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + std::max(d, absl::ZeroDuration())));
  }
  if (wait_for_ready) ctx->set_wait_for_ready(true);
  if (!options.bearer_token.empty()) {
    ctx->AddMetadata("authorization", absl::StrCat("Bearer ", options.bearer_token));
  }
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (!options.shard_peers.empty()) return CreateSharded(options);
  bool multi = false;
  absl::StatusOr<std::string> target = ResolveChannelTarget(options.target, &multi);
  if (!target.ok()) return target.status();
  if (!options.load_balancing.empty() && options.load_balancing != "round_robin" &&
      options.load_balancing != "pick_first") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown load balancing policy '", options.load_balancing, "'"));
  }
  if (options.default_deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("default_deadline must be positive");
  }

  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls.has_value()) {
    if (options.tls->client_cert_pem.empty() != options.tls->client_key_pem.empty()) {
      return absl::InvalidArgumentError("TLS: give both a client certificate and its key");
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls->root_ca_pem;
    ssl.pem_cert_chain = options.tls->client_cert_pem;
    ssl.pem_private_key = options.tls->client_key_pem;
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }

  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(BuildServiceConfig(options, multi));
  args.SetMaxReceiveMessageSize(static_cast<int>(
      std::min<int64_t>(options.max_receive_message_bytes, std::numeric_limits<int>::max())));
  args.SetMaxSendMessageSize(-1);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.retry.max_attempts > 1 ? 1 : 0);
  args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, 64 << 20);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(options.min_reconnect_backoff)));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(options.min_reconnect_backoff)));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(options.max_reconnect_backoff)));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  if (options.tls.has_value() && !options.tls->server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.tls->server_name_override);
  }
  if (!options.user_agent_prefix.empty()) args.SetUserAgentPrefix(options.user_agent_prefix);

  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->channel = grpc::CreateCustomChannel(*target, creds, args);
  if (impl->channel == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a channel to ", *target));
  }
  impl->stub = v1::MatmulService::NewStub(impl->channel);
  impl->health_stub = grpc::health::v1::Health::NewStub(impl->channel);
  return std::unique_ptr<Client>(new Client(options, *std::move(target), std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Client>> Client::CreateSharded(const ClientOptions& options) {
  std::vector<std::string> peers;
  for (const std::string& peer : options.shard_peers) {
    peers.emplace_back(absl::StripAsciiWhitespace(peer));
    if (absl::StrContains(peers.back(), ',')) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard peer '", peers.back(), "' is not one address"));
    }
  }
  absl::StatusOr<sharding::ShardMap> map = sharding::ShardMap::Create(std::move(peers));
  if (!map.ok()) return map.status();
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->shard_map = *std::move(map);
  for (size_t i = 0; i < impl->shard_map.peers().size(); ++i) {
    ClientOptions shard_options = options;
    shard_options.shard_peers.clear();
    shard_options.target = impl->shard_map.peers()[i];
    absl::StatusOr<std::unique_ptr<Client>> shard = Create(shard_options);
    if (!shard.ok()) {
      return absl::Status(
          shard.status().code(),
          absl::StrCat("shard ", i, " (", shard_options.target, "): ", shard.status().message()));
    }
    impl->shards.push_back(*std::move(shard));
  }
  std::string target = absl::StrJoin(impl->shard_map.peers(), ",");
  return std::unique_ptr<Client>(new Client(options, std::move(target), std::move(impl)));
}

int Client::shard_count() const { return impl_->sharded() ? impl_->shard_map.size() : 1; }

int Client::ShardOf(absl::string_view weight_id) const {
  return impl_->sharded() ? impl_->shard_map.OwnerIndex(weight_id) : 0;
}

Client::Client(ClientOptions options, std::string channel_target, std::unique_ptr<Impl> impl)
    : options_(std::move(options)),
      channel_target_(std::move(channel_target)),
      impl_(std::move(impl)) {}

Client::~Client() {
  // A sharded client's calls run on its shards: they wait for their own callbacks.
  impl_->shards.clear();
  // Asynchronous calls still running use the channel and stubs: wait for their callbacks.
  std::unique_lock<std::mutex> lock(impl_->async_mu);
  impl_->async_idle.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(impl_->async_mu) {
    return impl_->async_outstanding == 0;
  });
}

absl::StatusOr<WeightInfo> Client::Upload(absl::string_view weight_id, const UploadSource& source,
                                          const UploadOptions& options) {
  if (weight_id.empty()) return absl::InvalidArgumentError("upload: empty weight id");
  if (impl_->sharded()) {
    return RouteToOwner(*impl_, weight_id,
                        [&](Client& shard) { return shard.Upload(weight_id, source, options); });
  }
  if (source.k <= 0 || source.n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload: bad shape K=", source.k, " N=", source.n));
  }
  uint64_t total = 0;
  uint32_t crc = crc32(0L, Z_NULL, 0);
  for (absl::Span<const uint8_t> piece : source.pieces) {
    total += piece.size();
    // zlib's crc32 takes a uInt length: feed large pieces in slices.
    for (size_t off = 0; off < piece.size(); off += 1u << 30) {
      size_t len = std::min<size_t>(piece.size() - off, 1u << 30);
      crc = crc32(crc, piece.data() + off, static_cast<uInt>(len));
    }
  }
  if (source.kind == WeightSourceKind::kDenseFp16 || source.kind == WeightSourceKind::kDenseFp32) {
    uint64_t want = static_cast<uint64_t>(source.k) * static_cast<uint64_t>(source.n) *
                    (source.kind == WeightSourceKind::kDenseFp16 ? 2 : 4);
    if (total != want) {
      return absl::InvalidArgumentError(absl::StrCat("upload ", weight_id, ": ", total,
                                                     " data bytes for a ", source.k, " x ",
                                                     source.n, " dense weight (want ", want, ")"));
    }
  }
  size_t chunk = std::clamp<size_t>(options.chunk_bytes, 1, kUploadChunkBytes);

  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx, options.call.timeout, options_.upload_deadline,
                        options.call.wait_for_ready);
  CancelRegistration registration(options.call.cancel, &ctx);
  v1::WeightInfo response;
  std::unique_ptr<grpc::ClientWriter<v1::UploadWeightRequest>> writer =
      impl_->stub->UploadWeight(&ctx, &response);

  v1::UploadWeightRequest req;
  v1::UploadHeader* header = req.mutable_header();
  header->set_weight_id(std::string(weight_id));
  header->set_k(source.k);
  header->set_n(source.n);
  header->set_source(ToProto(source.kind));
  if (source.kind == WeightSourceKind::kDenseFp16 || source.kind == WeightSourceKind::kDenseFp32) {
    header->set_layout(ToProto(source.layout));
  }
  header->set_group_size(options.group_size);
  header->set_replace(options.replace);
  header->set_total_bytes(total);
  header->set_crc32(crc);
  header->set_has_g_idx(source.has_g_idx);

  bool ok = writer->Write(req);
  uint64_t sent = 0;
  if (options.progress) options.progress(0, total);
  for (size_t p = 0; ok && p < source.pieces.size(); ++p) {
    absl::Span<const uint8_t> piece = source.pieces[p];
    for (size_t off = 0; ok && off < piece.size(); off += chunk) {
      size_t len = std::min(chunk, piece.size() - off);
      req.set_chunk(reinterpret_cast<const char*>(piece.data() + off), len);
      ok = writer->Write(req);
      if (ok) {
        sent += len;
        if (options.progress) options.progress(sent, total);
      }
    }
  }
  if (ok) writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) {
    absl::Status s = FromGrpcStatus(status);
    return absl::Status(s.code(), absl::StrCat("upload ", weight_id, ": ", s.message()));
  }
  if (!ok) return absl::UnavailableError(absl::StrCat("upload ", weight_id, ": stream broke"));
  return FromProto(response);
}

absl::StatusOr<WeightInfo> Client::UploadFp16(absl::string_view weight_id, int64_t k, int64_t n,
                                              absl::Span<const uint16_t> values,
                                              WeightLayout layout, const UploadOptions& options) {
  absl::StatusOr<UploadSource> source = DenseSource(weight_id, k, n, WeightSourceKind::kDenseFp16,
                                                    values.size(), AsBytes(values), layout);
  if (!source.ok()) return source.status();
  return Upload(weight_id, *source, options);
}

absl::StatusOr<WeightInfo> Client::UploadFp32(absl::string_view weight_id, int64_t k, int64_t n,
                                              absl::Span<const float> values, WeightLayout layout,
                                              const UploadOptions& options) {
  absl::StatusOr<UploadSource> source = DenseSource(weight_id, k, n, WeightSourceKind::kDenseFp32,
                                                    values.size(), AsBytes(values), layout);
  if (!source.ok()) return source.status();
  return Upload(weight_id, *source, options);
}

absl::StatusOr<WeightInfo> Client::UploadGptq(absl::string_view weight_id, int64_t k, int64_t n,
                                              absl::Span<const int32_t> qweight,
                                              absl::Span<const uint16_t> scales,
                                              absl::Span<const int32_t> qzeros,
                                              absl::Span<const int32_t> g_idx,
                                              const UploadOptions& options) {
  if (k <= 0 || n <= 0 || k % 8 != 0 || n % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload ", weight_id, ": GPTQ needs K and N multiples of 8, got ", k, " x ", n));
  }
  uint64_t uk = k, un = n;
  if (qweight.size() != uk / 8 * un) {
    return absl::InvalidArgumentError(absl::StrCat("upload ", weight_id, ": qweight has ",
                                                   qweight.size(),
                                                   " values, want K/8*N = ", uk / 8 * un));
  }
  if (scales.empty() || scales.size() % un != 0 || uk % (scales.size() / un) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("upload ", weight_id, ": scales has ",
                                                   scales.size(), " values, want (K/G)*N"));
  }
  uint64_t groups = scales.size() / un;
  if (qzeros.size() != groups * (un / 8)) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload ", weight_id, ": qzeros has ", qzeros.size(),
                     " values, want (K/G)*(N/8) = ", groups * (un / 8)));
  }
  if (!g_idx.empty() && g_idx.size() != uk) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload ", weight_id, ": g_idx has ", g_idx.size(), " values, want K"));
  }
  UploadOptions opts = options;
  opts.group_size = groups == 1 ? kGroupSizePerChannel : static_cast<int32_t>(uk / groups);
  UploadSource source;
  source.kind = WeightSourceKind::kGptq;
  source.k = k;
  source.n = n;
  source.has_g_idx = !g_idx.empty();
  source.pieces = {AsBytes(qweight), AsBytes(scales), AsBytes(qzeros)};
  if (!g_idx.empty()) source.pieces.push_back(AsBytes(g_idx));
  return Upload(weight_id, source, opts);
}

absl::Status Client::DeleteWeight(absl::string_view weight_id, const CallOptions& options) {
  if (impl_->sharded()) {
    return RouteToOwner(*impl_, weight_id,
                        [&](Client& shard) { return shard.DeleteWeight(weight_id, options); });
  }
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx, options.timeout, options_.default_deadline, options.wait_for_ready);
  CancelRegistration registration(options.cancel, &ctx);
  v1::DeleteWeightRequest req;
  req.set_weight_id(std::string(weight_id));
  v1::DeleteWeightResponse resp;
  return FromGrpcStatus(impl_->stub->DeleteWeight(&ctx, req, &resp));
}

absl::StatusOr<WeightInfo> Client::GetWeight(absl::string_view weight_id,
                                             const CallOptions& options) {
  if (impl_->sharded()) {
    return RouteToOwner(*impl_, weight_id,
                        [&](Client& shard) { return shard.GetWeight(weight_id, options); });
  }
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx, options.timeout, options_.default_deadline, options.wait_for_ready);
  CancelRegistration registration(options.cancel, &ctx);
  v1::GetWeightRequest req;
  req.set_weight_id(std::string(weight_id));
  v1::WeightInfo resp;
  grpc::Status status = impl_->stub->GetWeight(&ctx, req, &resp);
  if (!status.ok()) return FromGrpcStatus(status);
  return FromProto(resp);
}

absl::StatusOr<std::vector<WeightInfo>> Client::ListWeights(const CallOptions& options) {
  if (impl_->sharded()) return ShardedListWeights(*impl_, options);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx, options.timeout, options_.default_deadline, options.wait_for_ready);
  CancelRegistration registration(options.cancel, &ctx);
  v1::ListWeightsRequest req;
  v1::ListWeightsResponse resp;
  grpc::Status status = impl_->stub->ListWeights(&ctx, req, &resp);
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<WeightInfo> out;
  out.reserve(resp.weights_size());
  for (const v1::WeightInfo& w : resp.weights()) out.push_back(FromProto(w));
  return out;
}

absl::StatusOr<ServerInfo> Client::GetServerInfo(const CallOptions& options) {
  if (impl_->sharded()) return impl_->shards.front()->GetServerInfo(options);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx, options.timeout, options_.default_deadline, options.wait_for_ready);
  CancelRegistration registration(options.cancel, &ctx);
  v1::ServerInfoRequest req;
  v1::ServerInfoResponse resp;
  grpc::Status status = impl_->stub->ServerInfo(&ctx, req, &resp);
  if (!status.ok()) return FromGrpcStatus(status);
  ServerInfo info;
  info.version = resp.version();
  info.backend = resp.backend();
  info.device_name = resp.device_name();
  info.device_memory_total = resp.device_memory_total();
  info.device_memory_free = resp.device_memory_free();
  info.limits.max_rows_per_request = resp.limits().max_rows_per_request();
  info.limits.max_weight_bytes = resp.limits().max_weight_bytes();
  info.limits.max_weights = resp.limits().max_weights();
  info.limits.max_receive_message_bytes = resp.limits().max_receive_message_bytes();
  info.limits.max_in_flight_per_stream = resp.limits().max_in_flight_per_stream();
  info.max_batch_rows = resp.batching().max_batch_rows();
  info.max_queue_delay_us = resp.batching().max_queue_delay_us();
  info.max_queue_rows = resp.batching().max_queue_rows();
  return info;
}

absl::StatusOr<HealthStatus> Client::Health(absl::string_view service, const CallOptions& options) {
  if (impl_->sharded()) return ShardedHealth(*impl_, service, options);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx, options.timeout, options_.default_deadline, options.wait_for_ready);
  CancelRegistration registration(options.cancel, &ctx);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(std::string(service));
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status status = impl_->health_stub->Check(&ctx, req, &resp);
  if (!status.ok()) return FromGrpcStatus(status);
  switch (resp.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return HealthStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING:
      return HealthStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return HealthStatus::kServiceUnknown;
    default:
      return HealthStatus::kUnknown;
  }
}

absl::StatusOr<MatmulResult> Client::Matmul(absl::string_view weight_id, uint32_t rows,
                                            absl::Span<const uint16_t> activations,
                                            const CallOptions& options) {
  if (absl::Status s = CheckRows(rows, activations); !s.ok()) return s;
  if (impl_->sharded()) {
    return RouteToOwner(*impl_, weight_id, [&](Client& shard) {
      return shard.Matmul(weight_id, rows, activations, options);
    });
  }
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx, options.timeout, options_.default_deadline, options.wait_for_ready);
  CancelRegistration registration(options.cancel, &ctx);
  v1::MatmulRequest req = MakeRequest(weight_id, rows, activations);
  v1::MatmulResponse resp;
  grpc::Status status = impl_->stub->Matmul(&ctx, req, &resp);
  if (!status.ok()) return FromGrpcStatus(status);
  return FromProto(resp);
}

namespace {

// One asynchronous unary Matmul: owns what the callback API needs until it completes.
struct AsyncMatmulCall {
  grpc::ClientContext ctx;
  v1::MatmulRequest req;
  v1::MatmulResponse resp;
  MatmulCallback done;
  std::unique_ptr<CancelRegistration> registration;
};

}  // namespace

void Client::MatmulAsync(absl::string_view weight_id, uint32_t rows,
                         absl::Span<const uint16_t> activations, MatmulCallback done,
                         const CallOptions& options) {
  if (absl::Status s = CheckRows(rows, activations); !s.ok()) {
    done(s);
    return;
  }
  if (impl_->sharded()) {
    // No redirect (the activations would have to be kept): a refusal is explained.
    const Impl* impl = impl_.get();
    impl_->Owner(weight_id).MatmulAsync(
        weight_id, rows, activations,
        [impl, id = std::string(weight_id),
         done = std::move(done)](absl::StatusOr<MatmulResult> result) {
          if (!result.ok()) result = ExplainMisroute(*impl, id, result.status());
          done(std::move(result));
        },
        options);
    return;
  }
  auto* call = new AsyncMatmulCall;
  impl_->PrepareContext(&call->ctx, options.timeout, options_.default_deadline,
                        options.wait_for_ready);
  call->req = MakeRequest(weight_id, rows, activations);
  call->done = std::move(done);
  call->registration = std::make_unique<CancelRegistration>(options.cancel, &call->ctx);
  Impl* impl = impl_.get();
  {
    std::lock_guard<std::mutex> lock(impl->async_mu);
    ++impl->async_outstanding;
  }
  impl_->stub->async()->Matmul(
      &call->ctx, &call->req, &call->resp, [call, impl](grpc::Status status) {
        MatmulCallback done = std::move(call->done);
        absl::StatusOr<MatmulResult> result =
            status.ok() ? absl::StatusOr<MatmulResult>(FromProto(call->resp))
                        : absl::StatusOr<MatmulResult>(FromGrpcStatus(status));
        // The call's gRPC state goes before the caller sees the answer (and may drop the client).
        delete call;
        done(std::move(result));
        // Notified under the lock: ~Client may free async_idle as soon as it sees 0.
        std::lock_guard<std::mutex> lock(impl->async_mu);
        if (--impl->async_outstanding == 0) impl->async_idle.notify_all();
      });
}

std::future<absl::StatusOr<MatmulResult>> Client::MatmulAsync(
    absl::string_view weight_id, uint32_t rows, absl::Span<const uint16_t> activations,
    const CallOptions& options) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<MatmulResult>>>();
  std::future<absl::StatusOr<MatmulResult>> future = promise->get_future();
  MatmulAsync(
      weight_id, rows, activations,
      [promise](absl::StatusOr<MatmulResult> result) { promise->set_value(std::move(result)); },
      options);
  return future;
}

absl::StatusOr<std::unique_ptr<MatmulStream>> Client::OpenStream(
    const MatmulStreamOptions& options) {
  return MatmulStream::Create(impl_.get(), options);
}

absl::StatusOr<std::unique_ptr<MatmulStream>> Client::OpenStream() {
  return OpenStream(MatmulStreamOptions{});
}

}  // namespace marlin
