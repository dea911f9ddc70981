#include "prune/profile.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>

#include "base/error.h"
#include "io/tokenizer.h"
#include "model/text_model.h"
#include "runtime/kv_cache.h"

namespace gp::prune {

const std::vector<std::string>& default_calibration_texts() {
  static const std::vector<std::string> texts = {
      "The old lighthouse stood at the edge of the cliff for more than a century. Every night its "
      "keeper climbed the narrow spiral stairs, trimmed the wick and watched the beam sweep across "
      "the dark water, warning ships away from the rocks below.",
      "User: Can you recommend a good book for a long flight?\nAssistant: Sure! If you enjoy "
      "mysteries, try a classic detective novel. If you prefer something lighter, a collection of "
      "short stories is easy to pick up and put down.",
      "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    "
      "return a\n\nprint([fibonacci(i) for i in range(10)])",
      "To solve 3x + 7 = 22, subtract 7 from both sides to get 3x = 15, then divide by 3. The "
      "answer is x = 5. Check: 3 * 5 + 7 = 15 + 7 = 22.",
      "Shopping list for the weekend:\n- 2 loaves of bread\n- a dozen eggs\n- 1 kg of apples\n- "
      "olive oil\n- coffee beans\n- fresh basil and tomatoes",
      "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide "
      "to produce glucose and oxygen. It takes place mainly in the chloroplasts of leaf cells.",
      "Dear Ms. Johnson,\n\nThank you for your letter of March 3rd. I am pleased to confirm your "
      "reservation for two nights. Please let us know if you need anything else.\n\nKind regards,"
      "\nThe Front Desk",
      "#include <stdio.h>\n\nint main(void) {\n  int total = 0;\n  for (int i = 1; i <= 100; ++i) "
      "total += i;\n  printf(\"%d\\n\", total);\n  return 0;\n}",
      "Describe this image in detail. The picture shows a busy street market at dusk, with "
      "colorful stalls selling fruit, spices and fabric, and people walking between them under "
      "strings of warm lights.",
      "The French Revolution began in 1789 and transformed the political landscape of Europe. It "
      "ended the absolute monarchy, spread ideas of liberty and equality, and led to the rise of "
      "Napoleon Bonaparte.",
      "Q: What is the capital of Australia?\nA: Canberra.\nQ: How many continents are there?\nA: "
      "Seven.\nQ: What is the boiling point of water at sea level?\nA: 100 degrees Celsius.",
      "SELECT name, COUNT(*) AS orders FROM customers JOIN orders ON customers.id = "
      "orders.customer_id WHERE orders.date >= '2024-01-01' GROUP BY name ORDER BY orders DESC;",
      "Once upon a time, a curious fox found a shiny key in the forest. She carried it from tree "
      "to tree, asking every animal what it might open, until an old owl told her about a door "
      "hidden beneath the roots of the tallest oak.",
      "Write a haiku about autumn.\n\nCrimson leaves drifting,\nthe river carries them home,\n"
      "cold wind hums softly.",
      "Machine learning models learn patterns from data. A neural network is made of layers of "
      "simple units; training adjusts their weights to reduce the error between predictions and "
      "the correct answers.",
      "Step 1: Preheat the oven to 180 C. Step 2: Mix the flour, sugar and butter. Step 3: Add two "
      "eggs and a cup of milk. Step 4: Bake for 35 minutes, until golden brown.",
      "The meeting has been moved to Thursday at 10:30 AM. Please review the quarterly report "
      "before then and bring your questions about the budget, the hiring plan and the new office.",
      "{\"name\": \"Alice\", \"age\": 30, \"skills\": [\"python\", \"statistics\", \"writing\"], "
      "\"active\": true}",
      "Why is the sky blue? Sunlight is scattered by the molecules of the atmosphere, and shorter "
      "wavelengths such as blue are scattered much more strongly than longer ones such as red.",
      "I'm sorry to hear that you're feeling stressed. It might help to take a short walk, "
      "breathe slowly for a few minutes, or talk to someone you trust about what is on your mind.",
  };
  return texts;
}

std::vector<std::string> read_calibration_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  check(f.good(), path + ": cannot open the calibration text");
  std::vector<std::string> texts;
  std::string line, current;
  auto flush = [&] {
    if (current.find_first_not_of(" \t\r\n") != std::string::npos) texts.push_back(current);
    current.clear();
  };
  while (std::getline(f, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      flush();
    } else {
      if (!current.empty()) current += "\n";
      current += line;
    }
  }
  flush();
  check(!f.bad(), path + ": read error");
  check(!texts.empty(), path + ": no calibration text (the file is empty)");
  return texts;
}

ModelProfile profile_model(const Checkpoint& in, const std::vector<std::string>& texts,
                           const ProfileOptions& options) {
  const ModelConfig& c = in.config();
  const Tokenizer tokenizer = Tokenizer::load(in.path());
  // f32 activations: statistics of the weights, as prune::eval
  TextModel model(c, load_text_weights(in.dir(), c, in.layout()), ops::Activations::kF32);
  const int n_layers = c.text.n_layers;
  const int64_t d = c.text.d_model;

  // The stored tensors of each layer, whose pages are dropped once the layer has run.
  std::vector<std::vector<const TensorInfo*>> layer_tensors(n_layers);
  for (const TensorSpec& spec : in.table())
    if (!spec.vision && spec.layer >= 0)
      for (const auto& n : in.stored(spec))
        layer_tensors[spec.layer].push_back(&in.dir().tensor(n));

  std::vector<std::vector<double>> sums(n_layers);
  for (int l = 0; l < n_layers; ++l) sums[l].assign(c.text.layer_d_ff[l], 0.0);
  std::vector<double> influence(n_layers, 0.0);
  std::vector<float> prev;  // residual stream entering the current layer [n, d_model]
  model.set_mlp_observer([&](int layer, const float* act, int64_t n, int d_ff) {
    std::vector<double>& s = sums[layer];
    for (int64_t t = 0; t < n; ++t)
      for (int i = 0; i < d_ff; ++i) s[i] += std::fabs(act[t * d_ff + i]);
  });
  model.set_observer([&](int layer, const float* x, int64_t n) {
    if (layer >= 0) {
      for (int64_t t = 0; t < n; ++t) {
        double dot = 0, na = 0, nb = 0;
        for (int64_t i = 0; i < d; ++i) {
          const double a = prev[t * d + i], b = x[t * d + i];
          dot += a * b;
          na += a * a;
          nb += b * b;
        }
        const double denom = std::sqrt(na * nb);
        influence[layer] += 1.0 - (denom > 0 ? dot / denom : 1.0);
      }
      for (const TensorInfo* t : layer_tensors[layer]) release_pages(*t);
    }
    prev.assign(x, x + n * d);
  });

  Progress progress("profile", texts.size(), options.progress);
  ModelProfile profile;
  for (size_t k = 0; k < texts.size(); ++k) {
    check(!cancel_requested(), "interrupted");
    std::vector<int32_t> ids = {c.bos_token};
    for (int32_t id : tokenizer.encode(texts[k])) ids.push_back(id);
    if (static_cast<int>(ids.size()) > options.max_tokens) ids.resize(options.max_tokens);
    KvCache cache(c.text, static_cast<int>(ids.size()));
    TextBatch batch;
    batch.ids = ids;
    model.forward(batch, cache, nullptr);
    profile.n_tokens += static_cast<int64_t>(ids.size());
    progress.update(k + 1, std::to_string(profile.n_tokens) + " tokens");
  }
  progress.finish();
  profile.layers.resize(n_layers);
  const double n = static_cast<double>(std::max<int64_t>(profile.n_tokens, 1));
  for (int l = 0; l < n_layers; ++l) {
    auto& L = profile.layers[l];
    L.neuron_score.resize(sums[l].size());
    for (size_t i = 0; i < sums[l].size(); ++i)
      L.neuron_score[i] = static_cast<float>(sums[l][i] / n);
    L.block_influence = influence[l] / n;
  }
  return profile;
}

int64_t neuron_keep_count(int64_t n_active, int64_t d_ff, double max_reduction, int group) {
  const int64_t aligned = n_active / group * group;
  // The epsilon keeps an exact product such as 0.9 * 10240 / 64 = 144 from rounding up to 145.
  const int64_t floor_groups = static_cast<int64_t>(
      std::ceil((1.0 - max_reduction) * static_cast<double>(d_ff) / group - 1e-9));
  const int64_t keep = std::max(aligned, std::max<int64_t>(floor_groups, 1) * group);
  return std::min(keep, d_ff);
}

std::vector<int64_t> select_neurons(const std::vector<float>& scores, double threshold,
                                    double max_reduction, int group) {
  const int64_t d = static_cast<int64_t>(scores.size());
  int64_t active = 0;
  for (float s : scores) active += s >= threshold;
  const int64_t keep = neuron_keep_count(active, d, max_reduction, group);
  std::vector<int64_t> order(d);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  order.resize(keep);
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace gp::prune
