# Cross build for 64-bit ARM Linux with Debian's cross compiler (crossbuild-essential-arm64):
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
# The libraries come from Debian's arm64 packages: the Multi-Arch ones installed beside the host's
# (/usr/lib/aarch64-linux-gnu), the others unpacked into GP_AARCH64_SYSROOT (.ci/aarch64 does
# both). Tests and tools run through qemu-aarch64-static, so `ctest --test-dir build-aarch64`
# works on an x86 machine.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Not a CMake sysroot (the compiler keeps its own): a folder of unpacked arm64 packages.
if(NOT GP_AARCH64_SYSROOT)
  set(GP_AARCH64_SYSROOT "${CMAKE_CURRENT_LIST_DIR}/../build-aarch64-sysroot")
endif()
get_filename_component(GP_AARCH64_SYSROOT "${GP_AARCH64_SYSROOT}" ABSOLUTE)
set(GP_AARCH64_SYSROOT "${GP_AARCH64_SYSROOT}" CACHE PATH "Unpacked arm64 packages")
# CMake reads this file again for each try_compile project of the first configure: without the
# folder handed on, those would point pkg-config below at the default folder for the rest of
# that configure.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES GP_AARCH64_SYSROOT)

# Only the arm64 pkg-config files: the Multi-Arch ones, then the unpacked ones.
set(ENV{PKG_CONFIG_LIBDIR}
    "${GP_AARCH64_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# qemu looks up absolute paths (the dynamic loader, the libraries) under -L first.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static -L "${GP_AARCH64_SYSROOT}")
