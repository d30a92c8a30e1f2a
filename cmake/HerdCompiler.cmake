# Warnings, ccache and the warnings-as-errors switch, applied to herd's own targets
# through herd_warnings (third-party headers come in as SYSTEM and stay quiet).
find_program(HERD_CCACHE ccache)
if(HERD_CCACHE)
  # Precompiled headers only hit the cache with these sloppiness settings.
  set(_launcher ${CMAKE_COMMAND} -E env
      "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
      ${HERD_CCACHE})
  set(CMAKE_C_COMPILER_LAUNCHER ${_launcher})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${_launcher})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${_launcher})
  message(STATUS "ccache: ${HERD_CCACHE}")
endif()

# One threading flag everywhere: -pthread defines _REENTRANT, and a precompiled
# header is only reused by files compiled with the same macros.
add_compile_options(-pthread)

add_library(herd_warnings INTERFACE)
target_compile_options(herd_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wnon-virtual-dtor -Wno-missing-field-initializers>
  # GCC 12 reports std::string copies as overlapping at -O3 (GCC bug 105329); clang
  # (the sanitizer builds) knows neither flag.
  $<$<COMPILE_LANG_AND_ID:CXX,GNU>:-Wshadow=local -Wno-restrict>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${HERD_WERROR}>>:-Werror>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${HERD_WERROR}>>:-Werror=all-warnings>)

# libtorch libraries share one precompiled <torch/torch.h>: it is compiled once and
# reused, which saves most of the parse time of every libtorch translation unit.
# (Libraries only: executables are compiled -fPIE, which a -fPIC header can't serve.)
# The sources after NO_TORCH include no libtorch header: they skip the header, whose
# loading alone costs some 7 s a translation unit (2 cores), more than most of them
# take without it. UNITY: with HERD_UNITY_BUILD the library's other sources are
# compiled four to a translation unit, so the header and libtorch's templates are
# processed once for four (herd and herd-spm-train from nothing, 2 cores: 265 s
# against about 480 s); such a library's sources keep their file-local names distinct.
option(HERD_UNITY_BUILD "Compile the libtorch libraries marked UNITY four sources at a time" ON)
function(herd_use_torch target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "UNITY" "" "NO_TORCH")
  set_source_files_properties(${arg_NO_TORCH} PROPERTIES SKIP_PRECOMPILE_HEADERS ON SKIP_UNITY_BUILD_INCLUSION ON)
  if(HERD_UNITY_BUILD AND arg_UNITY)
    set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 4)
  endif()
  target_link_libraries(${target} PUBLIC herd_torch)
  target_compile_definitions(${target} PUBLIC HERD_TORCH_CUDA_VERSION="${HERD_TORCH_CUDA_VERSION}")
  if(NOT TARGET herd_torch_pch)
    add_library(herd_torch_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/torch_pch.cc)
    target_link_libraries(herd_torch_pch PUBLIC herd_torch herd_warnings)
    target_compile_definitions(herd_torch_pch PUBLIC HERD_TORCH_CUDA_VERSION="${HERD_TORCH_CUDA_VERSION}")
    target_precompile_headers(herd_torch_pch PRIVATE <torch/torch.h>)
  endif()
  target_link_libraries(${target} PRIVATE herd_warnings)
  target_precompile_headers(${target} REUSE_FROM herd_torch_pch)
endfunction()

# Sanitizer builds, each in a build directory of its own (scripts/test --asan,
# --tsan): "address" is ASan + UBSan, and under clang also libFuzzer's coverage and
# the fuzz targets (tests/fuzz); "thread" is TSan.
set(HERD_SANITIZE "" CACHE STRING "address or thread; empty: none")
set(HERD_FUZZ OFF)
if(HERD_SANITIZE)
  add_compile_definitions(HERD_SANITIZED=1)
endif()
if(HERD_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    add_compile_options(-fsanitize=fuzzer-no-link)
    set(HERD_FUZZ ON)
  endif()
elseif(HERD_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(NOT HERD_SANITIZE STREQUAL "")
  message(FATAL_ERROR "HERD_SANITIZE is '${HERD_SANITIZE}': address or thread")
endif()
