// gemma-cli: generate text from a Gemma 3 checkpoint (original or compressed), from text and
// images, streaming, with speed and memory statistics.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/atomic_file.h"
#include "base/error.h"
#include "base/sys.h"
#include "runtime/engine.h"
#include "tool_util.h"

namespace {

using namespace gp;

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      ids.push_back(std::stoi(item, &used));
      check(item.find_first_not_of(" ", used) == std::string::npos, "");
    } catch (const std::exception&) {
      throw Error("--tokens: '" + item + "' is not a token id (expected comma-separated integers)");
    }
  }
  check(!ids.empty(), "--tokens: no token ids given");
  return ids;
}

struct Args {
  std::string model, prompt, system, logits_out, embeddings_out, tokens;
  std::vector<std::string> images;
  GenerateOptions gen;
  EngineOptions engine;
  int ctx_size = 4096;
  bool chat = false, json = false;
};

void print_stats(const Engine& engine, const GenerateResult& r) {
  std::fprintf(stderr, "\n---\n");
  std::fprintf(stderr, "load:       %.2f s%s\n", engine.load_seconds(),
               repack_summary(engine).c_str());
  if (r.prefill.n_images)
    std::fprintf(stderr, "image:      %d encoded in %.2f s\n", r.prefill.n_images,
                 r.prefill.image_s);
  std::fprintf(stderr, "prompt:     %d tokens (%d cached), %.2f tokens/s\n", r.prefill.n_tokens,
               r.prefill.n_reused, r.prompt_tps());
  std::fprintf(stderr, "generation: %zu tokens, %.2f tokens/s (%s)\n", r.ids.size(), r.gen_tps(),
               finish_reason_name(r.finish_reason));
  std::fprintf(stderr, "peak RSS:   %.0f MB\n", peak_rss_mb());
}

std::vector<Image> load_images(const std::vector<std::string>& paths) {
  std::vector<Image> images;
  for (const auto& p : paths) images.push_back(load_image(p));
  return images;
}

std::vector<const Image*> pointers(const std::vector<Image>& images) {
  std::vector<const Image*> p;
  for (const auto& i : images) p.push_back(&i);
  return p;
}

// `images` are the --image files: they go with the first message, as /image ones with the next.
int run_chat(Engine& engine, const Args& a, std::vector<Image> images) {
  Session session(engine, a.ctx_size);
  std::vector<int32_t> transcript;  // ids of the conversation so far, as the cache holds them
  std::vector<std::string> pending_images = a.images;
  const auto& p = engine.chat_pieces();
  std::fprintf(stderr,
               "chat: type a message; /image PATH attaches an image to the next one; /quit ends\n");
  std::string line;
  bool first = true;
  while (true) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/quit") break;
    if (line.rfind("/image ", 0) == 0) {
      const std::string path = line.substr(7);
      try {
        images.push_back(load_image(path));
        pending_images.push_back(path);
        std::fprintf(stderr, "image %s attached\n", path.c_str());
      } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
      }
      continue;
    }
    ChatMessage user{"user", line, static_cast<int>(pending_images.size())};
    std::string text;
    if (first) {
      std::vector<ChatMessage> msgs;
      if (!a.system.empty()) msgs.push_back({"system", a.system, 0});
      msgs.push_back(user);
      transcript = engine.chat_prompt(msgs);
    } else {
      // The model's reply is in the cache up to its last token; close the turn and add the new one.
      text = p.end_of_turn + "\n" + format_chat({user}, p);
      const auto more = engine.tokenizer().encode(text);
      transcript.insert(transcript.end(), more.begin(), more.end());
    }
    pending_images.clear();
    GenerateResult r;
    try {
      r = generate(session, transcript, pointers(images), a.gen, [](const std::string& s) {
        std::fwrite(s.data(), 1, s.size(), stdout);
        std::fflush(stdout);
        return true;
      });
    } catch (const Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
    transcript.insert(transcript.end(), r.ids.begin(), r.ids.end());
    first = false;
    print_stats(engine, r);
  }
  return 0;
}

int run(const Args& a) {
  if (!a.json) std::fprintf(stderr, "loading %s ...\n", a.model.c_str());
  EngineOptions options = a.engine;
  options.progress = !a.json;
  Engine engine(a.model, options);
  std::vector<Image> images = load_images(a.images);
  if (!a.embeddings_out.empty()) {
    check(!images.empty(), "--embeddings-out needs at least one --image");
    AtomicFile f(a.embeddings_out);
    for (const auto& img : images) {
      const auto e = engine.encode_image(img);
      f.write(e.data(), e.size() * sizeof(float));
    }
    f.commit();
  }
  if (a.chat) return run_chat(engine, a, std::move(images));

  std::vector<int32_t> prompt;
  if (!a.tokens.empty()) {
    prompt = parse_ids(a.tokens);
  } else {
    check(!a.prompt.empty() || !images.empty() || !a.embeddings_out.empty(),
          "nothing to do: give --prompt, --tokens, --image or --chat");
    if (a.prompt.empty() && images.empty()) return 0;
    std::vector<ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system, 0});
    msgs.push_back({"user", a.prompt, static_cast<int>(images.size())});
    prompt = engine.chat_prompt(msgs);
  }
  Session session(engine, a.ctx_size);
  GenerateResult r;
  if (!a.logits_out.empty()) {
    AtomicFile f(a.logits_out);
    r.prefill = session.prefill(prompt, pointers(images), [&](const float* rows, int64_t n) {
      f.write(rows, static_cast<size_t>(n) * engine.config().text.n_vocab * sizeof(float));
    });
    f.commit();
  }
  if (a.gen.max_tokens > 0 || a.logits_out.empty()) {
    const bool stream = !a.json;
    r = generate(session, prompt, pointers(images), a.gen, [&](const std::string& s) {
      if (stream) {
        std::fwrite(s.data(), 1, s.size(), stdout);
        std::fflush(stdout);
      }
      return true;
    });
  }
  if (a.json) {
    nlohmann::json j = {{"prompt_tokens", r.prefill.n_tokens},
                        {"generated_ids", r.ids},
                        {"text", r.text},
                        {"finish_reason", finish_reason_name(r.finish_reason)},
                        {"prompt_tps", r.prompt_tps()},
                        {"gen_tps", r.gen_tps()},
                        {"image_s", r.prefill.image_s},
                        {"peak_rss_mb", peak_rss_mb()},
                        {"load_s", engine.load_seconds()}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    print_stats(engine, r);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "gemma-cli: run a Gemma 3 checkpoint (MLX 4-bit, original or compressed) on the CPU"};
  Args a;
  app.add_option("model", a.model, "checkpoint directory")->required();
  app.add_option("-p,--prompt", a.prompt, "user prompt");
  app.add_option("--system", a.system, "system prompt");
  app.add_option("--image", a.images, "image file (repeatable; placed before the text, in order)");
  app.add_option("-m,--max-tokens", a.gen.max_tokens, "tokens to generate (0: prefill only)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("-t,--temperature", a.gen.sampling.temperature, "0 = greedy")
      ->check(gp::kFinite)
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", a.gen.sampling.top_k, "keep the k most likely tokens (0: off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", a.gen.sampling.top_p, "nucleus sampling mass (1: off)")
      ->check(gp::kFinite)
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--min-p", a.gen.sampling.min_p, "drop tokens below min-p x p(top) (0: off)")
      ->check(gp::kFinite)
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--repetition-penalty", a.gen.sampling.repetition_penalty, "1: off")
      ->check(gp::kFinite)
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", a.gen.sampling.seed, "random seed for sampling");
  app.add_option("--ctx-size", a.ctx_size, "context size in tokens")->check(CLI::PositiveNumber);
  gp::add_engine_options(app, a.engine);
  app.add_flag("--chat", a.chat, "interactive multi-turn chat (/image PATH attaches an image)");
  app.add_flag("--json", a.json, "print one JSON object instead of streaming text");
  app.add_option("--tokens", a.tokens, "prompt as comma-separated token ids, no template");
  app.add_option("--logits-out", a.logits_out, "write the prompt logits (f32 [n_prompt, vocab])");
  app.add_option("--embeddings-out", a.embeddings_out,
                 "write the image embeddings (f32 [tokens, hidden] per image)");
  return gp::run_tool("gemma-cli", app, argc, argv, [&] { return run(a); });
}
