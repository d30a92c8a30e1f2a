#include "client/options.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "common/auth.h"
#include "common/config.h"

namespace herd::client {
namespace {

namespace fs = std::filesystem;

EnvLookup env_of(std::map<std::string, std::string> values) {
  return [values](const std::string& name) -> std::optional<std::string> {
    auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  };
}

// Files whose text names them, so that a test sees which one was read.
class ClientOptionsTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("herd-client-options-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file(const std::string& name) {
    const auto path = dir_ / name;
    std::ofstream(path) << name;
    return path.string();
  }
  fs::path dir_;
};

TEST_F(ClientOptionsTest, AFlagWinsOverTheEnvironmentWhichWinsOverTheConfig) {
  SecurityConfig security;
  security.token = "config-token";
  security.tls_ca = file("config-ca");
  security.tls_cert = file("config-cert");
  security.tls_server_name = "config.name";
  const auto env = env_of({{"HERD_JOB_TOKEN", "env-token"},
                           {"HERD_TLS_CA", file("env-ca")},
                           {"HERD_TLS_SERVER_NAME", "env.name"}});

  ClientFlags flags{"10.0.0.1:29400", "", file("flag-token"), file("flag-ca"), "flag.name"};
  auto o = client_options(flags, &security, env);
  EXPECT_EQ(o.address, "10.0.0.1:29400");
  EXPECT_EQ(o.token, "flag-token");
  EXPECT_EQ(o.tls_ca_pem, "flag-ca");
  EXPECT_EQ(o.tls_server_name, "flag.name");

  o = client_options({"h:1"}, &security, env);
  EXPECT_EQ(o.token, "env-token");
  EXPECT_EQ(o.tls_ca_pem, "env-ca");
  EXPECT_EQ(o.tls_server_name, "env.name");

  o = client_options({"h:1"}, &security, env_of({}));
  EXPECT_EQ(o.token, "config-token");
  EXPECT_EQ(o.tls_ca_pem, "config-ca");
  EXPECT_EQ(o.tls_server_name, "config.name");

  // A launcher's own token wins over every other source.
  EXPECT_EQ(client_options({"h:1", "launch-token", file("flag-token")}, &security, env).token, "launch-token");
}

TEST_F(ClientOptionsTest, ASelfSignedCertificateIsItsOwnCaAndNoTlsIsPlaintext) {
  SecurityConfig security;
  security.token = "t";
  security.tls_cert = file("server-cert");
  EXPECT_EQ(client_options({"h:1"}, &security, env_of({})).tls_ca_pem, "server-cert");
  security.tls_cert.clear();
  const auto o = client_options({"h:1"}, &security, env_of({}));
  EXPECT_EQ(o.tls_ca_pem, "");
  EXPECT_EQ(o.tls_server_name, "");
}

TEST_F(ClientOptionsTest, AMissingTokenOrAnUnreadableCaIsRefusedByItsSource) {
  EXPECT_THROW(client_options({"h:1"}, nullptr, env_of({})), AuthError);
  EXPECT_EQ(client_options({"h:1"}, nullptr, env_of({}), /*need_token=*/false).token, "");
  try {
    client_options({"h:1", "t"}, nullptr, env_of({{"HERD_TLS_CA", (dir_ / "absent.pem").string()}}));
    FAIL() << "an unreadable CA was accepted";
  } catch (const AuthError& e) {
    EXPECT_EQ(std::string(e.what()), (dir_ / "absent.pem").string() + ": cannot read the TLS CA (HERD_TLS_CA)");
  }
}

}  // namespace
}  // namespace herd::client
