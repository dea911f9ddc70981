// gemma-bench: the speed and peak-memory table of SPEC §6 for one checkpoint, plus llama-bench's
// pp512 / tg128, short prompts (pp16, pp64: a chat turn) and the decode roofline. Each measurement
// runs in a fresh child process, so every peak RSS is that test's own; timed runs follow a
// warm-up, as llama-bench's, and the CPU's features, the SIMD target and the load average around
// each run are printed with the results.
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <tuple>

#include "base/error.h"
#include "base/sys.h"
#include "kernels/cpu/bandwidth.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/linear_q8.h"
#include "kernels/ops.h"
#include "runtime/engine.h"
#include "tool_util.h"

namespace {

using namespace gp;
using nlohmann::json;

struct Args {
  std::string model, image;
  int reps = 3, threads = 0, pp = 512, tg = 128, depth = 0, text_tokens = 100, image_tokens = 200;
  int roofline_rounds = 8;  // --roofline-rounds: weight-page reads alternating with tg steps
  std::vector<int> pp_short = {16, 64};
  std::vector<int> batch;  // --batch: sequences decoded together (llama-batched-bench's -npl)
  bool json_out = false, skip_image = false;
  std::optional<DType> kv;  // --kv; unset: f16 with int8 activations, f32 with --exact ones
  std::string simd_target;  // --simd-target; empty: the best this CPU runs
  bool no_avx_vnni = false, no_avx512_vnni = false, repack = false;
};

// The 1-minute load average: the machine's own load around a run (foreign load skews a timing).
double load_average() {
  std::ifstream f("/proc/loadavg");
  double v = -1;
  f >> v;
  return v;
}

// The CPU's model name and the SIMD features that matter to the kernels, from /proc/cpuinfo.
std::string cpu_description() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, model, flags;
  while (std::getline(f, line)) {
    auto value = [&] { return line.substr(std::min(line.size(), line.find(':') + 2)); };
    if (model.empty() && line.rfind("model name", 0) == 0) model = value();
    if (flags.empty() && (line.rfind("flags", 0) == 0 || line.rfind("Features", 0) == 0))
      flags = " " + value() + " ";
  }
  std::string out = model.empty() ? "unknown CPU" : model;
  out += ", " + std::to_string(std::thread::hardware_concurrency()) + " threads;";
  for (const char* feature :
       {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
        "avx512_bf16", "avx512vbmi", "asimd", "asimddp", "i8mm", "sve", "sve2"}) {
    if (flags.find(" " + std::string(feature) + " ") != std::string::npos)
      out += " " + std::string(feature);
  }
  return out;
}

// Runs fn in a child process and returns the JSON it produced (or {"error": ...}).
json in_child(const std::function<json()>& fn) {
  int fds[2];
  check(::pipe(fds) == 0, "gemma-bench: pipe failed");
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  check(pid >= 0, "gemma-bench: fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    json out;
    try {
      out = fn();
    } catch (const std::exception& e) {
      out = {{"error", gp::error_message(e)}};
    }
    const std::string s = out.dump();
    size_t off = 0;
    while (off < s.size()) {
      const ssize_t n = ::write(fds[1], s.data() + off, s.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) s.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (s.empty()) return {{"error", "the measurement process died (signal or out of memory)"}};
  return json::parse(s);
}

// A deterministic test picture (smooth gradients and a few edges) when no --image is given.
Image test_image() {
  Image img{1024, 768, {}};
  img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      uint8_t* p = &img.rgb[(static_cast<size_t>(y) * img.width + x) * 3];
      p[0] = static_cast<uint8_t>(x * 255 / img.width);
      p[1] = static_cast<uint8_t>(y * 255 / img.height);
      p[2] = ((x / 64 + y / 64) % 2) ? 200 : 40;
    }
  return img;
}

json generation_test(const Args& a, const std::string& prompt, int n_tokens, bool with_image) {
  Engine engine(a.model, {a.threads, false, false, a.kv, a.repack});
  Image img;
  std::vector<const Image*> images;
  if (with_image) {
    img = a.image.empty() ? test_image() : load_image(a.image);
    images.push_back(&img);
  }
  Session session(engine, 4096);
  GenerateOptions opt;
  opt.max_tokens = n_tokens;
  opt.ignore_stop_tokens = true;  // random weights: always run the full count
  const auto r =
      generate(session, engine.chat_prompt({{"user", prompt, with_image ? 1 : 0}}), images, opt);
  double linears = 0;  // of the layers, of which the load repacked engine.text().repacked_bytes()
  for (const auto& L : engine.text().weights().layers)
    for (const Weight* w : L.linears()) linears += static_cast<double>(w->bytes());
  const auto repacked = static_cast<double>(engine.text().repacked_bytes());
  return {{"load_s", engine.load_seconds()}, {"prompt_tokens", r.prefill.n_tokens},
          {"prompt_tps", r.prompt_tps()},    {"gen_tokens", r.ids.size()},
          {"gen_tps", r.gen_tps()},          {"image_s", r.prefill.image_s},
          {"peak_rss_mb", peak_rss_mb()},    {"repacked_mb", repacked / 1e6},
          {"linears_mb", linears / 1e6}};
}

struct Stat {
  double median = 0, lo = 0, hi = 0;
};
Stat stat_of(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return {med, v.front(), v.back()};
}

json pp_tg_test(const Args& a) {
  // The default int8 activations, and --exact's f32 ones in an engine of their own (precision is
  // fixed when an engine is built; the weights' pages are shared).
  Engine engine(a.model, {a.threads, false, false, a.kv, a.repack});
  Engine exact(a.model, {a.threads, false, true, a.kv, a.repack});
  const ModelConfig& c = engine.config();
  // Deterministic ids from the upper half of the tokenizer's pieces (ordinary text, no specials).
  const int32_t hi =
      std::min<int32_t>(engine.tokenizer().vocab_size(), static_cast<int32_t>(c.text.n_vocab));
  uint64_t x = 12345;
  auto next_id = [&] {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int32_t>(hi / 2 + (x >> 33) % (hi - hi / 2));
  };
  auto take = [&](int n) {
    std::vector<int32_t> v;
    while (static_cast<int>(v.size()) < n) v.push_back(next_id());
    return v;
  };
  // BOS and `depth` tokens of context (llama-bench's -d), run before the timed part.
  std::vector<int32_t> context = {c.bos_token};
  for (int32_t id : take(a.depth)) context.push_back(id);
  std::vector<int32_t> ids = context;
  for (int32_t id : take(a.pp - (a.depth == 0 ? 1 : 0))) ids.push_back(id);  // pp tokens in all
  const std::vector<int32_t> tg_ids = take(a.tg);
  const int ctx = a.depth + a.pp + a.tg + 8;
  // The machine's read bandwidth right before and right after each tg run (shared machines drift
  // within seconds); the roofline uses the higher of the two.
  auto bandwidth = [] { return cpu::read_bandwidth_gbs(size_t{512} << 20); };
  // And a plain sequential read of the weight pages themselves, in place (issue 16's ceiling:
  // the same pages, the same process), between rounds of the int8 tg run.
  const auto weight_ranges = engine.text().weight_ranges_per_token();
  auto weights_bandwidth = [&] { return cpu::read_bandwidth_gbs(weight_ranges); };
  // Bytes a decode step reads: the weights, and the keys and values attended to (the average of
  // the first and the last step of the tg run).
  const double weight_bytes = static_cast<double>(engine.text().weight_bytes_per_token());
  // A warm-up before timing, as llama-bench's: the weights' pages, the pool's threads and the
  // kernels' scratch buffers are touched once.
  auto warm_up = [&](Engine& e) {
    Session warm(e, ctx);
    warm.prefill(std::vector<int32_t>(ids.begin(), ids.begin() + std::min<size_t>(ids.size(), 64)),
                 {});
    warm.decode(tg_ids[0]);
  };
  // pp and tg with the default int8 activations, then the same with --exact, side by side.
  auto run = [&](Engine& e) {
    warm_up(e);
    Session pp_session(e, ctx);
    if (a.depth > 0) pp_session.prefill(context, {});
    const double pp_s = pp_session.prefill(ids, {}).prefill_s;  // runs the pp new positions
    Session tg_session(e, ctx);
    tg_session.prefill(context, {});
    const double kv_first = static_cast<double>(tg_session.kv_bytes_per_step());
    const bool int8 = &e == &engine;
    const double bw_before = bandwidth();
    // The int8 tg run in rounds, each between two reads of the weight pages: each round's rate
    // against the higher of the reads on either side, so that a slow minute of the machine
    // lands on both sides of a ratio; the median of the rounds' ratios, with their spread.
    const int n_rounds = int8 ? std::min(a.roofline_rounds, a.tg) : 1;
    std::vector<double> reads, fractions;  // [n_rounds + 1], [n_rounds]
    if (int8) reads.push_back(weights_bandwidth());
    double tg_s = 0;
    size_t done = 0;
    for (int r = 0; r < n_rounds; ++r) {
      const size_t end = tg_ids.size() * (r + 1) / n_rounds;
      const size_t steps = end - done;
      const double kv_before = static_cast<double>(tg_session.kv_bytes_per_step());
      Timer t;
      for (; done < end; ++done) tg_session.decode(tg_ids[done]);
      const double s = t.seconds();
      tg_s += s;
      if (!int8) continue;
      reads.push_back(weights_bandwidth());
      const double round_bytes =
          weight_bytes + (kv_before + static_cast<double>(tg_session.kv_bytes_per_step())) / 2;
      const double read = std::max(reads[r], reads[r + 1]);
      fractions.push_back(steps / s / (read * 1e9 / round_bytes));
    }
    const double bw = std::max(bw_before, bandwidth());
    const double bytes = weight_bytes + (kv_first + tg_session.kv_bytes_per_step()) / 2;
    return std::tuple{a.pp / pp_s, a.tg / tg_s, bw, bytes, reads, fractions};
  };
  const double load_start = load_average();
  // Short prompts (a chat turn) with int8 activations: the median of 5 timed prefills of n new
  // positions each after the context.
  json short_pp;
  warm_up(engine);
  for (int n : a.pp_short) {
    std::vector<int32_t> more = context;
    for (int32_t id : take(n - (a.depth == 0 ? 1 : 0))) more.push_back(id);
    std::vector<double> tps;
    for (int rep = 0; rep < 5; ++rep) {
      Session s(engine, a.depth + n + 8);
      if (a.depth > 0) s.prefill(context, {});
      tps.push_back(n / s.prefill(more, {}).prefill_s);
    }
    std::sort(tps.begin(), tps.end());
    short_pp["pp" + std::to_string(n) + "_tps"] = tps[tps.size() / 2];
  }
  // Batched decode as gemma-server runs it (llama-batched-bench's S_TG): n sessions, each with a
  // prompt of 16 ids of its own, then tg steps of one forward over the next id of every session;
  // generated tokens (n per step) per second of those steps.
  for (int n : a.batch) {
    std::vector<std::unique_ptr<Session>> seqs;
    for (int i = 0; i < n; ++i) {
      seqs.push_back(std::make_unique<Session>(engine, 16 + a.tg + 8));
      std::vector<int32_t> prompt = {c.bos_token};
      for (int32_t id : take(15)) prompt.push_back(id);
      seqs.back()->prefill(prompt, {});
    }
    std::vector<SequenceRows> rows(n);
    Timer t;
    for (int32_t id : tg_ids) {
      for (int i = 0; i < n; ++i) rows[i] = seqs[i]->decode_rows(id);
      engine.text().forward(rows);
      for (auto& s : seqs) s->rows_ran();
    }
    short_pp["batch" + std::to_string(n) + "_tps"] = n * a.tg / t.seconds();
  }
  const auto [pp_tps, tg_tps, bw, bytes, reads, fractions] = run(engine);
  const auto [pp_exact_tps, tg_exact_tps, bw_exact, bytes_exact, unused_reads, unused] = run(exact);
  const Stat read = stat_of(reads), fraction = stat_of(fractions);
  json out = {{"pp_tps", pp_tps},
              {"pp_exact_tps", pp_exact_tps},
              {"tg_tps", tg_tps},
              {"tg_exact_tps", tg_exact_tps},
              {"bandwidth_gbs", bw},
              {"tg_fraction", tg_tps / (bw * 1e9 / bytes)},
              {"weights_bandwidth_gbs", read.median},
              {"weights_bandwidth_min_gbs", read.lo},
              {"weights_bandwidth_max_gbs", read.hi},
              {"tg_weights_fraction", fraction.median},
              {"tg_weights_fraction_rounds", fractions},
              // The same run by the method before rounds: the whole run's rate against the
              // higher of the first and the last read.
              {"tg_weights_fraction_whole_run",
               tg_tps / (std::max(reads.front(), reads.back()) * 1e9 / bytes)},
              {"tg_exact_fraction", tg_exact_tps / (bw_exact * 1e9 / bytes_exact)},
              {"bytes_per_token", bytes},
              {"load_start", load_start},
              {"load_end", load_average()},
              {"peak_rss_mb", peak_rss_mb()}};
  out.update(short_pp);
  return out;
}

json collect(const std::vector<json>& runs, const std::string& key) {
  std::vector<double> v;
  for (const auto& r : runs)
    if (r.contains(key)) v.push_back(r[key].get<double>());
  const Stat s = stat_of(v);
  return {{"median", s.median}, {"min", s.lo}, {"max", s.hi}};
}

int run(const Args& a) {
  // The measurements run in forked children, which keep these choices.
  if (!a.simd_target.empty()) {
    check(cpu::select_simd_target(a.simd_target),
          "--simd-target " + a.simd_target +
              ": not a SIMD target this build and CPU run (they are: " +
              cpu::simd_targets_available() + ")");
  }
  if (a.no_avx_vnni) cpu::set_avx_vnni_enabled(false);
  if (a.no_avx512_vnni) cpu::set_avx512_vnni_enabled(false);
  ModelDir dir(a.model);
  uint64_t lang = 0, vision = 0;
  for (const auto& name : dir.tensor_names())
    (names::is_vision(name) ? vision : lang) += dir.tensor(name).nbytes;
  json out = {{"model", a.model},
              {"disk_language_mb", lang / 1e6},
              {"disk_vision_mb", vision / 1e6},
              {"cpu", cpu_description()},
              {"simd_target", ops::simd_target()},
              {"int8_kernel", cpu::linear_q8_kernel_name()}};
  auto runs_of = [&](const std::string& label, const std::function<json()>& fn) {
    std::vector<json> runs;
    for (int r = 0; r < a.reps; ++r) {
      if (!a.json_out) std::fprintf(stderr, "%s: run %d/%d\n", label.c_str(), r + 1, a.reps);
      json j = in_child(fn);
      check(!j.contains("error"),
            label + ": " + (j.contains("error") ? j["error"].get<std::string>() : ""));
      runs.push_back(j);
    }
    return runs;
  };
  const auto text = runs_of(
      "text", [&] { return generation_test(a, "Hello, how are you?", a.text_tokens, false); });
  const auto bench = runs_of("pp/tg", [&] { return pp_tg_test(a); });
  std::vector<json> image;
  if (!a.skip_image && detect_layout(dir).vision)
    image = runs_of("image", [&] {
      return generation_test(a, "Describe this image in detail.", a.image_tokens, true);
    });
  for (const char* k : {"load_s", "prompt_tps", "gen_tps", "peak_rss_mb"})
    out["text"][k] = collect(text, k);
  out["repacked_mb"] = text.front()["repacked_mb"];
  out["linears_mb"] = text.front()["linears_mb"];
  for (const char* k : {"pp_tps", "pp_exact_tps", "tg_tps", "tg_exact_tps"})
    out["bench"][k] = collect(bench, k);
  for (int n : a.pp_short) {
    const std::string k = "pp" + std::to_string(n) + "_tps";
    out["bench"][k] = collect(bench, k);
  }
  for (int n : a.batch) {
    const std::string k = "batch" + std::to_string(n) + "_tps";
    out["bench"][k] = collect(bench, k);
  }
  out["bench"]["load_average"] = json::array();
  for (const auto& r : bench)
    out["bench"]["load_average"].push_back({r["load_start"], r["load_end"]});
  const double bytes = bench[0]["bytes_per_token"].get<double>();
  // Every round of every rep: the spread behind the medians.
  std::vector<double> all_rounds;
  for (const auto& r : bench)
    for (const auto& f : r["tg_weights_fraction_rounds"]) all_rounds.push_back(f.get<double>());
  const Stat rs = stat_of(all_rounds);
  const json round_fractions = {{"median", rs.median}, {"min", rs.lo}, {"max", rs.hi}};
  out["depth"] = a.depth;
  out["threads"] =
      a.threads > 0 ? a.threads : static_cast<int>(std::thread::hardware_concurrency());
  out["roofline"] = {
      {"bandwidth_gbs", collect(bench, "bandwidth_gbs")},
      {"bytes_per_token_mb", bytes / 1e6},
      {"tg_fraction", collect(bench, "tg_fraction")},
      {"weights_bandwidth_gbs", collect(bench, "weights_bandwidth_gbs")},
      {"tg_weights_fraction", collect(bench, "tg_weights_fraction")},
      {"tg_weights_fraction_rounds", round_fractions},
      {"tg_weights_fraction_whole_run", collect(bench, "tg_weights_fraction_whole_run")},
      {"rounds", std::min(a.roofline_rounds, a.tg)},
      {"tg_exact_fraction", collect(bench, "tg_exact_fraction")}};
  if (!image.empty())
    for (const char* k : {"image_s", "prompt_tps", "gen_tps", "peak_rss_mb"})
      out["image"][k] = collect(image, k);

  if (a.json_out) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  auto m = [](const json& j) { return j["median"].get<double>(); };
  auto spread = [](const json& j) {
    char b[64];
    std::snprintf(b, sizeof b, "[%.2f-%.2f]", j["min"].get<double>(), j["max"].get<double>());
    return std::string(b);
  };
  std::printf("\n%s  (%d threads, %d reps: median [min-max])\n", a.model.c_str(),
              out["threads"].get<int>(), a.reps);
  std::printf("%-28s %s\n", "cpu", out["cpu"].get<std::string>().c_str());
  std::printf("%-28s %s\n", "simd target", out["simd_target"].get<std::string>().c_str());
  std::printf("%-28s %s\n", "int8 kernel", out["int8_kernel"].get<std::string>().c_str());
  std::printf("%-28s %10.0f MB of the layers' %.0f MB repacked at load%s\n", "int8 weights",
              out["repacked_mb"].get<double>(), out["linears_mb"].get<double>(),
              a.repack ? " (--repack)" : "");
  std::printf("%-28s %10.0f MB (language %.0f + vision %.0f)\n", "disk", (lang + vision) / 1e6,
              lang / 1e6, vision / 1e6);
  std::printf("%-28s %10.0f MB %s\n", "peak memory, text", m(out["text"]["peak_rss_mb"]),
              spread(out["text"]["peak_rss_mb"]).c_str());
  if (!image.empty())
    std::printf("%-28s %10.0f MB %s\n", "peak memory, image", m(out["image"]["peak_rss_mb"]),
                spread(out["image"]["peak_rss_mb"]).c_str());
  std::printf("%-28s %10.2f t/s %s\n", "prompt speed, text", m(out["text"]["prompt_tps"]),
              spread(out["text"]["prompt_tps"]).c_str());
  std::printf("%-28s %10.2f t/s %s\n", "generation, text", m(out["text"]["gen_tps"]),
              spread(out["text"]["gen_tps"]).c_str());
  if (!image.empty()) {
    std::printf("%-28s %10.2f s   %s\n", "image encode", m(out["image"]["image_s"]),
                spread(out["image"]["image_s"]).c_str());
    std::printf("%-28s %10.2f t/s %s\n", "prompt speed, image", m(out["image"]["prompt_tps"]),
                spread(out["image"]["prompt_tps"]).c_str());
    std::printf("%-28s %10.2f t/s %s\n", "generation, image", m(out["image"]["gen_tps"]),
                spread(out["image"]["gen_tps"]).c_str());
  }
  const std::string at = a.depth > 0 ? " @ d" + std::to_string(a.depth) : "";
  const std::string pp = "pp" + std::to_string(a.pp) + at, tg = "tg" + std::to_string(a.tg) + at;
  for (int n : a.pp_short) {
    const std::string k = "pp" + std::to_string(n);
    std::printf("%-28s %10.2f t/s %s\n", (k + at).c_str(), m(out["bench"][k + "_tps"]),
                spread(out["bench"][k + "_tps"]).c_str());
  }
  std::printf("%-28s %10.2f t/s %s\n", pp.c_str(), m(out["bench"]["pp_tps"]),
              spread(out["bench"]["pp_tps"]).c_str());
  std::printf("%-28s %10.2f t/s %s\n", (pp + " --exact").c_str(), m(out["bench"]["pp_exact_tps"]),
              spread(out["bench"]["pp_exact_tps"]).c_str());
  std::printf("%-28s %10.2f t/s %s\n", tg.c_str(), m(out["bench"]["tg_tps"]),
              spread(out["bench"]["tg_tps"]).c_str());
  std::printf("%-28s %10.2f t/s %s\n", (tg + " --exact").c_str(), m(out["bench"]["tg_exact_tps"]),
              spread(out["bench"]["tg_exact_tps"]).c_str());
  for (int n : a.batch) {
    const std::string k = "batch" + std::to_string(n) + "_tps";
    std::printf("%-28s %10.2f t/s %s (x%.2f %s)\n",
                ("tg" + std::to_string(a.tg) + " x " + std::to_string(n) + " sequences").c_str(),
                m(out["bench"][k]), spread(out["bench"][k]).c_str(),
                m(out["bench"][k]) / m(out["bench"]["tg_tps"]), tg.c_str());
  }
  const double bw = m(out["roofline"]["bandwidth_gbs"]);
  std::printf("%-28s %10.2f t/s (%.1f GB/s around tg / %.0f MB per token)\n", "decode roofline",
              bw * 1e9 / bytes, bw, bytes / 1e6);
  std::printf("%-28s %10.0f %%   %s; --exact %.0f %%\n", "tg / roofline",
              100 * m(out["roofline"]["tg_fraction"]),
              spread(out["roofline"]["tg_fraction"]).c_str(),
              100 * m(out["roofline"]["tg_exact_fraction"]));
  std::printf(
      "%-28s %10.0f %%   %s (median of %d rounds, each between two reads of the weight pages in "
      "place; rounds %s; read %.1f GB/s)\n",
      "tg / weight-page read", 100 * m(out["roofline"]["tg_weights_fraction"]),
      spread(out["roofline"]["tg_weights_fraction"]).c_str(), out["roofline"]["rounds"].get<int>(),
      spread(out["roofline"]["tg_weights_fraction_rounds"]).c_str(),
      m(out["roofline"]["weights_bandwidth_gbs"]));
  std::printf("%-28s %10.2f s\n", "load", m(out["text"]["load_s"]));
  std::string loads;
  for (const auto& r : bench) {
    char b[48];
    std::snprintf(b, sizeof b, "%s%.2f -> %.2f", loads.empty() ? "" : ", ",
                  r["load_start"].get<double>(), r["load_end"].get<double>());
    loads += b;
  }
  std::printf("%-28s %s\n", "load average, pp/tg runs", loads.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gemma-bench: speed and peak-memory table for a Gemma 3 checkpoint"};
  Args a;
  app.add_option("model", a.model, "checkpoint directory")->required();
  app.add_option("--image", a.image,
                 "image for the image test (default: a generated test picture)");
  app.add_option("--reps", a.reps, "repetitions of each test")->check(CLI::PositiveNumber);
  gp::add_threads_option(app, a.threads);
  app.add_option("--pp", a.pp, "prompt length of the prefill benchmark")
      ->check(CLI::PositiveNumber);
  app.add_option("--pp-short", a.pp_short, "short prompt lengths also measured (int8 only)")
      ->check(CLI::PositiveNumber);
  app.add_option("--tg", a.tg, "tokens of the generation benchmark")->check(CLI::PositiveNumber);
  app.add_option("--roofline-rounds", a.roofline_rounds,
                 "rounds of the int8 tg run, each timed between two reads of the weight pages "
                 "(tg / weight-page read is the median of the rounds' ratios)")
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", a.batch,
                 "also decode this many sequences together, --tg steps of one forward over all "
                 "(as gemma-server's slots; llama-batched-bench's -npl), int8 only")
      ->check(CLI::Range(1, 64));
  app.add_option("--depth", a.depth,
                 "tokens of context before the prefill and generation benchmarks (llama-bench's "
                 "-d)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--text-tokens", a.text_tokens, "tokens generated in the text test")
      ->check(CLI::PositiveNumber);
  app.add_option("--image-tokens", a.image_tokens, "tokens generated in the image test")
      ->check(CLI::PositiveNumber);
  app.add_flag("--skip-image", a.skip_image, "skip the image test");
  app.add_flag("--json", a.json_out, "print JSON");
  app.add_option("--simd-target", a.simd_target,
                 "run the kernels of this SIMD target (e.g. AVX2) instead of the best one the CPU "
                 "supports, to compare kernel paths on one machine");
  app.add_flag("--no-avx-vnni", a.no_avx_vnni,
               "the AVX2 target's int8 kernels use pmaddubsw + pmaddwd even where the CPU has "
               "AVX-VNNI, to compare the two");
  app.add_flag("--no-avx512-vnni", a.no_avx512_vnni,
               "the AVX3 target's int8 kernels use 256-bit pmaddubsw + pmaddwd even where the CPU "
               "has AVX512-VNNI (AVX3_DL always uses it), to compare the two");
  gp::add_repack_option(app, a.repack);
  gp::add_kv_option(app, a.kv);
  return gp::run_tool("gemma-bench", app, argc, argv, [&] { return run(a); });
}
