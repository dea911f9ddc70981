// Helpers shared by the tests: paths to the fixtures and small file readers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gp::test {

// tests/data/<rel>
std::string data_path(const std::string& rel);
// The shell command that runs build/bin/<tool>: its path, behind the emulator (qemu) in a
// cross build.
std::string bin_path(const std::string& tool);
// build/bin/<tool>, the file.
std::string bin_file(const std::string& tool);
// A fresh empty directory under the system temp dir, removed when the process exits.
std::string temp_dir(const std::string& tag);

std::vector<float> read_f32(const std::string& path);
std::vector<int32_t> read_ids(const std::string& path);  // comma-separated ids
std::string read_text(const std::string& path);
void write_text(const std::string& path, const std::string& text);

// Every IEEE half, 0 .. 65535; and f32 values at a prime stride over all 2^32 bit patterns,
// so every exponent (NaNs, infinities and subnormals included): the f16 conversion tests' inputs.
std::vector<uint16_t> every_half();
std::vector<float> floats_of_every_exponent();

// Runs a shell command; returns its exit status and puts stdout+stderr in `output`.
int run_command(const std::string& cmd, std::string* output);

}  // namespace gp::test
