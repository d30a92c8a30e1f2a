# Run at build time (cmake -P): writes the version source with the current git
# revision; configure_file leaves the file alone when nothing changed.
execute_process(COMMAND git -C "${SRC}" rev-parse --short=12 HEAD
                OUTPUT_VARIABLE HERD_GIT_REVISION OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT HERD_GIT_REVISION)
  set(HERD_GIT_REVISION "unknown")
endif()
execute_process(COMMAND git -C "${SRC}" status --porcelain --untracked-files=no
                OUTPUT_VARIABLE _dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(_dirty)
  string(APPEND HERD_GIT_REVISION "-dirty")
endif()
configure_file("${SRC}/common/version.cc.in" "${OUT}" @ONLY)
