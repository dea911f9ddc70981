#include "server/generator.h"

#include <algorithm>
#include <cstdio>

#include "base/error.h"
#include "base/sys.h"

namespace gp {

namespace {
size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}
}  // namespace

Generator::Generator(Engine& engine, const GeneratorOptions& options)
    : engine_(engine), options_(options) {
  check(options.parallel >= 1 && options.parallel <= 256,
        "--parallel is " + std::to_string(options.parallel) + ", expected 1 to 256 slots");
  check(options.prompt_chunk >= 1, "--prompt-chunk is " + std::to_string(options.prompt_chunk) +
                                       ", expected at least 1 position");
  // Caches are allocated untouched (pages mapped as they fill): many slots would not fail here
  // but later, under load. Refuse at start what could never fit.
  const DType kv = engine.options().kv_dtype();
  const double mb =
      options.parallel *
      static_cast<double>(KvCache::bytes_for(engine.config().text, options.ctx_size, kv)) /
      (1 << 20);
  const double available = mem_available_mb();
  char line[256];
  std::snprintf(line, sizeof line,
                "--parallel %d x --ctx-size %d: KV caches (%s) of %.0f MB, %.0f MB available",
                options.parallel, options.ctx_size, dtype_name(kv), mb, available);
  kv_summary_ = line;
  check(available <= 0 || mb <= available,
        kv_summary_ + ": they do not fit (fewer slots, a smaller --ctx-size or --kv f16)");
  slots_.resize(options.parallel);
  for (Slot& s : slots_)
    s.session = std::make_unique<Session>(engine, options.ctx_size, options.prompt_chunk);
  slot_stats_.resize(options.parallel);
  thread_ = std::thread([this] { loop(); });
}

Generator::~Generator() {
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    left.swap(queue_);
  }
  wake_.notify_all();
  thread_.join();
  for (auto& job : left) {
    std::lock_guard<std::mutex> lock(job->mutex);
    job->error = "the server is shutting down";
    job->done = true;
    job->changed.notify_all();
  }
}

bool Generator::reserve() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (static_cast<int>(queue_.size()) + reserved_ >= options_.max_queue) {
    ++stats_.rejected;
    return false;
  }
  ++reserved_;
  return true;
}

void Generator::unreserve() {
  std::lock_guard<std::mutex> lock(mutex_);
  --reserved_;
}

bool Generator::submit(const std::shared_ptr<Job>& job, bool reserved) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (reserved) {
      --reserved_;
    } else if (static_cast<int>(queue_.size()) + reserved_ >= options_.max_queue) {
      ++stats_.rejected;
      return false;
    }
    queue_.push_back(job);
  }
  wake_.notify_one();
  return true;
}

void Generator::cancel(const std::shared_ptr<Job>& job) {
  job->cancel = true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = std::find(queue_.begin(), queue_.end(), job);
    if (it == queue_.end()) return;  // running (it stops before its next step) or done
    queue_.erase(it);
    ++stats_.cancelled;
  }
  std::lock_guard<std::mutex> lock(job->mutex);
  job->result.finish_reason = FinishReason::kCancelled;
  job->done = true;
  job->changed.notify_all();
}

GeneratorStats Generator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  GeneratorStats s = stats_;
  s.waiting = static_cast<int>(queue_.size());
  s.slots = slot_stats_;
  s.slots_busy = static_cast<int>(
      std::count_if(s.slots.begin(), s.slots.end(), [](const SlotStats& x) { return x.busy; }));
  return s;
}

void Generator::loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      const auto busy = [&] {
        return std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.job; });
      };
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || busy(); });
      if (stopping_) break;
      admit();
    }
    step();
  }
  for (Slot& s : slots_)  // shutting down: the running jobs end as cancelled
    if (s.job) {
      s.job->cancel = true;
      if (s.gen) s.gen->cancel();
      finish(s);
    }
}

void Generator::admit() {
  while (!queue_.empty()) {
    const std::shared_ptr<Job>& job = queue_.front();
    // The free slot whose cache is mostly a prefix of the prompt (a returning conversation),
    // the longest such; else the least recently used, so that a new conversation sharing only
    // the chat template's first tokens leaves the others' caches alone.
    Slot* best = nullptr;
    size_t best_prefix = 0;
    for (Slot& s : slots_) {
      if (s.job) continue;
      const size_t held = s.session->cached_ids().size();
      size_t p = common_prefix(s.session->cached_ids(), job->prompt);
      if (2 * p < held) p = 0;
      if (!best || p > best_prefix || (p == best_prefix && s.last_used < best->last_used)) {
        best = &s;
        best_prefix = p;
      }
    }
    if (!best) return;
    best->job = job;
    best->last_used = ++clock_;
    const size_t i = best - slots_.data();
    slot_stats_[i] = {};
    slot_stats_[i].busy = true;
    slot_stats_[i].tag = job->tag;
    slot_stats_[i].n_cached = best->session->n_cached();
    queue_.pop_front();
  }
}

void Generator::start(Slot& slot) {
  Job& job = *slot.job;
  slot.images.clear();
  for (const auto& img : job.images) slot.images.push_back(&img);
  slot.session->begin_prompt(job.prompt, slot.images);
  slot.gen = std::make_unique<Generation>(engine_, job.prompt, job.options);
  slot.sampling = false;
}

std::vector<Generator::Slot*> Generator::pick_rows(std::vector<SequenceRows>& rows,
                                                   Slot*& encoding) {
  std::vector<Slot*> who;
  std::vector<Slot*> prompting;  // slots with a pending prompt
  encoding = nullptr;
  for (Slot& s : slots_) {
    if (!s.job) continue;
    try {
      if (s.job->cancel) {
        if (s.gen) s.gen->cancel();
        finish(s);
      } else if (!s.gen) {
        start(s);
      }
      if (!s.job) continue;
      if (s.session->image_encoding()) {
        encoding = &s;
      } else if (s.session->prompt_pending()) {
        prompting.push_back(&s);
      } else if (!s.gen->done()) {
        rows.push_back(s.session->decode_rows(s.gen->next_id()));
        who.push_back(&s);
      }
    } catch (const std::exception& e) {
      finish(s, e.what());
    }
  }
  // The prompts in the order of their last chunk: the first whose next chunk is ready (its images
  // encoded) runs a chunk; one whose next chunk needs an image starts encoding it, when no image
  // is being encoded.
  std::stable_sort(prompting.begin(), prompting.end(),
                   [](const Slot* a, const Slot* b) { return a->last_chunk < b->last_chunk; });
  for (Slot* p : prompting) {
    try {
      if (!p->session->image_pending()) {
        rows.push_back(p->session->prompt_rows());
        who.push_back(p);
        p->last_chunk = clock_;
        break;  // one chunk per step
      }
      if (!encoding) {
        encoding = p;
        p->last_chunk = clock_;
      }
    } catch (const std::exception& e) {
      finish(*p, e.what());
    }
  }
  return who;
}

bool Generator::step() {
  ++clock_;
  std::vector<SequenceRows> rows;
  Slot* encoding = nullptr;
  const std::vector<Slot*> who = pick_rows(rows, encoding);
  forward(rows, who);
  // One step of an image's encoding after the others' tokens: they wait at most one encoder layer.
  if (encoding) {
    try {
      encoding->session->image_step();
      std::lock_guard<std::mutex> lock(mutex_);
      note_progress(*encoding);
    } catch (const std::exception& e) {
      finish(*encoding, e.what());
    }
  }
  return !rows.empty() || encoding;
}

void Generator::forward(const std::vector<SequenceRows>& rows, const std::vector<Slot*>& who) {
  if (rows.empty()) return;
  Timer t;
  try {
    engine_.text().forward(rows);
  } catch (const std::exception& e) {
    for (Slot* s : who) finish(*s, e.what());
    return;
  }
  const double dt = t.seconds();
  int64_t prompt_rows = 0, generated = 0;
  std::vector<Slot*> ended;
  for (size_t r = 0; r < who.size(); ++r) {
    Slot& s = *who[r];
    s.session->rows_ran();
    GenerateResult& g = s.gen->result();
    if (!s.sampling) {  // a chunk of its prompt
      s.session->prompt_result().prefill_s += dt;
      prompt_rows += static_cast<int64_t>(rows[r].rows->ids.size());
      if (s.session->prompt_pending()) continue;
      s.sampling = true;  // the prompt is in: its first token comes now
      s.gen_timer.reset();
    } else {
      ++g.n_decoded;
    }
    if (!s.gen->done()) {
      const size_t before = g.ids.size();
      deliver(s, s.gen->step(s.session->last_logits().data()));
      generated += static_cast<int64_t>(g.ids.size() - before);
    }
    if (s.gen->done()) ended.push_back(&s);
  }
  {  // counted before the ended jobs are answered, so that their clients see them in /metrics
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.busy_s += dt;
    stats_.prompt_tokens += prompt_rows;
    stats_.generated_tokens += generated;
    for (const Slot& s : slots_)
      if (s.job) note_progress(s);
  }
  for (Slot* s : ended) finish(*s);
}

void Generator::note_progress(const Slot& slot) {
  SlotStats& st = slot_stats_[&slot - slots_.data()];
  const Session& se = *slot.session;
  st.n_cached = se.n_cached();
  st.prompt_done = se.prompt_done();
  st.prompt_size = se.prompt_size();
  st.generating = slot.sampling;
  st.image_steps_done = se.image_steps_done();
  st.image_steps = se.image_steps();
}

void Generator::deliver(Slot& slot, const std::string& text) {
  if (text.empty() || !slot.job->stream) return;
  std::lock_guard<std::mutex> lock(slot.job->mutex);
  slot.job->text += text;
  slot.job->changed.notify_all();
}

void Generator::finish(Slot& slot, const std::string& error) {
  std::shared_ptr<Job> job = std::move(slot.job);
  GenerateResult r;
  if (slot.gen) {
    r = std::move(slot.gen->result());
    r.prefill = slot.session->prompt_result();
    if (slot.sampling) r.gen_s = slot.gen_timer.seconds();
  } else if (job->cancel) {
    r.finish_reason = FinishReason::kCancelled;
  }
  slot.gen.reset();
  slot.session->cancel_prompt();  // a paused image encoding's memory is freed now
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error.empty())
      ++stats_.failed;
    else if (r.finish_reason == FinishReason::kCancelled)
      ++stats_.cancelled;
    else
      ++stats_.completed;
    const size_t i = &slot - slots_.data();
    slot_stats_[i] = {};
    slot_stats_[i].n_cached = slot.session->n_cached();
  }
  if (options_.log) {
    if (!error.empty())
      std::fprintf(stderr, "%s: error: %s\n", job->tag.c_str(), error.c_str());
    else
      std::fprintf(stderr,
                   "%s: prompt %d tokens (%d cached, %d images) %.1f tokens/s; %zu generated "
                   "%.1f tokens/s (%s)\n",
                   job->tag.c_str(), r.prefill.n_tokens, r.prefill.n_reused, r.prefill.n_images,
                   r.prompt_tps(), r.ids.size(), r.gen_tps(), finish_reason_name(r.finish_reason));
  }
  std::lock_guard<std::mutex> lock(job->mutex);
  job->result = std::move(r);
  job->error = error;
  job->done = true;
  job->changed.notify_all();
}

}  // namespace gp
