// Shared by the command-line programs: flag checks CLI11 lacks, and the last-resort error line.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <new>
#include <optional>
#include <string>

#include "base/error.h"
#include "runtime/engine.h"

namespace gp {

// CLI11's range checks compare, and every comparison with NaN is false: NaN would pass them all.
inline const CLI::Validator kFinite(
    [](std::string& s) -> std::string {
      char* end = nullptr;
      const double x = std::strtod(s.c_str(), &end);
      if (end == s.c_str() || *end != '\0' || !std::isfinite(x))
        return "'" + s + "' is not a finite number";
      return "";
    },
    "FINITE");

// --kv f16|f32: how the KV cache stores keys and values (EngineOptions::kv); refused at parse
// time with parse_kv_dtype's message otherwise.
inline CLI::Option* add_kv_option(CLI::App& app, std::optional<DType>& kv) {
  const CLI::Validator valid(
      [](std::string& s) -> std::string {
        try {
          parse_kv_dtype(s);
          return "";
        } catch (const Error& e) {
          return e.what();
        }
      },
      "f16|f32");
  return app
      .add_option_function<std::string>(
          "--kv", [&kv](const std::string& s) { kv = parse_kv_dtype(s); },
          "KV cache values: f16 (half the memory; the default) or f32 (the default with --exact)")
      ->check(valid);
}

// The one line a tool prints for an exception that escaped the input checks: an allocation
// failure says what it means instead of "std::bad_alloc".
inline std::string error_message(const std::exception& e) {
  if (dynamic_cast<const std::bad_alloc*>(&e))
    return "out of memory (an input size too large for this machine, or a memory limit)";
  return e.what();
}

}  // namespace gp
