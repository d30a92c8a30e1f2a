#include "common/auth.h"

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
std::string token_from_file(const std::string& path) {
  std::string t = read_secret_file(path, "the job token");
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
  if (t.empty()) throw AuthError(fmt::format("{}: the job token file is empty", path));
  return t;
}
}  // namespace

std::optional<std::string> resolve_token(const std::string& token_file, const SecurityConfig* security,
                                         const EnvLookup& env) {
  if (!token_file.empty()) return token_from_file(token_file);
  if (auto t = env("HERD_JOB_TOKEN"); t && !t->empty()) return *t;
  if (security && !security->token_file.empty()) return token_from_file(security->token_file);
  if (security && !security->token.empty()) return security->token;
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
