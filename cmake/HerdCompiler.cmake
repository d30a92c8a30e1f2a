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
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow=local -Wnon-virtual-dtor
                            -Wno-missing-field-initializers
                            # GCC 12 reports std::string copies as overlapping at -O3 (GCC bug 105329).
                            -Wno-restrict>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${HERD_WERROR}>>:-Werror>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${HERD_WERROR}>>:-Werror=all-warnings>)

# libtorch libraries share one precompiled <torch/torch.h>: it is compiled once and
# reused, which saves most of the parse time of every libtorch translation unit.
# (Libraries only: executables are compiled -fPIE, which a -fPIC header can't serve.)
function(herd_use_torch target)
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
