// The chat page gemma-server serves at /: one HTML file with its script, no build step.
#pragma once

#include <string>

namespace gp {

const std::string& chat_page();

}  // namespace gp
