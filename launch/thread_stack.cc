// Thread stacks big enough for this process's thread-local storage.
//
// glibc puts every library's static TLS at the top of each thread's stack and
// refuses (EINVAL) to create a thread whose stack cannot hold it. libtorch's wheel
// and the CUDA libraries it needs bring about 220 KiB of static TLS (cuBLASLt
// alone 92 KiB), and CivetWeb, the HTTP server under prometheus-cpp's Exposer,
// asks for 100 KiB stacks: without this, no /metrics endpoint could start in a
// process that links libtorch. herd's executable defines pthread_attr_setstacksize,
// so that calls from every library bind here: a request below the process's
// default thread stack size is raised to it, then handed to libc's.
#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cstddef>

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  static const auto libc = reinterpret_cast<SetStackSize>(::dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  static const size_t least = [] {
    size_t bytes = 0;
    pthread_attr_t defaults;
    if (::pthread_getattr_default_np(&defaults) == 0) {
      ::pthread_attr_getstacksize(&defaults, &bytes);
      ::pthread_attr_destroy(&defaults);
    }
    return bytes > 0 ? bytes : size_t{8} << 20;
  }();
  return libc(attr, std::max(size, least));
}
