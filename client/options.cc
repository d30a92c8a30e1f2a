#include "client/options.h"

#include <fmt/format.h>

#include "common/auth.h"
#include "common/config.h"

namespace herd::client {

namespace {

// The first non-empty of a flag, an environment variable and a config key, with
// where it came from (for the error that names an unreadable file).
std::pair<std::string, std::string> first_of(const std::string& flag, const char* flag_name,
                                             const std::optional<std::string>& env, const char* env_name,
                                             const std::string& key, const char* key_name) {
  if (!flag.empty()) return {flag, flag_name};
  if (env && !env->empty()) return {*env, env_name};
  return {key, key_name};
}

}  // namespace

ClientOptions client_options(const ClientFlags& flags, const SecurityConfig* security, const EnvLookup& env,
                             bool need_token) {
  ClientOptions o;
  o.address = flags.address;
  if (!flags.token.empty()) {
    o.token = flags.token;
  } else if (auto token = resolve_token(flags.token_file, security, env)) {
    o.token = *token;
  } else if (need_token) {
    throw AuthError("no job token: pass --token-file, set HERD_JOB_TOKEN, or set security.token_file in the config");
  }
  const SecurityConfig none;
  const SecurityConfig& s = security ? *security : none;
  const auto [ca, ca_from] = first_of(flags.tls_ca, "--tls-ca", env("HERD_TLS_CA"), "HERD_TLS_CA",
                                      !s.tls_ca.empty() ? s.tls_ca : s.tls_cert,
                                      !s.tls_ca.empty() ? "security.tls_ca" : "security.tls_cert");
  if (!ca.empty()) o.tls_ca_pem = read_secret_file(ca, fmt::format("the TLS CA ({})", ca_from).c_str());
  o.tls_server_name = first_of(flags.tls_server_name, "--tls-server-name", env("HERD_TLS_SERVER_NAME"),
                               "HERD_TLS_SERVER_NAME", s.tls_server_name, "security.tls_server_name")
                          .first;
  return o;
}

}  // namespace herd::client
