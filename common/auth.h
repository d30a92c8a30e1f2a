// The job token and TLS material, for the coordinator and its clients. The token
// is a shared secret: it is compared in constant time and never logged. (The
// client's channel and call metadata are in client/client.h.)
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "common/env.h"

namespace herd {

struct SecurityConfig;

class AuthError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The token, from the first of: `token_file` (a flag), $HERD_JOB_TOKEN,
// security.token_file, security.token, trailing white space dropped. nullopt when
// none is given; AuthError for an unreadable file, an empty token, or one with a
// byte outside visible ASCII (gRPC cannot send it).
std::optional<std::string> resolve_token(const std::string& token_file, const SecurityConfig* security,
                                         const EnvLookup& env);

// A whole file (a PEM), or AuthError naming it.
std::string read_secret_file(const std::string& path, const char* what);

// True when `metadata_value` is exactly "Bearer <token>" (constant time in the token).
bool bearer_matches(std::string_view metadata_value, const std::string& token);

}  // namespace herd
