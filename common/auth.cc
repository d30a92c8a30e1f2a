#include "common/auth.h"

#include <cctype>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/config.h"

namespace herd {

std::string read_secret_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw AuthError(fmt::format("{}: cannot read {}", path, what));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

namespace {
// A token as gRPC can send it: trailing white space (a file or Secret made with
// `openssl rand -hex 32 >`, `echo`) dropped, then visible ASCII only.
std::string checked_token(std::string t, const std::string& from) {
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  if (t.empty()) throw AuthError(fmt::format("{}: the job token is empty", from));
  for (char c : t) {
    if (c < 0x21 || c > 0x7e) {
      throw AuthError(fmt::format("{}: the job token may hold only visible ASCII characters (e.g. hex), found "
                                  "byte 0x{:02x}", from, static_cast<unsigned char>(c)));
    }
  }
  return t;
}
}  // namespace

std::optional<std::string> resolve_token(const std::string& token_file, const SecurityConfig* security,
                                         const EnvLookup& env) {
  if (!token_file.empty()) return checked_token(read_secret_file(token_file, "the job token"), token_file);
  if (auto t = env("HERD_JOB_TOKEN"); t && !t->empty()) return checked_token(*t, "HERD_JOB_TOKEN");
  if (security && !security->token_file.empty()) {
    return checked_token(read_secret_file(security->token_file, "the job token"), security->token_file);
  }
  if (security && !security->token.empty()) return checked_token(security->token, "security.token");
  return std::nullopt;
}

bool bearer_matches(std::string_view value, const std::string& token) {
  constexpr std::string_view kPrefix = "Bearer ";
  if (value.size() != kPrefix.size() + token.size() || value.substr(0, kPrefix.size()) != kPrefix) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < token.size(); ++i) diff |= static_cast<unsigned char>(value[kPrefix.size() + i] ^ token[i]);
  return diff == 0;
}

}  // namespace herd
