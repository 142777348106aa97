# Settings shared by the top-level build and the stand-alone kernels/ build.
include_guard(GLOBAL)

set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
set(CMAKE_EXPORT_COMPILE_COMMANDS ON)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE RelWithDebInfo CACHE STRING "Build type" FORCE)
endif()

find_program(KVTIER_CCACHE ccache)
if(KVTIER_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER ${KVTIER_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${KVTIER_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${KVTIER_CCACHE})
endif()

# CUDA is optional: found -> the CUDA kernels are compiled (sm_90a unless CMAKE_CUDA_ARCHITECTURES says
# otherwise); not found -> CPU only. KVTIER_CUDA=OFF forces the CPU-only build.
option(KVTIER_CUDA "Compile the CUDA kernels when a CUDA compiler is found" ON)
set(KVTIER_WITH_CUDA OFF)
if(KVTIER_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90a)
    endif()
    enable_language(CUDA)
    # CMake 3.25 does not know nvcc 13's C++20 flag; teach it.
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
    set(CMAKE_CUDA_STANDARD 20)
    string(APPEND CMAKE_CUDA_FLAGS " --expt-relaxed-constexpr")
    find_package(CUDAToolkit REQUIRED)
    set(KVTIER_WITH_CUDA ON)
  endif()
endif()
message(STATUS "kvtier: CUDA kernels ${KVTIER_WITH_CUDA} (archs: ${CMAKE_CUDA_ARCHITECTURES})")

# Project code builds warning-free; generated code (protobuf) does not get these flags.
# -Wno-restrict: GCC 12 at -O3 reports impossible overlaps inside std::string (GCC bug 105329).
function(kvtier_strict_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -Wno-missing-field-initializers>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wno-restrict>
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Werror,-Wno-missing-field-initializers>)
endfunction()

# Sanitizers for the whole build: -DKVTIER_SANITIZE=address,undefined or =thread.
set(KVTIER_SANITIZE "" CACHE STRING "Comma-separated sanitizers (address,undefined | thread)")
if(KVTIER_SANITIZE)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:-fsanitize=${KVTIER_SANITIZE}>
                      $<$<COMPILE_LANGUAGE:CXX,C>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX,C>:-fno-sanitize-recover=all>)
  add_link_options(-fsanitize=${KVTIER_SANITIZE})
endif()

# libFuzzer coverage on all of kvtier's code (the `fuzz` preset, clang only): every library the fuzz
# targets link is compiled with -fsanitize=fuzzer-no-link, so libFuzzer is guided by coverage of the
# request handlers, not only of the harness; the fuzz target itself links with -fsanitize=fuzzer.
option(KVTIER_FUZZ_COVERAGE "Compile all code with libFuzzer coverage (clang only)" OFF)
if(KVTIER_FUZZ_COVERAGE)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "KVTIER_FUZZ_COVERAGE needs clang (use the fuzz preset)")
  endif()
  add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:-fsanitize=fuzzer-no-link>)
endif()

# kvtier_test(NAME SOURCES... LIBS ... LABELS ...): one GoogleTest binary registered with ctest.
function(kvtier_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main Threads::Threads)
  kvtier_strict_warnings(${name})
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  # GPU tests skip with GTEST_SKIP when no GPU: ctest reports them as skipped, visibly.
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
                       SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
endfunction()
