# ctest driver: install the build tree into a fresh prefix, move the prefix (the package must be
# relocatable), build tests/package against it with find_package(shoal), run the consumer.
# Inputs: BUILD_DIR SOURCE_DIR WORK_DIR CONFIG GENERATOR WITH_CUDA SANITIZE (the build's SHOAL_SANITIZE: a
# sanitized static library links only into a consumer built with the same sanitizer)
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${out}")
  set(out "${out}" PARENT_SCOPE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/staging" --config "${CONFIG}")
file(RENAME "${WORK_DIR}/staging" "${WORK_DIR}/moved")
# Under lib/, lib64/ or lib/<multiarch>/, as GNUInstallDirs picks for the platform and prefix.
file(GLOB_RECURSE version_files "${WORK_DIR}/moved/*/cmake/shoal/shoalConfigVersion.cmake")
if(NOT version_files)
  message(FATAL_ERROR "the install has no shoalConfigVersion.cmake")
endif()
set(sanitize_flags)
if(SANITIZE)
  set(sanitize_flags "-DCMAKE_CXX_FLAGS=-fsanitize=${SANITIZE}" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${SANITIZE}")
endif()
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=${CONFIG}
    "-DCMAKE_PREFIX_PATH=${WORK_DIR}/moved" -DWITH_CUDA=${WITH_CUDA} ${sanitize_flags})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build" --config "${CONFIG}")
run("${WORK_DIR}/build/consumer")

# Without the cuda component, the package must configure where no CUDA toolkit is found, even when it
# was installed with one: a FindCUDAToolkit that finds nothing stands in for a machine without it.
file(WRITE "${WORK_DIR}/no-cuda/FindCUDAToolkit.cmake" "set(CUDAToolkit_FOUND FALSE)\n")
# Asked for as an optional component, it is reported missing and the package is still found (once: a
# missing toolkit failed the whole find_package).
foreach(mode OFF OPTIONAL)
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build-no-cuda-${mode}" -G "${GENERATOR}"
      -DCMAKE_BUILD_TYPE=${CONFIG} "-DCMAKE_PREFIX_PATH=${WORK_DIR}/moved" "-DCMAKE_MODULE_PATH=${WORK_DIR}/no-cuda"
      -DWITH_CUDA=${mode} ${sanitize_flags})
  if(NOT out MATCHES "consumer: shoal_cuda_FOUND FALSE")
    message(FATAL_ERROR "without a CUDA toolkit (WITH_CUDA=${mode}) shoal_cuda_FOUND must be FALSE")
  endif()
endforeach()

# A component the package does not have, required, fails with a message that names it.
execute_process(COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build-bogus" -G "${GENERATOR}"
                        "-DCMAKE_PREFIX_PATH=${WORK_DIR}/moved" -DREQUIRE_COMPONENT=bogus
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0 OR NOT out MATCHES "shoal has no component \"bogus\"")
  message(FATAL_ERROR "a required unknown component must fail naming it (rc ${rc}):\n${out}")
endif()
