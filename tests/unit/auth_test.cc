#include "common/auth.h"

#include <gtest/gtest.h>

#include "common/config.h"

namespace herd {
namespace {

EnvLookup token_env(const char* value) {
  return [value](const std::string& name) -> std::optional<std::string> {
    if (name == "HERD_JOB_TOKEN") return std::string(value);
    return std::nullopt;
  };
}

TEST(Auth, ATokenLosesTrailingWhiteSpaceWhereverItComesFrom) {
  // A Kubernetes Secret made from `openssl rand -hex 32 > job-token` reaches the
  // environment with its newline.
  EXPECT_EQ(resolve_token("", nullptr, token_env("0123abcd\n")), "0123abcd");
  SecurityConfig security;
  security.token = "s3cret \r\n";
  EXPECT_EQ(resolve_token("", &security, token_env("")), "s3cret");
}

TEST(Auth, ATokenGrpcCannotSendIsRefusedWithItsSource) {
  try {
    resolve_token("", nullptr, token_env("ab\ncd"));
    FAIL() << "a newline inside the token was accepted";
  } catch (const AuthError& e) {
    EXPECT_STREQ(e.what(), "HERD_JOB_TOKEN: the job token may hold only visible ASCII characters (e.g. hex), "
                           "found byte 0x0a");
  }
  EXPECT_THROW(resolve_token("", nullptr, token_env(" \n")), AuthError);
}

}  // namespace
}  // namespace herd
