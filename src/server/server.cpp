#include "server/server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "server/api.h"
#include "server/chat_page.h"

namespace gp {

using nlohmann::json;

namespace {

// Whether the client of a waiting request is still connected. A streamed answer asks its
// DataSink::is_writable; a non-streamed request waits with no response yet, and httplib 0.11 gives
// its handler no view of the connection (Request::is_connection_closed came in 0.19; the
// per-connection hook process_and_close_socket is private). So the request's socket is found once
// among the process's descriptors by its address pair (unique while the handler runs: the
// connection stays open until it returns) and polled.
class ClientWatch {
 public:
  explicit ClientWatch(const httplib::Request& req) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      const std::string name = entry.path().filename().string();
      if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
      const int fd = std::stoi(name);
      sockaddr_storage peer{}, local{};
      socklen_t peer_len = sizeof peer, local_len = sizeof local;
      if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0 &&
          getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) == 0 &&
          same_address(peer, req.remote_addr, req.remote_port) &&
          same_address(local, req.local_addr, req.local_port)) {
        fd_ = fd;
        return;
      }
    }
  }

  // True when the client closed its side of the connection (or it broke); false when no socket
  // was found (Server::serve_bytes).
  bool gone() const {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
  }

 private:
  static bool same_address(const sockaddr_storage& a, const std::string& addr, int port) {
    char text[INET6_ADDRSTRLEN] = {};
    int p = -1;
    if (a.ss_family == AF_INET) {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
      p = ntohs(in->sin_port);
      inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    } else if (a.ss_family == AF_INET6) {
      const auto* in = reinterpret_cast<const sockaddr_in6*>(&a);
      p = ntohs(in->sin6_port);
      inet_ntop(AF_INET6, &in->sin6_addr, text, sizeof text);
    }
    return p == port && addr == text;
  }

  int fd_ = -1;
};

// Sampling for the fields a request leaves out (ModelConfig::sampling).
SamplingParams default_sampling(const Engine& engine) {
  const SamplingDefaults& d = engine.config().sampling;
  SamplingParams s;
  s.temperature = d.temperature;
  s.top_k = d.top_k;
  s.top_p = d.top_p;
  return s;
}

std::string directory_name(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const std::string name = std::filesystem::path(path).filename().string();
  return name.empty() ? path : name;
}

void reply_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(error_body(e)), "application/json");
  if (e.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  if (e.status == 503) res.set_header("Retry-After", "1");
}

// Compares without stopping at the first difference, so the time taken tells nothing of the key.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() != b.size();
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i)
    diff |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

Completion completion_of(const GenerateResult& r) {
  Completion c;
  c.text = r.text;
  c.finish_reason = finish_reason_name(r.finish_reason);
  c.prompt_tokens = r.prefill.n_tokens;
  c.cached_tokens = r.prefill.n_reused;
  c.completion_tokens = static_cast<int>(r.ids.size());
  c.prompt_ms = (r.prefill.prefill_s + r.prefill.image_s) * 1000;
  c.predicted_ms = r.gen_s * 1000;
  c.prompt_per_second = r.prompt_tps();
  c.predicted_per_second = r.gen_tps();
  return c;
}

// httplib's server, with its request loop run over a Stream of our own (Server::serve_bytes).
class HttpServer : public httplib::Server {
 public:
  // One connection's requests answered as listen() answers them, from and into memory.
  std::string serve_bytes(const std::string& request) {
    MemoryStream stream(request);
    bool closed = false;
    for (size_t n = 0; n < keep_alive_max_count_ && !closed && stream.is_readable(); ++n)
      if (!process_request(stream, false, closed, [](httplib::Request&) {})) break;
    return stream.written;
  }

 private:
  // A connection whose client sent `in` and then waits for the answer.
  class MemoryStream : public httplib::Stream {
   public:
    explicit MemoryStream(const std::string& in) : in_(in) {}
    bool is_readable() const override { return pos_ < in_.size(); }
    bool is_writable() const override { return true; }
    ssize_t read(char* ptr, size_t size) override {
      const size_t n = std::min(size, in_.size() - pos_);
      std::memcpy(ptr, in_.data() + pos_, n);
      pos_ += n;
      return static_cast<ssize_t>(n);
    }
    ssize_t write(const char* ptr, size_t size) override {
      written.append(ptr, size);
      return static_cast<ssize_t>(size);
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const override {
      ip = "127.0.0.1";
      port = 0;
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
      ip = "127.0.0.1";
      port = 0;
    }
    socket_t socket() const override { return INVALID_SOCKET; }
    std::string written;

   private:
    const std::string& in_;
    size_t pos_ = 0;
  };
};

// httplib's ThreadPool has a fixed number of threads and an unbounded queue: slow clients that
// hold every thread (slowloris) leave even /health waiting behind them. This pool starts a thread
// per waiting connection up to a cap, so a few dozen slow connections cost threads, not service.
class ConnectionPool : public httplib::TaskQueue {
 public:
  explicit ConnectionPool(size_t max_threads) : max_threads_(max_threads) {}
  ~ConnectionPool() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(fn));
    if (jobs_.size() > idle_ && threads_.size() < max_threads_) {
      try {
        threads_.emplace_back([this] { work(); });
      } catch (const std::system_error& e) {
        // The connection waits for a free thread instead; say so once.
        if (!warned_)
          std::fprintf(stderr, "warning: cannot start a connection thread (%s)\n", e.what());
        warned_ = true;
      }
    }
    wake_.notify_one();
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ++idle_;
      wake_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping, nothing left
      auto fn = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  const size_t max_threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false, warned_ = false;
};

// Connection threads: each slow or idle connection holds one until its read timeout.
constexpr int kMaxConnections = 256;

constexpr auto kPoll =
    std::chrono::milliseconds(50);  // how often a waiting request checks its client

}  // namespace

struct Server::Impl {
  Impl(Engine& engine, const ServerOptions& options)
      : engine(engine),
        options(options),
        model(options.model_name.empty() ? directory_name(engine.dir().path())
                                         : options.model_name),
        created(static_cast<int64_t>(std::time(nullptr))),
        sampling(default_sampling(engine)),
        generator(engine, GeneratorOptions{options.ctx_size, options.parallel, options.max_queue,
                                           options.prompt_chunk, options.log}) {
    const Tokenizer& t = engine.tokenizer();
    for (int32_t id = 0; id < t.vocab_size(); ++id)
      max_piece_bytes = std::max(max_piece_bytes, t.token_bytes(id).size());
    max_piece_bytes = std::max<size_t>(max_piece_bytes, 1);
    routes();
  }

  void routes();
  void check_key(const httplib::Request& req) const;
  std::vector<int32_t> prompt_ids(const CompletionRequest& r) const;
  void completions(const httplib::Request& req, httplib::Response& res, bool chat);
  void stream(httplib::Response& res, std::shared_ptr<Job> job, const ResponseHead& head,
              bool include_usage);
  json health() const;
  std::string metrics() const;

  // Wraps a handler: API errors become OpenAI error objects, other failures 500.
  httplib::Server::Handler guarded(
      std::function<void(const httplib::Request&, httplib::Response&)> f) {
    return [f](const httplib::Request& req, httplib::Response& res) {
      try {
        f(req, res);
      } catch (const ApiError& e) {
        reply_error(res, e);
      } catch (const Error& e) {
        reply_error(res, invalid_request(e.what()));
      } catch (const std::exception& e) {
        reply_error(res, ApiError(500, "server_error", "internal_error", e.what()));
      }
    };
  }

  Engine& engine;
  const ServerOptions options;
  const std::string model;
  const int64_t created;
  const SamplingParams sampling;
  std::atomic<int64_t> next_id{0};
  size_t max_piece_bytes = 0;  // longest text one token stands for
  HttpServer http;
  socket_t listen_socket = INVALID_SOCKET;
  Generator generator;
};

void Server::Impl::check_key(const httplib::Request& req) const {
  if (options.api_key.empty()) return;
  std::string auth = req.get_header_value("Authorization");
  // HTTP auth schemes are case-insensitive: "bearer KEY" is "Bearer KEY".
  if (auth.size() > 7 && strncasecmp(auth.c_str(), "Bearer ", 7) == 0)
    auth.replace(0, 7, "Bearer ");
  if (auth.empty())
    throw ApiError(401, "invalid_request_error", "invalid_api_key",
                   "missing API key: send the header 'Authorization: Bearer KEY' (the server "
                   "runs with --api-key)");
  if (!same_secret(auth, "Bearer " + options.api_key))
    throw ApiError(401, "invalid_request_error", "invalid_api_key",
                   "wrong API key in the Authorization header (expected 'Bearer KEY' with the "
                   "server's --api-key)");
}

std::vector<int32_t> Server::Impl::prompt_ids(const CompletionRequest& r) const {
  const ModelConfig& c = engine.config();
  std::vector<int32_t> ids;
  // Every token spells at most max_piece_bytes bytes: text beyond ctx_size times that cannot fit,
  // and is refused before the tokenizer spends memory and time on it.
  size_t text_bytes = r.prompt.size();
  for (const auto& m : r.messages) text_bytes += m.text.size();
  const size_t budget = static_cast<size_t>(options.ctx_size) * max_piece_bytes;
  if (text_bytes > budget)
    throw invalid_request("the prompt is " + std::to_string(text_bytes) +
                              " bytes, more than the context size of " +
                              std::to_string(options.ctx_size) + " tokens (--ctx-size) can hold",
                          r.chat ? "messages" : "prompt", "context_length_exceeded");
  if (r.chat) {
    if (!r.images.empty() && !engine.layout().vision)
      throw invalid_request("the model '" + model +
                                "' has no vision tower (a text-only "
                                "checkpoint): send text only",
                            "messages", "images_not_supported");
    try {
      ids = engine.chat_prompt(r.messages);
    } catch (const Error& e) {
      throw invalid_request(e.what(), "messages");
    }
    // Image tokens written in the text would take an image that is not there.
    const auto n_soft = std::count(ids.begin(), ids.end(), c.image_token);
    if (n_soft != static_cast<int64_t>(r.images.size()) * c.mm_tokens_per_image)
      throw invalid_request("the message text holds image tokens ('" +
                                engine.chat_pieces().image_soft_token +
                                "'); send images as image_url parts",
                            "messages");
  } else if (r.prompt_is_ids) {
    ids = r.prompt_ids;
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] >= c.text.n_vocab || ids[i] == c.image_token)
        throw invalid_request("'prompt[" + std::to_string(i) + "]' is " + std::to_string(ids[i]) +
                                  ", expected a text token id below " +
                                  std::to_string(c.text.n_vocab),
                              "prompt");
  } else {
    ids = engine.tokenizer().encode(r.prompt);
    if (std::count(ids.begin(), ids.end(), c.image_token))
      throw invalid_request(
          "the prompt holds image tokens; images are sent to "
          "/v1/chat/completions",
          "prompt");
    ids.insert(ids.begin(), c.bos_token);
  }
  if (ids.empty()) throw invalid_request("the prompt is empty", r.chat ? "messages" : "prompt");
  if (static_cast<int>(ids.size()) > options.ctx_size)
    throw invalid_request("the prompt is " + std::to_string(ids.size()) +
                              " tokens, over the context size of " +
                              std::to_string(options.ctx_size) + " (--ctx-size)",
                          r.chat ? "messages" : "prompt", "context_length_exceeded");
  return ids;
}

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  check_key(req);
  // Only JSON: a browser page on another origin may POST text/plain (or a form) without asking
  // first (a "simple" request), but never application/json.
  const std::string type = req.get_header_value("Content-Type");
  std::string media = type.substr(0, type.find(';'));
  media.erase(media.find_last_not_of(" \t") + 1);
  if (strcasecmp(media.c_str(), "application/json") != 0)
    throw ApiError(415, "invalid_request_error", "unsupported_media_type",
                   "the body must be JSON sent with 'Content-Type: application/json' (got " +
                       (type.empty() ? std::string("no Content-Type") : "'" + type + "'") + ")");
  // The place in the queue is taken before the body is parsed: decoding its images and
  // tokenizing its text are work that a full queue must refuse too.
  auto busy = [&] {
    return ApiError(503, "server_error", "server_busy",
                    "the server is busy: " + std::to_string(options.max_queue) +
                        " requests already wait (--max-queue); retry later");
  };
  if (!generator.reserve()) throw busy();
  struct Place {
    Generator& g;
    bool held = true;
    ~Place() {
      if (held) g.unreserve();
    }
  } place{generator};
  CompletionRequest r = parse_completion_request(req.body, chat, model, sampling);
  auto job = std::make_shared<Job>();
  job->prompt = prompt_ids(r);
  job->images = std::move(r.images);
  job->stream = r.stream;
  // Never past the context: the last token sampled needs no room in the cache.
  const int room = options.ctx_size - static_cast<int>(job->prompt.size()) + 1;
  job->options.max_tokens = std::min(r.max_tokens.value_or(room), room);
  job->options.sampling = r.sampling;
  job->options.stop_strings = r.stop;
  job->options.ignore_stop_tokens = r.ignore_eos;
  const ResponseHead head{chat, (chat ? "chatcmpl-" : "cmpl-") + std::to_string(++next_id), model,
                          static_cast<int64_t>(std::time(nullptr))};
  job->tag = head.id;
  place.held = false;
  generator.submit(job, true);
  if (r.stream) return stream(res, job, head, r.include_usage);

  const ClientWatch client(req);
  std::unique_lock<std::mutex> lock(job->mutex);
  while (!job->done)
    if (!job->changed.wait_for(lock, kPoll, [&] { return job->done; }) && client.gone()) {
      lock.unlock();
      generator.cancel(job);
      lock.lock();
    }
  if (!job->error.empty())
    throw ApiError(500, "server_error", "internal_error", "generation failed: " + job->error);
  res.set_content(dump(completion_response(head, completion_of(job->result))), "application/json");
}

void Server::Impl::stream(httplib::Response& res, std::shared_ptr<Job> job,
                          const ResponseHead& head, bool include_usage) {
  res.set_header("Cache-Control", "no-cache");
  auto first = std::make_shared<bool>(true);
  Generator* generator = &this->generator;
  res.set_chunked_content_provider(
      "text/event-stream",
      [job, head, include_usage, first, generator](size_t, httplib::DataSink& sink) {
        std::string text, error;
        bool done;
        {
          std::unique_lock<std::mutex> lock(job->mutex);
          job->changed.wait_for(lock, kPoll, [&] { return job->done || !job->text.empty(); });
          text.swap(job->text);
          done = job->done;
          error = job->error;
        }
        std::string out;
        if (*first && head.chat) out += sse_event(stream_chunk(head, "assistant", "", ""));
        *first = false;
        if (!text.empty()) out += sse_event(stream_chunk(head, "", text, ""));
        if (done && !error.empty()) {
          out += sse_event(error_body(
              ApiError(500, "server_error", "internal_error", "generation failed: " + error)));
        } else if (done) {
          const Completion c = completion_of(job->result);
          out += sse_event(stream_chunk(head, "", "", c.finish_reason, &c));
          if (include_usage) out += sse_event(usage_chunk(head, c));
          out += "data: [DONE]\n\n";
        }
        // is_writable: false once the client has closed its side, even while nothing is written.
        if (!sink.is_writable() || (!out.empty() && !sink.write(out.data(), out.size()))) {
          generator->cancel(job);
          return false;
        }
        if (done) sink.done();
        return true;
      },
      [job, generator](bool success) {
        if (!success) generator->cancel(job);
      });
}

json Server::Impl::health() const {
  const GeneratorStats s = generator.stats();
  json slots = json::array();
  for (size_t i = 0; i < s.slots.size(); ++i)
    slots.push_back({{"id", i},
                     {"busy", s.slots[i].busy},
                     {"request", s.slots[i].busy ? json(s.slots[i].tag) : json(nullptr)},
                     {"cached_tokens", s.slots[i].n_cached}});
  return {{"status", "ok"},
          {"model", model},
          {"ctx_size", options.ctx_size},
          {"busy", s.slots_busy > 0},
          {"slots_busy", s.slots_busy},
          {"slots", slots},
          {"waiting", s.waiting},
          {"max_queue", options.max_queue},
          {"completed", s.completed},
          {"cancelled", s.cancelled},
          {"rejected", s.rejected},
          {"failed", s.failed},
          {"generated_tokens", s.generated_tokens}};
}

// Prometheus text format (version 0.0.4): one HELP, TYPE and sample line per metric.
std::string Server::Impl::metrics() const {
  const GeneratorStats s = generator.stats();
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, double value,
                    const std::string& labels = "") {
    char v[64];
    std::snprintf(v, sizeof v, "%.17g", value);
    if (out.find(std::string("# TYPE ") + name + " ") == std::string::npos)
      out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    out += std::string(name) + labels + " " + v + "\n";
  };
  const char* requests = "requests finished, by result";
  metric("gemma_requests_total", "counter", requests, s.completed, "{result=\"completed\"}");
  metric("gemma_requests_total", "counter", requests, s.cancelled, "{result=\"cancelled\"}");
  metric("gemma_requests_total", "counter", requests, s.failed, "{result=\"failed\"}");
  metric("gemma_requests_total", "counter", requests, s.rejected, "{result=\"rejected\"}");
  metric("gemma_prompt_tokens_total", "counter",
         "prompt tokens evaluated (those from a prompt cache excluded)", s.prompt_tokens);
  metric("gemma_generated_tokens_total", "counter", "tokens generated", s.generated_tokens);
  metric("gemma_queue_length", "gauge", "requests waiting for a slot", s.waiting);
  metric("gemma_slots_busy", "gauge", "slots running a request", s.slots_busy);
  metric("gemma_slots", "gauge", "slots (--parallel)", static_cast<double>(s.slots.size()));
  metric("gemma_busy_seconds_total", "counter", "seconds spent in model forwards", s.busy_s);
  metric("gemma_generated_tokens_per_second", "gauge",
         "tokens generated per second of forwards, all slots together",
         s.busy_s > 0 ? s.generated_tokens / s.busy_s : 0);
  return out;
}

void Server::Impl::routes() {
  // Waiting requests hold a thread each: room for a full queue, the running ones and many more.
  const size_t threads =
      static_cast<size_t>(std::max(kMaxConnections, options.max_queue + options.parallel + 64));
  http.new_task_queue = [threads] { return new ConnectionPool(threads); };
  // httplib sets SO_REUSEPORT too, with which a second server on the same port starts silently
  // and takes half the connections: SO_REUSEADDR alone makes that bind fail.
  // The callback gets the listening socket before it is bound (the last one it gets is the one
  // that bound): bind() raises its backlog.
  http.set_socket_options([this](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_socket = sock;
  });
  // A client silent for this long between bytes is dropped, idle keep-alive connections sooner.
  http.set_read_timeout(std::chrono::seconds(10));
  http.set_keep_alive_timeout(2);
  http.set_keep_alive_max_count(100);
  http.set_payload_max_length(options.max_body);
  http.set_tcp_nodelay(true);  // a streamed token goes out at once, not after the last one's ACK

  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(chat_page(), "text/html; charset=utf-8");
  });
  for (const char* name : {"marked.js", "purify.js"})
    if (const char* script = chat_asset(name))
      http.Get(std::string("/assets/") + name,
               [script](const httplib::Request&, httplib::Response& res) {
                 res.set_header("Cache-Control", "max-age=86400");
                 res.set_content(script, "text/javascript; charset=utf-8");
               });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics(), "text/plain; version=0.0.4");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump(health()), "application/json");
  });
  http.Get("/v1/models", guarded([this](const httplib::Request& req, httplib::Response& res) {
             check_key(req);
             res.set_content(dump(models_response(model, created)), "application/json");
           }));
  http.Get("/v1/models/(.+)", guarded([this](const httplib::Request& req, httplib::Response& res) {
             check_key(req);
             if (req.matches[1] != model)
               throw ApiError(404, "invalid_request_error", "model_not_found",
                              "the model '" + std::string(req.matches[1]) +
                                  "' does not exist; this server serves '" + model + "'",
                              "model");
             res.set_content(dump(model_object(model, created)), "application/json");
           }));
  http.Post("/v1/chat/completions",
            guarded([this](const httplib::Request& req, httplib::Response& res) {
              completions(req, res, true);
            }));
  http.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
              completions(req, res, false);
            }));
  http.Get("/v1/(chat/)?completions", [](const httplib::Request& req, httplib::Response& res) {
    reply_error(res, ApiError(405, "invalid_request_error", "method_not_allowed",
                              req.path + " takes POST requests"));
  });

  // httplib's own refusals (no route, body too large, bad HTTP) get an error object too.
  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404)
      reply_error(
          res, ApiError(404, "invalid_request_error", "not_found",
                        "no route " + req.method + " " + req.path +
                            " (the server has POST /v1/chat/completions, POST "
                            "/v1/completions, GET /v1/models, GET /health, GET /metrics, GET /)"));
    else if (res.status == 413)
      reply_error(res, ApiError(413, "invalid_request_error", "request_too_large",
                                "the request body is " + req.get_header_value("Content-Length") +
                                    " bytes, over the limit of " +
                                    std::to_string(options.max_body) + " (--max-body)"));
    else
      reply_error(res, ApiError(res.status, "invalid_request_error", "bad_request",
                                "the server could not read the request (HTTP status " +
                                    std::to_string(res.status) + ")"));
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        reply_error(res, ApiError(500, "server_error", "internal_error", what));
      });
  if (options.log)
    http.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::fprintf(stderr, "%s %s %d (%s:%d)\n", req.method.c_str(), req.path.c_str(), res.status,
                   req.remote_addr.c_str(), req.remote_port);
    });
}

namespace {
const ServerOptions& checked(const ServerOptions& o) {
  check(o.ctx_size > 0, "--ctx-size must be at least 1, got " + std::to_string(o.ctx_size));
  check(o.parallel >= 1, "--parallel must be at least 1, got " + std::to_string(o.parallel));
  check(o.max_queue >= 0, "--max-queue must be at least 0, got " + std::to_string(o.max_queue));
  return o;
}
}  // namespace

Server::Server(Engine& engine, const ServerOptions& options)
    : impl_(std::make_unique<Impl>(engine, checked(options))) {}

Server::~Server() { stop(); }

int Server::bind() {
  const auto& o = impl_->options;
  int port = o.port;
  if (port == 0)
    port = impl_->http.bind_to_any_port(o.host);
  else if (!impl_->http.bind_to_port(o.host, port))
    port = -1;
  check(port > 0, "cannot listen on " + o.host + ":" + std::to_string(o.port) +
                      " (address in use, or not an address of this machine?)");
  // httplib listens with a backlog of 5: a burst of new clients beyond that loses its SYNs, which
  // cost a second each to resend. Listening again on the bound socket raises the backlog.
  ::listen(impl_->listen_socket, SOMAXCONN);
  return port;
}

void Server::listen() { impl_->http.listen_after_bind(); }

void Server::stop() { impl_->http.stop(); }

std::string Server::serve_bytes(const std::string& request) {
  return impl_->http.serve_bytes(request);
}

const std::string& Server::model_name() const { return impl_->model; }

GeneratorStats Server::stats() const { return impl_->generator.stats(); }

const std::string& Server::kv_summary() const { return impl_->generator.kv_summary(); }

}  // namespace gp
