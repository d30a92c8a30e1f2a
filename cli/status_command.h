// `herd status --coordinator ADDR`: a running job as its coordinator sees it; and
// the operators' `herd drain` and `herd cancel`.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "client/client.h"
#include "herd/proto/herd.pb.h"

namespace herd::cli {

// The client options from the flags, the environment and the config at
// `config_path` (client/options.h says which wins). Prints the problem and returns
// nullopt when a file cannot be read, or no token can be found and `need_token`.
std::optional<client::ClientOptions> client_options(const client::ClientFlags& flags, const std::string& config_path,
                                                    const char* who, bool need_token = true);
// --coordinator, --token-file, --tls-ca, --tls-server-name and --config.
void add_client_flags(CLI::App& command, client::ClientFlags& flags, std::string& config_path);

// `herd status --health`: the coordinator's gRPC health check (no token needed),
// printed; 0 when it is SERVING.
int health(const client::ClientOptions& options, bool json);

// GetStatus; prints the failure and returns nullopt.
std::optional<herd::v1::JobStatus> fetch_status(const client::ClientOptions& options, const char* who);

// The human view: a summary line, then one line per rank.
std::string format_status(const herd::v1::JobStatus& status);

// `herd drain` (stop at the next checkpoint) and `herd cancel` (fail the job now).
int operator_call(const client::ClientOptions& options, const std::string& reason, bool cancel);

}  // namespace herd::cli
