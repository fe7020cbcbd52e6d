// Server transport credentials: plaintext, TLS, or mutual TLS, from PEM files.
//
//   ASSIGN_OR_RETURN(auto creds, ServerCredentialsFromFiles({.cert = "server.pem",
//                                                           .key = "server.key",
//                                                           .client_ca = "clients-ca.pem"}));
//   builder.AddListeningPort(listen, creds);
//
// With `client_ca`, clients must present a certificate signed by it (mutual TLS); the handshake
// of a client without one fails before any RPC. Files are read once, at start.
#ifndef MARLIN_SERVER_AUTH_TLS_H_
#define MARLIN_SERVER_AUTH_TLS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace marlin::auth {

struct TlsFiles {
  std::string cert = {};       // PEM certificate chain; empty with `key` empty: plaintext
  std::string key = {};        // PEM private key
  std::string client_ca = {};  // PEM CA bundle: mutual TLS when not empty (needs cert and key)
  bool enabled() const { return !cert.empty() || !key.empty() || !client_ca.empty(); }
};

// Plaintext when no file is named; INVALID_ARGUMENT when only one of cert/key is given or
// client_ca comes without them; NOT_FOUND / INVALID_ARGUMENT for unreadable or non-PEM files.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFromFiles(
    const TlsFiles& files);

}  // namespace marlin::auth

#endif  // MARLIN_SERVER_AUTH_TLS_H_
