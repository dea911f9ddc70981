// The one error type for bad input: files, configs, images, requests.
// Its message names the file or field, what was expected, what was found and a likely cause.
#pragma once

#include <stdexcept>
#include <string>

namespace gp {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws Error(message) when cond is false; for checks on user input, not programmer mistakes.
inline void check(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

}  // namespace gp
