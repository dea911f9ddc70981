// Helpers shared by the fuzz targets: the fixtures, a scratch directory, the input split in parts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gp::fuzz {

// tests/data/<rel>
std::string data_path(const std::string& rel);
// A directory of this process in /dev/shm (memory; else the system temp dir), created on first
// use, removed at a normal exit.
std::string scratch_dir();
void write_file(const std::string& path, const std::string& bytes);
std::string read_file(const std::string& path);
// Copies tests/data/<model> into scratch_dir()/<name> (once) and returns its path.
std::string copy_fixture(const std::string& model, const std::string& name);

// The input cut at each form feed (\f) into at most `n` parts; missing parts are empty. One byte
// that JSON never holds raw, so the mutator moves the cut easily (it is in every dictionary).
std::vector<std::string> split_parts(const uint8_t* data, size_t size, size_t n);

}  // namespace gp::fuzz
