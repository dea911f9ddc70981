// gemma-server's generation thread: `parallel` slots, each a Session (its own KV cache and prompt
// cache), and a loop that runs one batched forward per step over the next token of every
// decoding slot and one chunk of one slot's prompt, then one step (one encoder layer) of an image
// that a prompt needs. Queued jobs join free slots between steps;
// a returning conversation goes to the free slot whose cache holds a prefix of it.
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

#include "base/sys.h"
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

  // Set by the HTTP thread when its client has gone: the job stops before its next step, or is
  // skipped if it has not started.
  std::atomic<bool> cancel{false};
};

struct SlotStats {
  bool busy = false;
  std::string tag;   // the job's, when busy
  int n_cached = 0;  // positions its cache holds
  // When busy: the prompt's positions run (those from the prompt cache included) and in all;
  // whether it is generating; the steps of its image encoding run and in all (0 when none).
  int prompt_done = 0, prompt_size = 0;
  bool generating = false;
  int image_steps_done = 0, image_steps = 0;
};

struct GeneratorStats {
  int waiting = 0;     // queued jobs, the running ones excluded
  int slots_busy = 0;  // slots running a job
  std::vector<SlotStats> slots;
  int64_t completed = 0;      // answered in full ("stop" or "length")
  int64_t cancelled = 0;      // stopped or skipped because the client went away
  int64_t rejected = 0;       // refused because the queue was full
  int64_t failed = 0;         // internal errors
  int64_t prompt_tokens = 0;  // prompt positions evaluated (those from a prompt cache excluded)
  int64_t generated_tokens = 0;
  double busy_s = 0;  // time spent in forwards
};

struct GeneratorOptions {
  int ctx_size = 4096;  // context of each slot, in tokens
  int parallel = 4;     // slots: sequences generated at once
  int max_queue = 16;   // jobs that may wait for a slot
  // Prompt positions per step: how long a new prompt holds up the running streams' next tokens.
  int prompt_chunk = 64;
  bool log = true;
};

class Generator {
 public:
  // `engine` is used from the generation thread only from now on. Throws Error when the slots'
  // KV caches would not fit in the memory available.
  Generator(Engine& engine, const GeneratorOptions& options);
  // Stops the running jobs, fails the waiting ones and joins the thread.
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
  // "--parallel N x --ctx-size C: KV caches (F16) of M MB, A MB available", for the start log.
  const std::string& kv_summary() const { return kv_summary_; }
  // The client of `job` has gone: a waiting job leaves the queue at once (its place is free for
  // the next request, and it is done with finish_reason "cancelled"); a running one stops before
  // its next step.
  void cancel(const std::shared_ptr<Job>& job);

 private:
  struct Slot {
    std::unique_ptr<Session> session;
    std::shared_ptr<Job> job;  // null: free
    std::unique_ptr<Generation> gen;
    std::vector<const Image*> images;
    bool sampling = false;    // the prompt is in: decode steps follow
    Timer gen_timer;          // from the first sample
    uint64_t last_used = 0;   // admission order, for least-recently-used choice
    uint64_t last_chunk = 0;  // step of its last prompt chunk, for round-robin
  };

  void loop();
  // Moves queued jobs into free slots (under mutex_).
  void admit();
  // One batched forward over every busy slot's next rows, then one step of an image's encoding
  // when a prompt needs one; false when there was nothing to do.
  bool step();
  // The forward of step() and what follows it: logits sampled, text delivered, ended jobs done.
  void forward(const std::vector<SequenceRows>& rows, const std::vector<Slot*>& who);
  void start(Slot& slot);
  void deliver(Slot& slot, const std::string& text);
  // slot_stats_ of a busy slot from its session (under mutex_).
  void note_progress(const Slot& slot);
  void finish(Slot& slot, const std::string& error = "");
  // Rows of the slots: the next token of each decoding one, a chunk of one prompting one (the
  // one whose prompt waited longest); appends to `rows` and returns whose they are. `encoding`:
  // the slot whose image is being encoded, one at a time (a prompt whose next chunk needs an
  // image starts its encoding when none is under way), or null.
  std::vector<Slot*> pick_rows(std::vector<SequenceRows>& rows, Slot*& encoding);

  Engine& engine_;
  const GeneratorOptions options_;
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;  // counts admissions and steps
  std::string kv_summary_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  int reserved_ = 0;  // places held by requests being parsed
  bool stopping_ = false;
  GeneratorStats stats_;  // counters; waiting and slots are filled in by stats()
  std::vector<SlotStats> slot_stats_;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace gp
