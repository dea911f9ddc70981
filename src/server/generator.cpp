#include "server/generator.h"

#include <algorithm>
#include <cstdio>

namespace gp {

Generator::Generator(Engine& engine, int ctx_size, int max_queue, bool log)
    : session_(engine, ctx_size), max_queue_(max_queue), log_(log), thread_([this] { loop(); }) {}

Generator::~Generator() {
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    if (running_) running_->cancel = true;
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
  if (static_cast<int>(queue_.size()) + reserved_ >= max_queue_) {
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
    } else if (static_cast<int>(queue_.size()) + reserved_ >= max_queue_) {
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
    if (it == queue_.end()) return;  // running (it stops at its next token) or done
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
  s.busy = running_ != nullptr;
  return s;
}

void Generator::loop() {
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = running_ = queue_.front();
      queue_.pop_front();
    }
    run(*job);
    std::lock_guard<std::mutex> lock(mutex_);
    running_.reset();
  }
}

void Generator::run(Job& job) {
  GenerateResult r;
  std::string error;
  if (job.cancel) {
    r.finish_reason = FinishReason::kCancelled;
  } else {
    std::vector<const Image*> images;
    for (const auto& img : job.images) images.push_back(&img);
    try {
      r = generate(session_, job.prompt, images, job.options, [&](const std::string& text) {
        if (job.cancel) return false;
        if (job.stream) {
          std::lock_guard<std::mutex> lock(job.mutex);
          job.text += text;
          job.changed.notify_all();
        }
        return true;
      });
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error.empty())
      ++stats_.failed;
    else if (r.finish_reason == FinishReason::kCancelled)
      ++stats_.cancelled;
    else
      ++stats_.completed;
    stats_.generated_tokens += static_cast<int64_t>(r.ids.size());
  }
  if (log_) {
    if (!error.empty())
      std::fprintf(stderr, "%s: error: %s\n", job.tag.c_str(), error.c_str());
    else
      std::fprintf(stderr,
                   "%s: prompt %d tokens (%d cached, %d images) %.1f tokens/s; %zu generated "
                   "%.1f tokens/s (%s)\n",
                   job.tag.c_str(), r.prefill.n_tokens, r.prefill.n_reused, r.prefill.n_images,
                   r.prompt_tps(), r.ids.size(), r.gen_tps(), finish_reason_name(r.finish_reason));
  }
  std::lock_guard<std::mutex> lock(job.mutex);
  job.result = std::move(r);
  job.error = std::move(error);
  job.done = true;
  job.changed.notify_all();
}

}  // namespace gp
