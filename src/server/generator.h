// gemma-server's generation thread: it owns the engine's one session (so a request that extends
// the previous conversation reuses its KV cache) and runs the queued jobs one at a time, in the
// order they came, handing each job's text to the HTTP thread that waits for it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/engine.h"

namespace gp {

struct Job {
  // Set before submit().
  std::string tag;  // names the job in the log ("chatcmpl-3")
  std::vector<int32_t> prompt;
  std::vector<Image> images;
  GenerateOptions options;
  bool stream = false;  // hand out the text as it comes

  // Progress, under `mutex`; `changed` is notified on each change.
  std::mutex mutex;
  std::condition_variable changed;
  bool done = false;
  std::string text;       // streaming: text not yet taken by the HTTP thread
  GenerateResult result;  // when done
  std::string error;      // when done: an internal error, empty when none

  // Set by the HTTP thread when its client has gone: the job stops at its next token, or is
  // skipped if it has not started.
  std::atomic<bool> cancel{false};
};

struct GeneratorStats {
  int waiting = 0;  // queued jobs, the running one excluded
  bool busy = false;
  int64_t completed = 0;  // answered in full ("stop" or "length")
  int64_t cancelled = 0;  // stopped or skipped because the client went away
  int64_t rejected = 0;   // refused because the queue was full
  int64_t failed = 0;     // internal errors
  int64_t generated_tokens = 0;
};

class Generator {
 public:
  // `engine` is used from the generation thread only from now on; `max_queue` jobs may wait
  // besides the running one.
  Generator(Engine& engine, int ctx_size, int max_queue, bool log);
  // Stops the running job, fails the waiting ones and joins the thread.
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Holds a place in the queue for a request still being parsed (its images decoded, its text
  // tokenized), so that this work counts against max_queue too; false (counted as rejected) when
  // max_queue jobs already wait or hold places.
  bool reserve();
  void unreserve();  // gives a place back without a job
  // Queues a job; false (counted as rejected) when max_queue jobs already wait. A job submitted
  // with `reserved` takes the place reserve() held and is never refused.
  bool submit(const std::shared_ptr<Job>& job, bool reserved = false);
  GeneratorStats stats() const;
  // The client of `job` has gone: a waiting job leaves the queue at once (its slot is free for
  // the next request, and it is done with finish_reason "cancelled"); a running one stops at its
  // next token.
  void cancel(const std::shared_ptr<Job>& job);

 private:
  void loop();
  void run(Job& job);

  Session session_;
  const int max_queue_;
  const bool log_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  int reserved_ = 0;  // places held by requests being parsed
  std::shared_ptr<Job> running_;
  bool stopping_ = false;
  GeneratorStats stats_;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace gp
