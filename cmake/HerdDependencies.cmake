# Every external dependency is found here, once. A missing one stops configure with
# the Debian package (or the script) that provides it.

macro(herd_require name package)
  find_package(${name} ${ARGN} QUIET)
  if(NOT ${name}_FOUND)
    message(FATAL_ERROR
      "herd needs ${name}: install the Debian package '${package}' "
      "(scripts/install-deps installs every dependency)")
  endif()
endmacro()

herd_require(Threads libc6-dev)
herd_require(Protobuf libprotobuf-dev)
herd_require(gRPC libgrpc++-dev CONFIG)
find_program(HERD_GRPC_CPP_PLUGIN grpc_cpp_plugin)
if(NOT HERD_GRPC_CPP_PLUGIN)
  message(FATAL_ERROR "herd needs grpc_cpp_plugin: install the Debian package 'protobuf-compiler-grpc'")
endif()
if(NOT Protobuf_PROTOC_EXECUTABLE)
  message(FATAL_ERROR "herd needs protoc: install the Debian package 'protobuf-compiler'")
endif()
herd_require(yaml-cpp libyaml-cpp-dev CONFIG)
herd_require(prometheus-cpp prometheus-cpp-dev CONFIG)
herd_require(nlohmann_json nlohmann-json3-dev CONFIG)
herd_require(fmt libfmt-dev CONFIG)
herd_require(spdlog libspdlog-dev CONFIG)
herd_require(CLI11 libcli11-dev CONFIG)
if(HERD_COORDINATOR_ONLY)
  return()  # herd-coordinator needs nothing below (scripts/install-deps --coordinator)
endif()

herd_require(MPI libopenmpi-dev COMPONENTS CXX)
herd_require(Gloo libgloo-dev CONFIG)
find_program(HERD_PATCHELF patchelf)  # gives herd's copy of libgloo no dependencies (worker/)
if(NOT HERD_PATCHELF)
  message(FATAL_ERROR "herd needs patchelf: install the Debian package 'patchelf'")
endif()
find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h)
find_library(SENTENCEPIECE_LIBRARY sentencepiece)
if(NOT SENTENCEPIECE_INCLUDE_DIR OR NOT SENTENCEPIECE_LIBRARY)
  message(FATAL_ERROR "herd needs SentencePiece: install the Debian package 'libsentencepiece-dev'")
endif()
add_library(herd_sentencepiece INTERFACE)
target_include_directories(herd_sentencepiece SYSTEM INTERFACE "${SENTENCEPIECE_INCLUDE_DIR}")
target_link_libraries(herd_sentencepiece INTERFACE "${SENTENCEPIECE_LIBRARY}")
if(HERD_BUILD_TESTS)
  herd_require(GTest libgtest-dev CONFIG)
endif()
if(HERD_BUILD_BENCH)
  herd_require(benchmark libbenchmark-dev CONFIG)
endif()

# libtorch comes from the PyTorch wheel in the project virtualenv; CMake finds it
# through torch.utils.cmake_prefix_path.
if(NOT Torch_DIR)
  if(NOT EXISTS "${HERD_PYTHON}")
    message(FATAL_ERROR
      "herd needs libtorch from the PyTorch wheel, but ${HERD_PYTHON} does not exist: "
      "run scripts/install-deps (or pass -DHERD_PYTHON=/path/to/python with torch installed)")
  endif()
  execute_process(
    COMMAND "${HERD_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _torch_rc ERROR_QUIET)
  if(NOT _torch_rc EQUAL 0)
    message(FATAL_ERROR "${HERD_PYTHON} cannot import torch: run scripts/install-deps")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
  # Without a system CUDA toolkit, the one from NVIDIA's wheels next to torch
  # (scripts/install-deps --cuda), for torch's CUDA config and herd's kernels alike.
  get_filename_component(_wheel_cuda "${_torch_prefix}/../../../nvidia/cu13" ABSOLUTE)
  if(NOT CMAKE_CUDA_COMPILER AND NOT EXISTS /usr/local/cuda/bin/nvcc AND EXISTS "${_wheel_cuda}/bin/nvcc")
    set(CUDAToolkit_ROOT "${_wheel_cuda}")
    set(CUDA_TOOLKIT_ROOT_DIR "${_wheel_cuda}")  # torch's config still asks FindCUDA too
    set(CMAKE_CUDA_COMPILER "${_wheel_cuda}/bin/nvcc")
  endif()
endif()
# The system toolkit's nvcc where PATH has none (a shell whose PATH lacks
# /usr/local/cuda/bin): torch's config enables CUDA with it.
find_program(HERD_NVCC_ON_PATH nvcc)
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND NOT HERD_NVCC_ON_PATH AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
# herd builds its own CUDA code for these; torch's own flags only need a list so
# that it does not probe for a GPU.
set(HERD_CUDA_ARCHITECTURES "80;90" CACHE STRING "GPU architectures herd's kernels are built for")
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;9.0")
endif()
find_package(Torch REQUIRED)

# herd links the wheel through its own target, herd_torch, instead of TorchConfig's:
# - The wheel's include/ also carries fmt 12 and protobuf headers of its own. Next
#   to Debian's fmt 9 and protobuf 3.21 libraries, a file that includes both would
#   compile against one version and link the other. herd sees the wheel's headers
#   through a mirror in the build tree that leaves those two out.
# - TorchConfig links the CUDA toolkit's libcudart/libnvrtc (CUDA 13.0 here) while
#   libtorch_cuda was built against the wheel's own (nvidia/cu13, 13.2): herd links
#   only the wheel's libraries and lets their RPATHs pick their CUDA libraries.
set(_torch_root "${TORCH_INSTALL_PREFIX}")
set(_mirror "${CMAKE_BINARY_DIR}/torch-include")
file(GLOB _entries RELATIVE "${_torch_root}/include" "${_torch_root}/include/*")
file(MAKE_DIRECTORY "${_mirror}")
foreach(_e IN LISTS _entries)
  if(NOT _e MATCHES "^(fmt|google)$" AND NOT EXISTS "${_mirror}/${_e}")
    file(CREATE_LINK "${_torch_root}/include/${_e}" "${_mirror}/${_e}" SYMBOLIC)
  endif()
endforeach()
set(_defs "")
foreach(_t torch_cpu torch_cuda)
  if(TARGET ${_t})
    get_target_property(_d ${_t} INTERFACE_COMPILE_DEFINITIONS)
    if(_d)
      list(APPEND _defs ${_d})
    endif()
  endif()
endforeach()
set(_libs "${_torch_root}/lib/libtorch.so" "${_torch_root}/lib/libtorch_cpu.so" "${_torch_root}/lib/libc10.so")
if(EXISTS "${_torch_root}/lib/libtorch_cuda.so")
  list(APPEND _libs "${_torch_root}/lib/libtorch_cuda.so" "${_torch_root}/lib/libc10_cuda.so")
endif()
file(GLOB _wheel_lib_dirs LIST_DIRECTORIES true "${_torch_root}/../nvidia/*/lib")
string(JOIN ":" _rpath_link "${_torch_root}/lib" ${_wheel_lib_dirs})
add_library(herd_torch INTERFACE)
target_include_directories(herd_torch SYSTEM INTERFACE "${_mirror}" "${_mirror}/torch/csrc/api/include")
target_compile_definitions(herd_torch INTERFACE ${_defs})
# --no-as-needed: the CPU and CUDA backends register themselves when loaded.
# libstdc++ is named first: libtorch_cpu.so exports its own copy of std::filesystem
# (142 symbols in 2.15), and the loader binds a symbol to the first library that
# defines it. Built with another GCC, that copy crashed herd (remove_all called a
# null pointer under GCC 13 with torch 2.11); libstdc++ ahead of libtorch keeps
# herd on the compiler's own.
target_link_libraries(herd_torch INTERFACE "-Wl,--no-as-needed" stdc++ ${_libs} "-Wl,--as-needed" Threads::Threads)
target_link_options(herd_torch INTERFACE "LINKER:-rpath,${_torch_root}/lib" "LINKER:-rpath-link,${_rpath_link}")

# herd's CUDA kernels are built whenever libtorch has CUDA and nvcc is present.
set(HERD_CUDA OFF)
if(CAFFE2_USE_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(HERD_CUDA ON)
    # The wheel's libcudart and nvcc's must share a major version: herd links the
    # toolkit's runtime, and a newer minor in the wheel is compatible with it.
    string(REGEX MATCH "^[0-9]+" _nvcc_major "${CMAKE_CUDA_COMPILER_VERSION}")
    string(REGEX MATCH "^[0-9]+" _torch_cuda_major "${CUDAToolkit_VERSION}")
    execute_process(
      COMMAND "${HERD_PYTHON}" -c "import torch; print(torch.version.cuda or '')"
      OUTPUT_VARIABLE HERD_TORCH_CUDA_VERSION OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    string(REGEX MATCH "^[0-9]+" _wheel_major "${HERD_TORCH_CUDA_VERSION}")
    if(_wheel_major AND NOT _wheel_major STREQUAL _nvcc_major)
      message(FATAL_ERROR
        "libtorch was built for CUDA ${HERD_TORCH_CUDA_VERSION} but nvcc is "
        "${CMAKE_CUDA_COMPILER_VERSION}: their major versions must agree")
    endif()
  endif()
endif()

# NCCL for the CUDA build's collectives: the wheel's (nvidia-nccl), which is the
# copy libtorch_cuda loads, else the CUDA toolkit's.
if(HERD_CUDA)
  find_path(HERD_NCCL_INCLUDE_DIR nccl.h HINTS "${_torch_root}/../nvidia/nccl/include" /usr/local/cuda/include)
  find_library(HERD_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR HINTS "${_torch_root}/../nvidia/nccl/lib" /usr/local/cuda/lib
               /usr/local/cuda/lib64)
  if(NOT HERD_NCCL_INCLUDE_DIR OR NOT HERD_NCCL_LIBRARY)
    message(FATAL_ERROR "herd's CUDA build needs NCCL: the nvidia-nccl wheel (with torch) or the CUDA toolkit's")
  endif()
  if(NOT CUDAToolkit_FOUND)  # torch's config found it (a second look can fail on its targets)
    find_package(CUDAToolkit REQUIRED)
  endif()
  add_library(herd_nccl INTERFACE)
  target_include_directories(herd_nccl SYSTEM INTERFACE "${HERD_NCCL_INCLUDE_DIR}" ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(herd_nccl INTERFACE "${HERD_NCCL_LIBRARY}")
endif()
