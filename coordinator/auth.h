// The job token and TLS material, for the coordinator and its clients. The token
// is a shared secret: it is compared in constant time and never logged.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <grpcpp/grpcpp.h>

#include "common/launch.h"

namespace herd {
struct SecurityConfig;
}

namespace herd::coordinator {

class AuthError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The token, from the first of: `token_file` (a flag), $HERD_JOB_TOKEN,
// security.token_file, security.token. nullopt when none is given; AuthError for
// an unreadable or empty file.
std::optional<std::string> resolve_token(const std::string& token_file, const SecurityConfig* security,
                                         const EnvLookup& env);

// A whole file (a PEM), or AuthError naming it.
std::string read_secret_file(const std::string& path, const char* what);

// True when `metadata_value` is exactly "Bearer <token>" (constant time in the token).
bool bearer_matches(std::string_view metadata_value, const std::string& token);

// How a client reaches the coordinator: plaintext, or TLS verified with `tls_ca_pem`.
struct ClientOptions {
  std::string address;  // HOST:PORT
  std::string token;
  std::string tls_ca_pem;  // empty: plaintext
};
std::shared_ptr<grpc::Channel> make_channel(const ClientOptions& options);
// Adds the token and a deadline to a call.
void prepare(grpc::ClientContext& context, const std::string& token, std::chrono::milliseconds timeout);

}  // namespace herd::coordinator
