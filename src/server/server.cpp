#include "server/server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
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

// The socket of the connection this thread serves (HttpServer::process_and_close_socket), -1 when
// none (Server::serve_bytes): handlers run on their connection's thread.
thread_local int t_connection = -1;
// Set while ConnectionPool runs a connection beyond its cap: HttpServer then refuses it.
thread_local bool t_refuse = false;
// Whether this thread's current request was answered 408 or 431 by the connection loop (httplib's
// 400 for its unfinished head is not logged).
thread_local bool t_head_refused = false;
// Why the connection loop stopped reading this thread's current request body, if it did: httplib
// then answers 400 for the cut body, and the error handler says why instead.
enum class BodyRefusal { kNone, kTooLarge, kServerFull };
thread_local BodyRefusal t_body_refusal = BodyRefusal::kNone;

// A Content-Length value as HTTP defines it: one or more decimal digits.
bool is_decimal(const std::string& v) {
  return !v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Whether the client of a waiting request is still connected. A streamed answer asks its
// DataSink::is_writable; a non-streamed request waits with no response yet, and httplib 0.11 gives
// its handler no view of the connection (Request::is_connection_closed came in 0.19), so the
// handler polls its thread's connection socket.
class ClientWatch {
 public:
  // True when the client closed its side of the connection (or it broke); false when there is no
  // socket (Server::serve_bytes).
  bool gone() const {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
  }

 private:
  const int fd_ = t_connection;
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

// A response written as it is, on a connection then closed (HttpServer's 408, 431 and 503).
std::string whole_response(const char* status_line, const ApiError& e) {
  const std::string body = dump(error_body(e));
  return std::string("HTTP/1.1 ") + status_line +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         (e.status == 503 ? "\r\nRetry-After: 1" : "") + "\r\nConnection: close\r\n\r\n" + body;
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

// httplib's server with a connection loop of its own: httplib 0.11's has no deadline for a
// request's head, only a read timeout between bytes, so a client trickling a header byte every few
// seconds held its thread for ever; nor a bound on the head's size. Here each request's line and
// headers must arrive within head_timeout and hold at most kMaxHeadBytes; the body keeps the read
// timeout between bytes (and the server's --max-body).
class HttpServer : public httplib::Server {
 public:
  static constexpr size_t kMaxHeadBytes = 64 << 10;  // as common servers allow (nginx: 32 KB)

  std::chrono::milliseconds head_timeout{10000};
  // Bytes of request bodies all connections may hold at once (--max-body-total), and held now.
  size_t max_body_total = size_t{256} << 20;
  std::atomic<size_t> body_bytes_held{0};
  // Whole HTTP responses, written as they are: a head too slow (408) or too large (431), and a
  // connection beyond the cap (503).
  std::string head_timeout_response, head_too_large_response, busy_response;
  bool log = false;

  // One connection's requests answered as listen() answers them, from and into memory.
  std::string serve_bytes(const std::string& request) {
    MemoryStream stream(request);
    bool closed = false;
    for (size_t n = 0; n < keep_alive_max_count_ && !closed && stream.is_readable(); ++n)
      if (!process_request(stream, false, closed, [](httplib::Request&) {})) break;
    return stream.written;
  }

 private:
  // httplib's loop (process_server_socket), with the head's limits: the wait for a request's
  // first byte (at most the keep-alive timeout) counts against its deadline too, so a request
  // ties its thread for at most head_timeout before its handler runs. One stream for the whole
  // connection keeps the bytes of a pipelined next request.
  bool process_and_close_socket(socket_t sock) override {
    if (t_refuse) {
      refuse(sock);
      return false;
    }
    struct Serving {
      explicit Serving(int fd) { t_connection = fd; }
      ~Serving() { t_connection = -1; }
    } serving(sock);
    Connection conn(*this, sock);
    const auto keep_alive = std::chrono::seconds(keep_alive_timeout_sec_);
    bool ret = false;
    for (size_t left = keep_alive_max_count_; left > 0 && svr_sock_ != INVALID_SOCKET; --left) {
      const auto start = std::chrono::steady_clock::now();
      if (!conn.wait_for_request(std::min<std::chrono::milliseconds>(keep_alive, head_timeout)))
        break;
      conn.begin_request(start + head_timeout);
      bool closed = false;
      ret = process_request(conn, left == 1, closed, [&](httplib::Request& req) {
        conn.head_done();
        if (!body_length_ok(req)) conn.refuse_body();
      });
      conn.end_request();  // its body is freed
      if (conn.refused_head() || conn.refused_body()) {
        linger(sock);
        break;
      }
      if (!ret || closed) break;
    }
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ret;
  }

  // Whether the body's Content-Length, if any, is a number of bytes within --max-body. httplib
  // reads and discards a larger body before it answers 413 (for up to the read timeout between
  // bytes, for ever from a client that keeps sending), and reads "-5" as 2^64 - 5.
  bool body_length_ok(const httplib::Request& req) const {
    if (!req.has_header("Content-Length") || req.has_header("Transfer-Encoding")) return true;
    const std::string v = req.get_header_value("Content-Length");
    uint64_t n = 0;
    return is_decimal(v) && std::from_chars(v.data(), v.data() + v.size(), n).ec == std::errc() &&
           n <= payload_max_length_;
  }

  // After a 408, 413 or 431 the client may still be sending: closing on unread bytes would reset
  // the connection, and the client could lose the answer. So the answer is followed by the end of
  // the server's side, and what the client still sends is read for at most a second.
  static void linger(socket_t sock) {
    ::shutdown(sock, SHUT_WR);
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    char buf[4096];
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            end - std::chrono::steady_clock::now())
                            .count();
      pollfd p{sock, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0 ||
          ::recv(sock, buf, sizeof buf, 0) <= 0)
        return;
    }
  }

  // A connection beyond the cap, on the accepting thread: answered 503 and closed at once. The
  // bytes that already came are read first (best effort; see linger).
  void refuse(socket_t sock) const {
    char buf[4096];
    for (int i = 0; i < 16 && ::recv(sock, buf, sizeof buf, MSG_DONTWAIT) > 0; ++i) {
    }
    ::send(sock, busy_response.data(), busy_response.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    if (log) std::fprintf(stderr, "refused a connection: too many open (--max-connections)\n");
  }

  // A client's socket as httplib's SocketStream reads it (a read buffer, the read timeout between
  // bytes, is_writable false once the peer has gone), plus the head's deadline and size bound.
  class Connection : public httplib::Stream {
   public:
    Connection(HttpServer& server, int fd)
        : server_(server),
          fd_(fd),
          read_timeout_ms_(server.read_timeout_sec_ * 1000 + server.read_timeout_usec_ / 1000),
          write_timeout_ms_(server.write_timeout_sec_ * 1000 + server.write_timeout_usec_ / 1000) {}

    // Whether a request's first byte (or the end of the connection) comes within `timeout`.
    bool wait_for_request(std::chrono::milliseconds timeout) {
      return off_ < size_ || poll_for(POLLIN, timeout.count());
    }
    void begin_request(std::chrono::steady_clock::time_point deadline) {
      deadline_ = deadline;
      in_head_ = true;
      head_bytes_ = 0;
      t_head_refused = false;
      t_body_refusal = BodyRefusal::kNone;
    }
    // The request is answered and its body freed: the bytes it held go back to the server.
    void end_request() {
      server_.body_bytes_held -= body_bytes_;
      body_bytes_ = 0;
    }
    ~Connection() { end_request(); }
    // Called once the request's line and headers are read: the body has no deadline.
    void head_done() { in_head_ = false; }
    // Whether the request's head was answered 408 or 431: nothing more goes in or out.
    bool refused_head() const { return refused_; }
    // The body is not read (it ends at once for httplib, which then answers 413), and the
    // connection closes after the answer.
    void refuse_body() { body_refused_ = true; }
    bool refused_body() const { return body_refused_; }

    bool is_readable() const override { return off_ < size_ || poll_for(POLLIN, read_wait_ms()); }
    // As httplib's: the socket takes bytes, and the peer has not closed it (a readable socket
    // with nothing to peek at has reached its end).
    bool is_writable() const override {
      if (refused_ || !poll_for(POLLOUT, write_timeout_ms_)) return false;
      if (!poll_for(POLLIN, 0)) return true;
      char c;
      return ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
    }
    ssize_t read(char* ptr, size_t size) override {
      if (refused_) return -1;
      if (body_refused_) return 0;
      if (off_ == size_) {
        // Checked at each refill too: a head whose bytes never stop coming has the same deadline.
        const bool late = in_head_ && std::chrono::steady_clock::now() >= deadline_;
        const int64_t wait = read_wait_ms();
        if (late || !poll_for(POLLIN, wait)) {
          if (in_head_ && (late || wait < read_timeout_ms_)) {  // the deadline, not the timeout
            refuse_head(server_.head_timeout_response);
            if (server_.log)
              std::fprintf(stderr, "408: no whole request head within %.3g s (%s)\n",
                           server_.head_timeout.count() / 1000.0, peer().c_str());
          }
          return -1;
        }
        const ssize_t n = ::recv(fd_, buf_, sizeof buf_, 0);
        if (n <= 0) return n;
        off_ = 0;
        size_ = static_cast<size_t>(n);
      }
      const size_t n = std::min(size, size_ - off_);
      if (!in_head_ && !take_body_bytes(n)) return -1;  // 0 would end a body without a length
      if (in_head_ && (head_bytes_ += n) > kMaxHeadBytes) {
        refuse_head(server_.head_too_large_response);
        if (server_.log)
          std::fprintf(stderr, "431: a request head over %zu bytes (%s)\n", kMaxHeadBytes,
                       peer().c_str());
        return -1;
      }
      std::memcpy(ptr, buf_ + off_, n);
      off_ += n;
      return static_cast<ssize_t>(n);
    }
    ssize_t write(const char* ptr, size_t size) override {
      if (!is_writable()) return -1;
      return ::send(fd_, ptr, size, MSG_NOSIGNAL);
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const override {
      address(getpeername, ip, port);
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
      address(getsockname, ip, port);
    }
    socket_t socket() const override { return fd_; }

   private:
    // Counts n more bytes of the request's body against --max-body (which httplib checks only
    // for a Content-Length, not for a chunked body or one that ends with the connection) and
    // against the bytes of bodies the server holds at once; false, and the body refused, when
    // either would be exceeded.
    bool take_body_bytes(size_t n) {
      BodyRefusal why = BodyRefusal::kNone;
      if (body_bytes_ + n > server_.payload_max_length_) {
        why = BodyRefusal::kTooLarge;
      } else if (server_.body_bytes_held.fetch_add(n) + n > server_.max_body_total) {
        server_.body_bytes_held -= n;
        why = BodyRefusal::kServerFull;
      }
      if (why == BodyRefusal::kNone) {
        body_bytes_ += n;
        return true;
      }
      t_body_refusal = why;
      body_refused_ = true;
      return false;
    }
    // The read timeout, cut to what is left of the head's deadline while the head is read
    // (rounded up: a wait of 0 would end a read at once while the head still has time).
    int64_t read_wait_ms() const {
      if (!in_head_) return read_timeout_ms_;
      using namespace std::chrono;
      const auto left = ceil<milliseconds>(deadline_ - steady_clock::now()).count();
      return std::clamp<int64_t>(left, 0, read_timeout_ms_);
    }
    bool poll_for(short events, int64_t timeout_ms) const {
      pollfd p{fd_, events, 0};
      int r;
      do r = ::poll(&p, 1, static_cast<int>(timeout_ms));
      while (r < 0 && errno == EINTR);
      return r > 0;
    }
    // Answers `response` instead of httplib, whose 400 for the unfinished head is then neither
    // written nor logged.
    void refuse_head(const std::string& response) {
      refused_ = t_head_refused = true;
      ::send(fd_, response.data(), response.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    std::string peer() const {
      std::string ip;
      int port = 0;
      get_remote_ip_and_port(ip, port);
      return ip + ":" + std::to_string(port);
    }
    void address(int (*get)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
      sockaddr_storage a{};
      socklen_t len = sizeof a;
      char host[NI_MAXHOST] = {};
      if (get(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0 ||
          getnameinfo(reinterpret_cast<sockaddr*>(&a), len, host, sizeof host, nullptr, 0,
                      NI_NUMERICHOST) != 0)
        return;
      ip = host;
      port = ntohs(a.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&a)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&a)->sin_port);
    }

    HttpServer& server_;
    const int fd_;
    const int64_t read_timeout_ms_, write_timeout_ms_;
    std::chrono::steady_clock::time_point deadline_;
    bool in_head_ = false, refused_ = false, body_refused_ = false;
    size_t head_bytes_ = 0;  // of the current request's head, so far
    size_t body_bytes_ = 0;  // of the current request's body, so far (held in the server's count)
    char buf_[4096];
    size_t off_ = 0, size_ = 0;
  };

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
// per waiting connection up to a cap, so a few dozen slow connections cost threads, not service;
// beyond it up to `max_waiting` connections wait for a thread (each slow one holds its thread at
// most the head deadline, so they move), and more are refused at once: the job of such a
// connection runs on the accepting thread with t_refuse set (HttpServer answers 503 and closes).
class ConnectionPool : public httplib::TaskQueue {
 public:
  ConnectionPool(size_t max_threads, size_t max_waiting)
      : max_threads_(max_threads), max_waiting_(max_waiting) {}
  ~ConnectionPool() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    std::unique_lock<std::mutex> lock(mutex_);
    // Jobs are taken in order by the idle threads and the ones that may still start.
    if (jobs_.size() >= idle_ + (max_threads_ - threads_.size()) + max_waiting_) {
      lock.unlock();
      t_refuse = true;
      fn();
      t_refuse = false;
      return;
    }
    jobs_.push_back(std::move(fn));
    if (jobs_.size() > idle_ && threads_.size() < max_threads_) {
      try {
        threads_.emplace_back([this] { work(); });
        ++idle_;  // from now on: a thread that has not taken its first job is free too
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
    for (;;) {  // counted in idle_ while not running a job
      wake_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping, nothing left
      auto fn = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
      ++idle_;
    }
  }

  const size_t max_threads_, max_waiting_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false, warned_ = false;
};

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

  const ClientWatch client;
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
  for (size_t i = 0; i < s.slots.size(); ++i) {
    const SlotStats& t = s.slots[i];
    json slot = {{"id", i},
                 {"busy", t.busy},
                 {"request", t.busy ? json(t.tag) : json(nullptr)},
                 {"cached_tokens", t.n_cached}};
    if (t.busy) {
      slot["state"] = t.generating ? "generating" : t.image_steps > 0 ? "encoding_image" : "prompt";
      slot["prompt_tokens"] = {{"done", t.prompt_done}, {"total", t.prompt_size}};
      if (t.image_steps > 0)
        slot["image_encoding"] = {{"steps_done", t.image_steps_done}, {"steps", t.image_steps}};
    } else {
      slot["state"] = "idle";
    }
    slots.push_back(std::move(slot));
  }
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
  metric("gemma_request_body_bytes", "gauge",
         "bytes of request bodies held now (--max-body-total bounds them)",
         static_cast<double>(http.body_bytes_held.load()));
  metric("gemma_busy_seconds_total", "counter", "seconds spent in model forwards", s.busy_s);
  metric("gemma_generated_tokens_per_second", "gauge",
         "tokens generated per second of forwards, all slots together",
         s.busy_s > 0 ? s.generated_tokens / s.busy_s : 0);
  return out;
}

void Server::Impl::routes() {
  // Waiting requests hold a thread each: room for a full queue, the running ones and many more.
  const size_t threads = static_cast<size_t>(
      options.max_connections > 0 ? options.max_connections
                                  : std::max(256, options.max_queue + options.parallel + 64));
  http.new_task_queue = [threads] { return new ConnectionPool(threads, threads); };
  http.head_timeout = std::chrono::milliseconds(std::llround(options.header_timeout * 1000));
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%g", options.header_timeout);
  http.head_timeout_response =
      whole_response("408 Request Timeout",
                     ApiError(408, "invalid_request_error", "request_timeout",
                              std::string("the request line and headers did not arrive within ") +
                                  seconds + " s (--header-timeout)"));
  http.head_too_large_response =
      whole_response("431 Request Header Fields Too Large",
                     ApiError(431, "invalid_request_error", "headers_too_large",
                              "the request line and headers are over " +
                                  std::to_string(HttpServer::kMaxHeadBytes) + " bytes"));
  http.busy_response = whole_response(
      "503 Service Unavailable",
      ApiError(503, "server_error", "server_busy",
               "the server has too many open connections (--max-connections); retry later"));
  http.log = options.log;
  http.max_body_total = options.max_body_total;
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
    if (t_body_refusal == BodyRefusal::kTooLarge)
      reply_error(res, ApiError(413, "invalid_request_error", "request_too_large",
                                "the request body is over the limit of " +
                                    std::to_string(options.max_body) + " bytes (--max-body)"));
    else if (t_body_refusal == BodyRefusal::kServerFull)
      reply_error(
          res, ApiError(503, "server_error", "server_busy",
                        "the server holds its limit of " + std::to_string(options.max_body_total) +
                            " bytes of request bodies (--max-body-total); retry later"));
    else if (res.status == 404)
      reply_error(
          res, ApiError(404, "invalid_request_error", "not_found",
                        "no route " + req.method + " " + req.path +
                            " (the server has POST /v1/chat/completions, POST "
                            "/v1/completions, GET /v1/models, GET /health, GET /metrics, GET /)"));
    else if (res.status == 413 && !is_decimal(req.get_header_value("Content-Length")))
      reply_error(res,
                  ApiError(400, "invalid_request_error", "bad_request",
                           "the Content-Length header '" + req.get_header_value("Content-Length") +
                               "' is not a number of bytes"));
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
      if (t_head_refused) return;  // answered and logged by the connection loop
      std::fprintf(stderr, "%s %s %d (%s:%d)\n", req.method.c_str(), req.path.c_str(), res.status,
                   req.remote_addr.c_str(), req.remote_port);
    });
}

namespace {
const ServerOptions& checked(const ServerOptions& o) {
  check(o.ctx_size > 0, "--ctx-size must be at least 1, got " + std::to_string(o.ctx_size));
  check(o.parallel >= 1, "--parallel must be at least 1, got " + std::to_string(o.parallel));
  check(o.max_queue >= 0, "--max-queue must be at least 0, got " + std::to_string(o.max_queue));
  // Waiting and running requests hold a connection each: /health needs one more.
  check(o.max_connections == 0 || o.max_connections > o.max_queue + o.parallel,
        "--max-connections must be more than --max-queue + --parallel (" +
            std::to_string(o.max_queue + o.parallel) + "), got " +
            std::to_string(o.max_connections));
  check(o.max_body_total >= o.max_body, "--max-body-total must be at least --max-body (" +
                                            std::to_string(o.max_body) + "), got " +
                                            std::to_string(o.max_body_total));
  check(std::isfinite(o.header_timeout) && o.header_timeout >= 0.001 && o.header_timeout <= 3600,
        "--header-timeout must be from 0.001 to 3600 seconds, got " +
            std::to_string(o.header_timeout));
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
