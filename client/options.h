// How a client reaches the coordinator, and the one place those options are built
// from flags, the environment and a config. Every client takes this path: workers
// (with or without a config of their own), `herd status`, `herd drain`, `herd
// cancel`, and the launchers' in-process workers.
//
// Each setting comes from the first of its sources that gives one:
//   token        the launcher's own token, --token-file, $HERD_JOB_TOKEN,
//                security.token_file, security.token
//   CA (TLS on)  --tls-ca, $HERD_TLS_CA, security.tls_ca, security.tls_cert (a
//                self-signed certificate is its own CA); none of them: plaintext
//   server name  --tls-server-name, $HERD_TLS_SERVER_NAME, security.tls_server_name;
//                none: the host of the address dialled
#pragma once

#include <string>

#include "common/env.h"

namespace herd {
struct SecurityConfig;
}

namespace herd::client {

struct ClientOptions {
  std::string address;  // HOST:PORT
  std::string token;
  std::string tls_ca_pem;       // empty: plaintext
  std::string tls_server_name;  // the name the certificate is checked for; empty: the address's host
};

// What a command line or a launcher says; empty: not said.
struct ClientFlags {
  std::string address;
  std::string token;       // a token the launcher holds itself (it made one, or resolved it)
  std::string token_file;  // --token-file
  std::string tls_ca;      // --tls-ca: a PEM file
  std::string tls_server_name;  // --tls-server-name
};

// The options, from `flags`, then `env`, then `security` (nullptr: no config).
// Throws AuthError for an unreadable token or CA file, and when `need_token` and no
// source names a token.
ClientOptions client_options(const ClientFlags& flags, const SecurityConfig* security, const EnvLookup& env,
                             bool need_token = true);

}  // namespace herd::client
