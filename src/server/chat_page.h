// The chat page gemma-server serves at /: one HTML file with its script, no build step. Markdown
// is rendered by Debian's marked and sanitized by DOMPurify, embedded at build time from
// /usr/share (CMakeLists.txt) and served at /assets/; a build without them shows plain text.
#pragma once

#include <string>

namespace gp {

const std::string& chat_page();
// True when this build embeds marked and DOMPurify.
bool chat_page_has_markdown();
// The script served at /assets/NAME ("marked.js", "purify.js"); nullptr when there is none.
const char* chat_asset(const std::string& name);

}  // namespace gp
