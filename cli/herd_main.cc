// `herd`: the one command for people. Subcommands parse their flags here and
// call into the libraries; nothing of substance lives in this file.
#include <iostream>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/config_report.h"
#include "cli/data_commands.h"
#include "cli/model_commands.h"
#include "cli/model_report.h"
#include "cli/plan_command.h"
#include "cli/status_command.h"
#include "common/config.h"
#include "common/version.h"
#include "launch/run.h"
#include "worker/model/runtime.h"

namespace {

constexpr int kOk = 0;
constexpr int kUserError = 1;    // bad config, missing file, unreachable service

// Loads a config, printing every error; nullopt on failure.
std::optional<herd::Config> load(const std::string& path) {
  try {
    return herd::load_config(path);
  } catch (const herd::ConfigError& e) {
    std::cerr << e.what() << "\n";
    return std::nullopt;
  }
}

// The base model's report (cli/model_report.h); a model herd cannot train is an error.
std::optional<std::optional<herd::cli::ModelReport>> checked_model(const herd::Config& config) {
  try {
    return herd::cli::model_report(config);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return std::nullopt;
  }
}

int config_check(const std::string& path, bool json) {
  auto config = load(path);
  if (!config) return kUserError;
  const auto model = checked_model(*config);
  if (!model) return kUserError;
  if (json) {
    auto doc = herd::cli::config_json(*config);
    doc["model"] = *model ? (*model)->json() : nlohmann::json();
    std::cout << doc.dump(2) << "\n";
  } else {
    std::cout << herd::cli::config_table(*config) << (*model ? (*model)->table() : "") << "\nconfig ok\n";
  }
  return kOk;
}

int train(const std::string& path, bool dry_run, bool resume, int workers) {
  auto config = load(path);
  if (!config) return kUserError;
  const auto model = checked_model(*config);
  if (!model) return kUserError;
  std::cout << herd::cli::config_table(*config) << (*model ? (*model)->table() : "");
  if (dry_run) {
    std::cout << fmt::format("\ndry run: config ok; a training run would write the adapter to {}\n",
                             config->adapter_dir().string());
    return kOk;
  }
  std::cout << "\n" << std::flush;
  return herd::launch::run_local(*config, workers, resume, "/proc/self/exe");
}

int status(const herd::client::ClientFlags& flags, const std::string& config_path, bool json, bool health) {
  auto options = herd::cli::client_options(flags, config_path, "herd status", !health);
  if (!options) return kUserError;
  if (health) return herd::cli::health(*options, json);
  auto reply = herd::cli::fetch_status(*options, "herd status");
  if (!reply) return kUserError;
  if (json) {
    std::string text;
    google::protobuf::util::JsonPrintOptions print;
    print.preserve_proto_field_names = true;
    print.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(*reply, &text, print);
    std::cout << text << "\n";
  } else {
    std::cout << herd::cli::format_status(*reply);
  }
  return kOk;
}


}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"herd: QLoRA fine-tuning of Llama models, from one CPU or GPU to many nodes"};
  app.set_version_flag("--version", [] { return herd::worker::describe(herd::worker::build_info()); });
  app.require_subcommand(1);
  int rc = kOk;

  std::string config_path;
  bool dry_run = false;
  auto* train_cmd = app.add_subcommand("train", "Train LoRA adapters as CONFIG says (local run)");
  train_cmd->add_option("config", config_path, "The job's YAML config")->required();
  bool resume = false;
  int workers = 0;
  train_cmd->add_option("--workers", workers,
                        "Train on N local worker processes behind an in-process coordinator (N >= 1)")
      ->check(CLI::Range(1, 1024));
  train_cmd->add_flag("--dry-run", dry_run, "Check the config and paths, print the plan, do not train");
  train_cmd->add_flag("--resume", resume,
                      "Continue from the newest complete checkpoint in trainer_output_dir (checkpoint.resume: auto)");
  train_cmd->callback([&] {
    rc = train(config_path, dry_run, resume, workers);
  });

  herd::client::ClientFlags flags;
  auto* worker_cmd = app.add_subcommand("worker", "Join a job as one worker (a coordinator's, mpirun's or torchrun's)");
  worker_cmd->add_option("config", config_path,
                         "The job's YAML config (default: the coordinator's, fetched from it)");
  worker_cmd->add_option("--coordinator", flags.address, "The coordinator, HOST:PORT");
  worker_cmd->add_option("--token-file", flags.token_file, "File holding the job token")->check(CLI::ExistingFile);
  worker_cmd->add_option("--tls-ca", flags.tls_ca,
                         "PEM CA to verify the coordinator's TLS certificate with (else $HERD_TLS_CA, security.tls_ca)");
  worker_cmd->add_option("--tls-server-name", flags.tls_server_name,
                         "The name the coordinator's certificate is checked for (else $HERD_TLS_SERVER_NAME, "
                         "security.tls_server_name; default: the host dialled)");
  worker_cmd->callback([&] { rc = herd::launch::run_worker_process({config_path, flags}); });

  auto* config_cmd = app.add_subcommand("config", "Inspect configs");
  config_cmd->require_subcommand(1);
  bool json = false;
  auto* check_cmd = config_cmd->add_subcommand("check", "Validate a config and print every resolved value");
  check_cmd->add_option("file", config_path, "The YAML config")->required();
  check_cmd->add_flag("--json", json, "Print JSON");
  check_cmd->callback([&] { rc = config_check(config_path, json); });

  auto* status_cmd = app.add_subcommand("status", "Show a running job's state");
  herd::cli::add_client_flags(*status_cmd, flags, config_path);
  status_cmd->add_flag("--json", json, "Print JSON (the JobStatus message of proto/herd.proto)");
  bool health = false;
  status_cmd->add_flag("--health", health,
                       "Only the gRPC health check (no token needed): SERVING or NOT_SERVING; exit 0 when SERVING");
  status_cmd->callback([&] { rc = status(flags, config_path, json, health); });

  std::string reason;
  for (const bool cancel : {false, true}) {
    auto* cmd = app.add_subcommand(cancel ? "cancel" : "drain",
                                   cancel ? "Fail a running job now (journaled: a restarted coordinator keeps it failed)"
                                          : "Stop a running job at its next checkpoint (a restart resumes it)");
    herd::cli::add_client_flags(*cmd, flags, config_path);
    if (cancel) cmd->add_option("--reason", reason, "Why, for the job's message and journal");
    cmd->callback([&, cancel] {
      auto options = herd::cli::client_options(flags, config_path, cancel ? "herd cancel" : "herd drain");
      rc = options ? herd::cli::operator_call(*options, reason, cancel) : kUserError;
    });
  }

  herd::cli::add_convert_commands(app, rc);
  herd::cli::add_eval_command(app, rc);
  herd::cli::add_chat_command(app, rc);
  herd::cli::add_tools_commands(app, rc);
  herd::cli::add_plan_command(app, rc);
  herd::cli::add_data_commands(app, rc);


  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return rc;
}
