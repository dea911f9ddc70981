// gemma-server: an OpenAI-compatible HTTP server over one loaded engine. POST /v1/chat/completions,
// POST /v1/completions, GET /v1/models, GET /health, GET /metrics and a chat page at /. Requests
// wait in one queue for one of `parallel` slots, generated together (see generator.h);
// docs/SERVER.md describes the API.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "runtime/engine.h"
#include "server/generator.h"

namespace gp {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8080;                 // 0: any free port (see Server::bind)
  int ctx_size = 4096;             // context of each slot, in tokens
  int parallel = 4;                // slots: requests generated at once, each with its own cache
  int prompt_chunk = 64;           // prompt positions per step beside the running streams
  int max_queue = 16;              // requests that may wait for a slot; more get 503
  std::string api_key;             // when set, /v1/ needs "Authorization: Bearer KEY"
  size_t max_body = 32u << 20;     // request bodies beyond this get 413
  // Bytes of request bodies held at once, over all connections; a body beyond it gets 503.
  size_t max_body_total = size_t{256} << 20;
  // Connections served at once, a thread each (0: 256, or max_queue + parallel + 64 when more);
  // as many more wait for a thread, and beyond those a connection gets 503 and is closed.
  int max_connections = 0;
  double header_timeout = 10;  // seconds for a request's line and headers to arrive, else 408
  std::string model_name;      // the id clients see; default: the checkpoint's directory name
  bool log = true;             // one line per request and per generation on stderr
};

class Server {
 public:
  // Serves `engine`, which the server's generation thread uses from now on, alone.
  Server(Engine& engine, const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port and returns the port (the one chosen when port is 0). Throws Error when the
  // address cannot be bound.
  int bind();
  // Serves on the bound socket until stop(); call bind() first.
  void listen();
  // Makes listen() return; safe from any thread.
  void stop();
  // The bytes a client sending `request` on one connection gets back, without a socket: each
  // request in it is parsed, routed and answered as listen() does (for tests and fuzz/).
  std::string serve_bytes(const std::string& request);

  const std::string& model_name() const;
  GeneratorStats stats() const;
  const std::string& kv_summary() const;  // Generator::kv_summary

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gp
