// The server end to end: the input is the bytes a client sends on one connection; they go
// through httplib's request parser, the routes and the generation of the tiny-mobile fixture
// (context of 32 tokens, so every generation is short), and the answer bytes come back. Uses
// Server::serve_bytes, which feeds httplib an in-memory connection: no sockets, no threads per
// connection, one input is one connection.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "fuzz_util.h"
#include "runtime/engine.h"
#include "server/server.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static gp::Engine engine(gp::fuzz::data_path("tiny-mobile"), {.threads = 1, .progress = false});
  static const auto server = [] {
    gp::ServerOptions o;
    o.ctx_size = 32;
    o.max_queue = 2;
    o.max_body = 1 << 20;
    o.model_name = "tiny";
    o.log = false;
    return std::make_unique<gp::Server>(engine, o);
  }();
  const std::string out =
      server->serve_bytes(std::string(reinterpret_cast<const char*>(data), size));
  // Whatever came in, anything answered is HTTP.
  if (!out.empty() && out.compare(0, 9, "HTTP/1.1 ") != 0) abort();
  return 0;
}
