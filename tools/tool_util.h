// Shared by the command-line programs: flag checks CLI11 lacks, and the last-resort error line.
#pragma once

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <new>
#include <optional>
#include <string>

#include "base/error.h"
#include "runtime/engine.h"

namespace gp {

// CLI11's range checks compare, and every comparison with NaN is false: NaN would pass them all.
inline const CLI::Validator kFinite(
    [](std::string& s) -> std::string {
      char* end = nullptr;
      const double x = std::strtod(s.c_str(), &end);
      if (end == s.c_str() || *end != '\0' || !std::isfinite(x))
        return "'" + s + "' is not a finite number";
      return "";
    },
    "FINITE");

// --threads N: the worker pool's size (ThreadPool::set_global_threads; 0: all cores).
inline CLI::Option* add_threads_option(CLI::App& app, int& threads) {
  const CLI::Validator count(
      [](std::string& s) -> std::string {
        char* end = nullptr;
        const long n = std::strtol(s.c_str(), &end, 10);
        if (end == s.c_str() || *end != '\0' || n < 0)
          return "'" + s + "' is not a thread count (expected 0 for all cores, or more)";
        return "";
      },
      "N");
  return app.add_option("--threads", threads, "worker threads (0: all cores)")->check(count);
}

// --kv f16|f32: how the KV cache stores keys and values (EngineOptions::kv); refused at parse
// time with parse_kv_dtype's message otherwise.
inline CLI::Option* add_kv_option(CLI::App& app, std::optional<DType>& kv) {
  const CLI::Validator valid(
      [](std::string& s) -> std::string {
        try {
          parse_kv_dtype(s);
          return "";
        } catch (const Error& e) {
          return e.what();
        }
      },
      "f16|f32");
  return app
      .add_option_function<std::string>(
          "--kv", [&kv](const std::string& s) { kv = parse_kv_dtype(s); },
          "KV cache values: f16 (half the memory; the default) or f32 (the default with --exact)")
      ->check(valid);
}

// --repack (EngineOptions::repack).
inline CLI::Option* add_repack_option(CLI::App& app, bool& repack) {
  return app.add_flag(
      "--repack", repack,
      "with int8 activations, copy the layers' linears at load into the layout that this CPU's "
      "int8 kernels read faster, where it has one (AVX3_DL: Intel Ice Lake, AMD Zen 4 and "
      "later): faster short prompts and sequences decoded together, one stream's decode up to a "
      "quarter slower, about 0.4 s more load, one copy of the weights in memory");
}

// What --repack did, for a tool's load line: " (--repack: N MB of int8 weights repacked)", or
// why nothing was; empty without --repack.
inline std::string repack_summary(const Engine& engine) {
  if (!engine.options().repack) return "";
  if (engine.options().exact) return " (--repack: nothing to repack, --exact has no int8 kernels)";
  const size_t b = engine.text().repacked_bytes();
  if (b == 0)
    return " (--repack: nothing to repack, this CPU's int8 kernels have no faster layout)";
  const bool mb = b >= 1000000;
  return " (--repack: " + std::to_string((b + (mb ? 500000 : 500)) / (mb ? 1000000 : 1000)) +
         (mb ? " MB" : " KB") + " of int8 weights repacked)";
}

// The engine's options as every tool that builds an Engine spells them: --threads, --exact, --kv,
// --repack.
inline void add_engine_options(CLI::App& app, EngineOptions& o) {
  add_threads_option(app, o.threads);
  app.add_flag("--exact", o.exact,
               "f32 activations in every linear and an f32 KV cache unless --kv says otherwise "
               "(default: int8 per group of 64 and an f16 cache, as llama.cpp): slower, matches "
               "the float reference to 1e-3, and answers do not depend on how much of a prompt "
               "came from the cache");
  add_kv_option(app, o.kv);
  add_repack_option(app, o.repack);
}

// A progress display is drawn unless --quiet, and only on a terminal.
inline bool show_progress(bool quiet) { return !quiet && ::isatty(STDERR_FILENO); }

// The one line a tool prints for an exception that escaped the input checks: an allocation
// failure says what it means instead of "std::bad_alloc".
inline std::string error_message(const std::exception& e) {
  if (dynamic_cast<const std::bad_alloc*>(&e))
    return "out of memory (an input size too large for this machine, or a memory limit)";
  return e.what();
}

// A tool's main: the command line is parsed (CLI11 prints its own errors and --help), then body
// runs; an exception that escapes it prints one line, "TOOL: error: ...", and exits 1.
inline int run_tool(const char* tool, CLI::App& app, int argc, char** argv,
                    const std::function<int()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, error_message(e).c_str());
    return 1;
  }
}

}  // namespace gp
