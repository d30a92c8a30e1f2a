# herd's parts and which may use which (README, "Architecture"). Called in a part's
# folder, herd_part() checks before its targets compile that every file there
# includes herd headers only from that folder and from the parts ALLOWS names, and,
# TORCH_FREE, no libtorch header: a wrong include fails the build, naming the file
# and line. The targets' link lines say the same in the linker's terms.
function(herd_part)
  cmake_parse_arguments(arg "TORCH_FREE" "" "TARGETS;ALLOWS" ${ARGN})
  file(RELATIVE_PATH part ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  file(GLOB_RECURSE files CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.h ${CMAKE_CURRENT_SOURCE_DIR}/*.cc
       ${CMAKE_CURRENT_SOURCE_DIR}/*.cu ${CMAKE_CURRENT_SOURCE_DIR}/*.cuh)
  string(REPLACE "/" "_" name ${part})
  set(stamp ${CMAKE_CURRENT_BINARY_DIR}/${name}.includes)
  set(script ${PROJECT_SOURCE_DIR}/cmake/HerdCheckIncludes.cmake)
  add_custom_command(OUTPUT ${stamp}
    COMMAND ${CMAKE_COMMAND} -DPART=${part} "-DALLOWS=${arg_ALLOWS}" -DTORCH_FREE=${arg_TORCH_FREE}
            "-DFILES=${files}" -DSTAMP=${stamp} -P ${script}
    DEPENDS ${files} ${script} VERBATIM COMMENT "include rules of ${part}/")
  add_custom_target(herd_${name}_includes DEPENDS ${stamp})
  foreach(target IN LISTS arg_TARGETS)
    add_dependencies(${target} herd_${name}_includes)
  endforeach()
endfunction()
