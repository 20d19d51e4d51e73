# Compiler settings of shoal's own targets. Nothing here touches global flags: warnings travel through
# the shoal_warnings interface target, ISA flags are set per kernel source file.

add_library(shoal_warnings INTERFACE)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(shoal_warnings INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${SHOAL_WARNINGS_AS_ERRORS}>>:-Werror>)
endif()

if(SHOAL_SANITIZE)
  add_compile_options(-fsanitize=${SHOAL_SANITIZE} -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=${SHOAL_SANITIZE})
  if(SHOAL_SANITIZE MATCHES "thread")
    add_compile_definitions(SHOAL_TSAN=1)  # see src/core/parallel.hpp
  endif()
endif()

# shoal_kernel_isa_flags(<target> <file> <SSE42|AVX2|AVX512|AMX> ...)
# Adds per-ISA kernel sources to <target> with their instruction-set flags, on x86-64 GCC/Clang only;
# elsewhere the scalar kernels serve alone. Library code never gets -march=native.
function(shoal_kernel_isa_flags target)
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64" OR NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    return()
  endif()
  set(args ${ARGN})
  while(args)
    list(POP_FRONT args file isa)
    if(isa STREQUAL "SSE42")
      set(flags -msse4.2)
    elseif(isa STREQUAL "AVX2")
      set(flags -mavx2 -mfma -mf16c)
    elseif(isa STREQUAL "AVX512" OR isa STREQUAL "AMX")
      set(flags -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512dq -mavx512vl)
      if(isa STREQUAL "AMX")
        # The AMX tile unit with bfloat16 products, and AVX512-BF16 for the float -> bfloat16 conversion.
        include(CheckCXXCompilerFlag)
        check_cxx_compiler_flag("-mamx-tile -mamx-bf16 -mavx512bf16" SHOAL_COMPILER_HAS_AMX)
        # Linux only: the process asks the kernel for the tile state (arch_prctl).
        if(NOT SHOAL_COMPILER_HAS_AMX OR NOT CMAKE_SYSTEM_NAME STREQUAL "Linux")
          continue()  # the amx level then simply does not exist in this build
        endif()
        list(APPEND flags -mamx-tile -mamx-bf16 -mavx512bf16)
        target_compile_definitions(${target} PRIVATE SHOAL_HAVE_AMX_KERNELS=1)
      endif()
      if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
        # GCC 12 flags _mm512_undefined_* inside its own intrinsics when Eigen's AVX-512 packets inline
        # (a known false positive); keep the rest of -Wall on for this file.
        list(APPEND flags -Wno-maybe-uninitialized -Wno-uninitialized)
      endif()
    else()
      message(FATAL_ERROR "shoal_kernel_isa_flags: unknown ISA '${isa}'")
    endif()
    target_sources(${target} PRIVATE ${file})
    set_source_files_properties(${file} TARGET_DIRECTORY ${target} PROPERTIES COMPILE_OPTIONS "${flags}")
  endwhile()
  target_compile_definitions(${target} PRIVATE SHOAL_HAVE_X86_KERNELS=1)
endfunction()
