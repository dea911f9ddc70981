// Shared by the command-line programs: flag checks CLI11 lacks, and the last-resort error line.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>

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

// The one line a tool prints for an exception that escaped the input checks: an allocation
// failure says what it means instead of "std::bad_alloc".
inline std::string error_message(const std::exception& e) {
  if (dynamic_cast<const std::bad_alloc*>(&e))
    return "out of memory (an input size too large for this machine, or a memory limit)";
  return e.what();
}

}  // namespace gp
