// A shared library linked with -static-libstdc++ that uses std::call_once, so that
// it carries, and exports, its own copy of call_once's thread-locals and
// __once_proxy. Preloaded by the test GlooPreloaded.StaticLibstdcxx.
#include <mutex>

void herd_static_libstdcxx_call_once() {
  static std::once_flag flag;
  std::call_once(flag, [] {});
}
