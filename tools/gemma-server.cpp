// gemma-server: an OpenAI-compatible HTTP server (chat and text completions, streaming, images)
// with a chat page, over one Gemma 3 checkpoint. See docs/SERVER.md.
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>

#include "base/error.h"
#include "runtime/engine.h"
#include "server/server.h"
#include "tool_util.h"

namespace {

using namespace gp;

bool loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

int run(const std::string& model, const EngineOptions& engine_options,
        const ServerOptions& options) {
  std::fprintf(stderr, "loading %s ...\n", model.c_str());
  Engine engine(model, engine_options);
  Server server(engine, options);
  std::fprintf(stderr, "%s\n", server.kv_summary().c_str());
  const int port = server.bind();
  if (!loopback(options.host) && options.api_key.empty())
    std::fprintf(stderr,
                 "warning: listening on %s without --api-key: anyone who reaches this "
                 "address can use the model\n",
                 options.host.c_str());
  std::fprintf(stderr, "model '%s' loaded in %.2f s%s; listening on http://%s:%d/\n",
               server.model_name().c_str(), engine.load_seconds(), repack_summary(engine).c_str(),
               options.host.c_str(), port);
  server.listen();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "gemma-server: an OpenAI-compatible server (/v1/chat/completions, /v1/completions, "
      "/v1/models, /health) and a chat page at /, for a Gemma 3 checkpoint"};
  std::string model;
  EngineOptions eo;
  ServerOptions o;
  app.add_option("model", model, "checkpoint directory")->required();
  app.add_option("--host", o.host, "address to listen on (loopback by default)");
  app.add_option("--port", o.port, "port (0: any free port, printed at start)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--ctx-size", o.ctx_size, "context size in tokens")->check(CLI::PositiveNumber);
  app.add_option("--parallel", o.parallel,
                 "requests generated at once, each in a slot with its own KV cache and prompt "
                 "cache (their KV bytes are printed at start)")
      ->check(CLI::Range(1, 256));
  app.add_option("--prompt-chunk", o.prompt_chunk,
                 "prompt positions evaluated per step beside the running streams")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-queue", o.max_queue,
                 "requests that may wait for a slot; more get 503 at once")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--api-key", o.api_key, "require 'Authorization: Bearer KEY' on /v1/")
      ->envname("GEMMA_API_KEY");
  app.add_option("--max-body", o.max_body, "largest request body in bytes (413 beyond)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-body-total", o.max_body_total,
                 "bytes of request bodies held at once, all connections together (503 beyond)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-connections", o.max_connections,
                 "connections served at once, a thread each (0: 256, more for a long "
                 "--max-queue); as many more wait, and beyond them a connection gets 503")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--header-timeout", o.header_timeout,
                 "seconds a request's line and headers may take to arrive (408 and closed after)");
  app.add_option("--alias", o.model_name, "model id clients see (default: the directory name)");
  bool quiet = false;
  app.add_flag("-q,--quiet", quiet, "no log line per request");
  gp::add_engine_options(app, eo);
  return gp::run_tool("gemma-server", app, argc, argv, [&] {
    o.log = !quiet;
    // A client that goes away mid-answer must not end the server.
    std::signal(SIGPIPE, SIG_IGN);
    return run(model, eo, o);
  });
}
