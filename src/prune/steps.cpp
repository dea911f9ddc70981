#include "prune/steps.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include "base/error.h"
#include "base/sys.h"
#include "io/tokenizer.h"
#include "prune/checkpoint.h"
#include "prune/profile.h"
#include "prune/vocab.h"
#include "tensor/dtype.h"

namespace gp::prune {
namespace fs = std::filesystem;

// ---- Step names

namespace {
constexpr Step kAll[] = {Step::Vocab,      Step::Fc2,     Step::Layers,
                         Step::Resolution, Step::Neurons, Step::Split};
}  // namespace

const char* step_name(Step step) {
  switch (step) {
    case Step::Vocab:
      return "vocab";
    case Step::Fc2:
      return "fc2";
    case Step::Layers:
      return "layers";
    case Step::Resolution:
      return "resolution";
    case Step::Neurons:
      return "neurons";
    case Step::Split:
      return "split";
  }
  return "?";
}

std::vector<Step> all_steps() { return {std::begin(kAll), std::end(kAll)}; }

std::vector<Step> parse_steps(const std::string& list) {
  std::set<Step> chosen;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    bool found = false;
    for (Step s : kAll) {
      if (item != step_name(s)) continue;
      check(chosen.insert(s).second, "--steps: '" + item + "' is listed twice");
      found = true;
    }
    check(found, "--steps: unknown step '" + item +
                     "' (expected a list of vocab, fc2, layers, resolution, neurons, split)");
  }
  check(!chosen.empty(), "--steps: no step given");
  std::vector<Step> steps;
  for (Step s : kAll)
    if (chosen.count(s)) steps.push_back(s);
  return steps;
}

std::vector<Step> preset_steps(const std::string& preset) {
  if (preset == "mobile") return all_steps();
  if (preset == "lite") return {Step::Vocab, Step::Fc2, Step::Layers, Step::Resolution};
  throw Error("--preset: unknown preset '" + preset + "' (expected mobile or lite)");
}

// ---- Config rewrites

namespace {
nlohmann::ordered_json& object_at(nlohmann::ordered_json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_object()) j[key] = nlohmann::ordered_json::object();
  return j[key];
}
}  // namespace

nlohmann::ordered_json vocab_config(const nlohmann::ordered_json& config, int64_t compact_rows) {
  nlohmann::ordered_json j = config;
  object_at(j, "vocab_pruning")["compact_vocab_size"] = compact_rows;
  if (j.contains("text_config") && j["text_config"].is_object() &&
      j["text_config"].contains("vocab_pruning"))
    object_at(j["text_config"], "vocab_pruning")["compact_vocab_size"] = compact_rows;
  return j;
}

int fc2_padded_width(int d_ff, int group) { return (d_ff + group - 1) / group * group; }

nlohmann::ordered_json fc2_config(const nlohmann::ordered_json& config, int d_ff) {
  nlohmann::ordered_json j = config;
  object_at(j, "vision_config")["intermediate_size"] = d_ff;
  return j;
}

nlohmann::ordered_json layers_config(const nlohmann::ordered_json& config, const ModelConfig& c,
                                     const std::vector<int>& drop) {
  const int n = c.text.n_layers;
  std::set<int> dropped;
  for (int l : drop) {
    check(l >= 0 && l < n, "--drop-layers: layer " + std::to_string(l) +
                               " does not exist (the checkpoint has " + std::to_string(n) +
                               " text layers, 0-" + std::to_string(n - 1) + ")");
    check(dropped.insert(l).second,
          "--drop-layers: layer " + std::to_string(l) + " is listed twice");
  }
  check(static_cast<int>(dropped.size()) < n,
        "--drop-layers: cannot remove all " + std::to_string(n) + " text layers");
  std::vector<int> kept, new_index(n, -1);
  for (int l = 0; l < n; ++l)
    if (!dropped.count(l)) {
      new_index[l] = static_cast<int>(kept.size());
      kept.push_back(l);
    }
  nlohmann::ordered_json j = config;
  nlohmann::ordered_json& t = object_at(j, "text_config");
  t["num_hidden_layers"] = kept.size();
  nlohmann::ordered_json types = nlohmann::ordered_json::array();
  for (int l : kept) types.push_back(c.text.is_global[l] ? "full_attention" : "sliding_attention");
  t["layer_types"] = types;
  if (t.contains("per_layer_intermediate_sizes")) {
    std::vector<int> widths;
    for (int l : kept) widths.push_back(c.text.layer_d_ff[l]);
    t["per_layer_intermediate_sizes"] = widths;
    t["intermediate_size"] = *std::max_element(widths.begin(), widths.end());
  }
  // Per-module quantization entries (keys naming a text layer's module) follow their layer.
  for (const char* q : {"quantization", "quantization_config"}) {
    if (!j.contains(q) || !j[q].is_object()) continue;
    nlohmann::ordered_json renamed = nlohmann::ordered_json::object();
    for (auto& [key, value] : j[q].items()) {
      int layer;
      std::string rest;
      if (!names::parse_text_layer(key, &layer, &rest)) {
        renamed[key] = value;
      } else if (layer < n && new_index[layer] >= 0) {
        renamed[names::text_layer(new_index[layer], rest)] = value;
      }
    }
    j[q] = renamed;
  }
  return j;
}

Resolution check_resolution(const ModelConfig& c, int image_size) {
  const VisionConfig& v = c.vision;
  check(image_size > 0 && image_size % v.patch_size == 0,
        "--image-size: " + std::to_string(image_size) + " is not a multiple of the patch size " +
            std::to_string(v.patch_size));
  int tok_side = 1;
  while (tok_side * tok_side < c.mm_tokens_per_image) ++tok_side;
  const int kernel = v.patches_per_side() / tok_side;
  const int side = image_size / v.patch_size;
  check(side % kernel == 0,
        "--image-size: " + std::to_string(image_size) + " gives a " + std::to_string(side) + "x" +
            std::to_string(side) + " patch grid, which the projector's " + std::to_string(kernel) +
            "x" + std::to_string(kernel) +
            " average pool cannot divide into a square token grid (choose a multiple of " +
            std::to_string(kernel * v.patch_size) + ")");
  return {image_size, (side / kernel) * (side / kernel)};
}

nlohmann::ordered_json resolution_config(const nlohmann::ordered_json& config, Resolution r) {
  nlohmann::ordered_json j = config;
  object_at(j, "vision_config")["image_size"] = r.image_size;
  j["mm_tokens_per_image"] = r.mm_tokens;
  return j;
}

nlohmann::ordered_json preprocessor_config(const nlohmann::ordered_json& pre, Resolution r) {
  nlohmann::ordered_json j = pre;
  if (j.contains("size") || !j.contains("image_seq_length"))
    j["size"] = {{"height", r.image_size}, {"width", r.image_size}};
  j["image_seq_length"] = r.mm_tokens;
  return j;
}

nlohmann::ordered_json neurons_config(const nlohmann::ordered_json& config,
                                      const std::vector<int>& widths) {
  nlohmann::ordered_json j = config;
  nlohmann::ordered_json& t = object_at(j, "text_config");
  t["intermediate_size"] = *std::max_element(widths.begin(), widths.end());
  t["per_layer_intermediate_sizes"] = widths;
  return j;
}

std::pair<int, int> neuron_range(const PruneOptions& o, int n_layers) {
  const int last = o.neuron_last < 0 ? n_layers - 1 : o.neuron_last;
  check(o.neuron_first >= 0 && o.neuron_first <= last && last < n_layers,
        "--neuron-layers: range " + std::to_string(o.neuron_first) + "-" + std::to_string(last) +
            " is out of bounds (the checkpoint has " + std::to_string(n_layers) +
            " text layers, 0-" + std::to_string(n_layers - 1) + ")");
  check(o.neuron_max_reduction >= 0 && o.neuron_max_reduction < 1,
        "--neuron-max-reduction: " + std::to_string(o.neuron_max_reduction) + " is outside [0, 1)");
  return {o.neuron_first, last};
}

std::vector<float> resize_grid_bilinear(const float* grid, int side, int new_side,
                                        int64_t channels) {
  std::vector<float> out(static_cast<size_t>(new_side) * new_side * channels);
  const float scale = static_cast<float>(side) / static_cast<float>(new_side);
  struct Tap {
    int i0, i1;
    float w1;
  };
  std::vector<Tap> taps(new_side);
  for (int i = 0; i < new_side; ++i) {
    const float src = std::max(0.0f, (static_cast<float>(i) + 0.5f) * scale - 0.5f);
    const int i0 = std::min(static_cast<int>(src), side - 1);
    taps[i] = {i0, std::min(i0 + 1, side - 1), src - static_cast<float>(i0)};
  }
  for (int y = 0; y < new_side; ++y) {
    const Tap ty = taps[y];
    for (int x = 0; x < new_side; ++x) {
      const Tap tx = taps[x];
      const float* p00 = grid + (static_cast<int64_t>(ty.i0) * side + tx.i0) * channels;
      const float* p01 = grid + (static_cast<int64_t>(ty.i0) * side + tx.i1) * channels;
      const float* p10 = grid + (static_cast<int64_t>(ty.i1) * side + tx.i0) * channels;
      const float* p11 = grid + (static_cast<int64_t>(ty.i1) * side + tx.i1) * channels;
      float* o = out.data() + (static_cast<int64_t>(y) * new_side + x) * channels;
      for (int64_t ch = 0; ch < channels; ++ch) {
        const float top = (1.0f - tx.w1) * p00[ch] + tx.w1 * p01[ch];
        const float bottom = (1.0f - tx.w1) * p10[ch] + tx.w1 * p11[ch];
        o[ch] = (1.0f - ty.w1) * top + ty.w1 * bottom;
      }
    }
  }
  return out;
}

// ---- The steps

namespace {

std::vector<int64_t> iota_rows(int64_t n, int64_t padded) {
  std::vector<int64_t> v(padded, -1);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MB", static_cast<double>(b) / 1e6);
  return buf;
}

OutputPlan base_plan(const Checkpoint& in, nlohmann::ordered_json config) {
  OutputPlan p;
  p.config = std::move(config);
  p.index = in.has_index() || in.dir().shard_files().size() > 1;
  return p;
}

// The shard of the input tensor that an output entry of the same name comes from.
std::string source_of(const Checkpoint& in, const TensorSpec& out_spec) {
  return source_file(in, in.stored(in.spec(out_spec.name)).front());
}

// What an output config describes: its table and the model config.
struct OutModel {
  ModelConfig config;
  std::vector<TensorSpec> table;
};
OutModel out_model(const Checkpoint& in, const nlohmann::ordered_json& config,
                   const TableLayout& layout) {
  OutModel m;
  m.config = parse_out_config(config, in.files().generation_json());
  m.table = tensor_table(m.config, layout);
  return m;
}

OutputPlan plan_vocab(const Checkpoint& in, const PruneOptions& o, std::string* changes) {
  const ModelConfig& c = in.config();
  const TableLayout& L = in.layout();
  const Tokenizer tokenizer = Tokenizer::load(in.path());
  const std::vector<int32_t> keep = vocab_keep_ids(tokenizer, c, o.words);

  // An input that is already pruned: rows come through its token_map, and ids it pruned stay so.
  std::vector<int32_t> old_map;
  if (L.token_map) {
    const int32_t* map = load_token_map(in.dir(), *find_spec(in.table(), &TextWeights::token_map));
    old_map.resize(c.text.n_vocab);
    std::memcpy(old_map.data(), map, old_map.size() * 4);  // the data may be unaligned
  }
  auto token_map = std::make_shared<std::vector<int32_t>>(c.text.n_vocab, 0);
  std::vector<int64_t> rows = {-1}, ids = {-1};  // per compact row: embedding row, original id
  for (int32_t id : keep) {
    const int64_t src = old_map.empty() ? id : old_map[id];
    if (!old_map.empty() && src == 0) continue;
    (*token_map)[id] = static_cast<int32_t>(rows.size());
    rows.push_back(src);
    ids.push_back(id);
  }
  const int64_t compact = static_cast<int64_t>(rows.size());

  TableLayout out_layout = L;
  out_layout.token_map = true;
  const bool head = o.prune_lm_head && L.lm_head;
  if (head) out_layout.head_rows = compact;
  OutputPlan p = base_plan(in, vocab_config(in.config_json(), compact));
  const OutModel m = out_model(in, p.config, out_layout);
  const TensorSpec& embed = *find_spec(in.table(), &TextWeights::embed);
  const std::string file = source_of(in, embed);
  p.groups = build_groups(in, m.table, [&](const TensorSpec& s, OutGroup* g) {
    if (s.is(&TextWeights::embed)) {
      *g = gather_rows(in, embed, rows, s.name, file);
    } else if (s.is(&TextWeights::token_map)) {
      *g = int32_tensor(token_map, s.name, file);
    } else if (s.is(&TextWeights::lm_head) && head) {
      // A full head is indexed by original id, a compact one like the embedding.
      const bool full = !(L.token_map && L.head_rows == c.compact_vocab);
      *g = gather_rows(in, in.spec(s.name), full ? ids : rows, s.name, source_of(in, s));
    } else {
      return false;
    }
    return true;
  });
  const int64_t before = L.token_map ? c.compact_vocab : c.text.n_vocab;
  *changes = "embedding " + std::to_string(before) + " -> " + std::to_string(compact) + " rows (" +
             std::to_string(compact - 1) + " ids kept + zero row), token_map";
  if (head)
    *changes +=
        ", lm_head " + std::to_string(L.head_rows) + " -> " + std::to_string(compact) + " rows";
  else if (L.lm_head)
    *changes += ", lm_head kept full";
  return p;
}

OutputPlan plan_fc2(const Checkpoint& in, std::string* changes) {
  const ModelConfig& c = in.config();
  check(in.layout().vision,
        in.path() + ": step fc2 does not apply: the checkpoint has no vision tower");
  check(!in.layout().fc2_quantized,
        in.path() + ": step fc2 does not apply: the vision fc2 weights are already quantized");
  const int d = c.vision.d_ff, nd = fc2_padded_width(d, c.quant.group_size);
  TableLayout out_layout = in.layout();
  out_layout.fc2_quantized = true;
  OutputPlan p = base_plan(in, fc2_config(in.config_json(), nd));
  const OutModel m = out_model(in, p.config, out_layout);
  p.groups = build_groups(in, m.table, [&](const TensorSpec& s, OutGroup* g) {
    if (s.is(&VisionLayer::fc1)) {
      *g = gather_rows(in, in.spec(s.name), iota_rows(d, nd), s.name, source_of(in, s));
    } else if (s.is(&VisionLayer::fc2)) {
      *g =
          gather_columns_quantized(in, in.spec(s.name), iota_rows(d, nd), s.name, source_of(in, s));
    } else {
      return false;
    }
    return true;
  });
  *changes = "vision fc1 " + std::to_string(d) + " -> " + std::to_string(nd) +
             " rows (zero padding), fc2 float -> 4-bit g" + std::to_string(c.quant.group_size) +
             " with " + std::to_string(nd - d) + " zero input columns, " +
             std::to_string(c.vision.n_layers) + " layers";
  return p;
}

OutputPlan plan_layers(const Checkpoint& in, const PruneOptions& o, std::string* changes) {
  const ModelConfig& c = in.config();
  OutputPlan p = base_plan(in, layers_config(in.config_json(), c, o.drop_layers));
  const std::set<int> dropped(o.drop_layers.begin(), o.drop_layers.end());
  std::vector<int> kept;
  for (int l = 0; l < c.text.n_layers; ++l)
    if (!dropped.count(l)) kept.push_back(l);
  const OutModel m = out_model(in, p.config, in.layout());
  p.groups = build_groups(
      in, m.table,
      [&](const TensorSpec& s, OutGroup* g) {
        if (s.vision || s.layer < 0) return false;
        const TensorSpec& src = *find_spec(in.table(), s.field, kept[s.layer]);
        *g = copy_spec(in, src, s.name, source_file(in, in.stored(src).front()));
        return true;
      },
      [&](const std::string& name) -> std::string {
        int layer;
        std::string rest;
        if (!names::parse_text_layer(name, &layer, &rest)) return name;
        auto it = std::find(kept.begin(), kept.end(), layer);
        return it == kept.end() ? "" : names::text_layer(static_cast<int>(it - kept.begin()), rest);
      });
  std::string list;
  for (int l : dropped) list += (list.empty() ? "" : ",") + std::to_string(l);
  int n_global = 0;
  for (int l : kept) n_global += c.text.is_global[l];
  *changes = "text layers " + std::to_string(c.text.n_layers) + " -> " +
             std::to_string(kept.size()) + " (removed " + list + "; " + std::to_string(n_global) +
             " global layers kept)";
  return p;
}

OutputPlan plan_resolution(const Checkpoint& in, const PruneOptions& o, std::string* changes) {
  const ModelConfig& c = in.config();
  check(in.layout().vision,
        in.path() + ": step resolution does not apply: the checkpoint has no vision tower");
  const Resolution r = check_resolution(c, o.image_size);
  OutputPlan p = base_plan(in, resolution_config(in.config_json(), r));
  if (const auto& pre = in.files().preprocessor_json(); !pre.is_null())
    p.side_json["preprocessor_config.json"] = preprocessor_config(pre, r);
  if (const std::string path = in.path() + "/processor_config.json"; fs::exists(path)) {
    const nlohmann::ordered_json pre = read_json_file(path);
    if (pre.contains("image_seq_length")) {
      p.side_json["processor_config.json"] = pre;
      p.side_json["processor_config.json"]["image_seq_length"] = r.mm_tokens;
    }
  }
  const OutModel m = out_model(in, p.config, in.layout());
  const TensorSpec& spec = *find_spec(in.table(), &VisionWeights::position_embed);
  const std::string& pos = spec.name;
  const int side = c.vision.patches_per_side(), new_side = r.image_size / c.vision.patch_size;
  if (new_side != side) {
    // The grid is small (4096 x 1152 for the 4B model): dequantize it whole, resize, re-quantize.
    const Weight w = in.linear(spec);
    std::vector<float> grid(static_cast<size_t>(w.out) * w.in);
    for (int64_t rr = 0; rr < w.out; ++rr) weight_row(w, rr, grid.data() + rr * w.in);
    auto resized = std::make_shared<std::vector<float>>(
        resize_grid_bilinear(grid.data(), side, new_side, w.in));
    const int64_t rows = static_cast<int64_t>(new_side) * new_side;
    const std::string file = source_of(in, spec);
    OutGroup resized_group;
    if (w.quantized) {
      resized_group = quantized_from_floats(resized, rows, w.in, c.quant, w.scale_dtype, pos, file);
    } else {
      resized_group.file = file;
      resized_group.entries.push_back({names::weight(pos), w.dtype, {rows, w.in}});
      const DType dt = w.dtype;
      resized_group.write = [resized, dt](TensorSink& s) {
        std::vector<uint8_t> bytes(resized->size() * dtype_size(dt));
        from_f32(dt, resized->data(), resized->size(), bytes.data());
        s.write(bytes.data(), bytes.size());
      };
    }
    p.groups = build_groups(in, m.table, [&](const TensorSpec& s, OutGroup* g) {
      if (!s.is(&VisionWeights::position_embed)) return false;
      *g = resized_group;
      return true;
    });
  } else {
    p.groups = build_groups(in, m.table, nullptr);  // same grid: the tensor is kept bit for bit
  }
  *changes = "image " + std::to_string(c.vision.image_size) + " -> " +
             std::to_string(r.image_size) + " px, patch grid " + std::to_string(side) + "^2 -> " +
             std::to_string(new_side) + "^2, image tokens " +
             std::to_string(c.mm_tokens_per_image) + " -> " + std::to_string(r.mm_tokens);
  return p;
}

OutputPlan plan_neurons(const Checkpoint& in, const PruneOptions& o, std::string* changes) {
  const ModelConfig& c = in.config();
  const auto [first, last] = neuron_range(o, c.text.n_layers);
  ProfileOptions po;
  po.progress = o.progress;
  const ModelProfile prof =
      profile_model(in, o.calibration.empty() ? default_calibration_texts() : o.calibration, po);
  std::vector<int> widths = c.text.layer_d_ff;
  std::vector<std::vector<int64_t>> kept(c.text.n_layers);
  for (int l = first; l <= last; ++l) {
    kept[l] = select_neurons(prof.layers[l].neuron_score, o.neuron_threshold,
                             o.neuron_max_reduction, c.quant.group_size);
    widths[l] = static_cast<int>(kept[l].size());
  }
  OutputPlan p = base_plan(in, neurons_config(in.config_json(), widths));
  const OutModel m = out_model(in, p.config, in.layout());
  p.groups = build_groups(in, m.table, [&](const TensorSpec& s, OutGroup* g) {
    if (s.vision || s.layer < 0 || kept[s.layer].empty() ||
        widths[s.layer] == c.text.layer_d_ff[s.layer])
      return false;
    const bool rows = s.is(&TextLayer::gate_proj) || s.is(&TextLayer::up_proj);
    if (!rows && !s.is(&TextLayer::down_proj)) return false;
    const std::string file = source_of(in, s);
    *g = rows ? gather_rows(in, in.spec(s.name), kept[s.layer], s.name, file)
              : gather_columns_quantized(in, in.spec(s.name), kept[s.layer], s.name, file);
    return true;
  });
  int changed = 0;
  std::string summary;
  for (int l = first; l <= last; ++l) {
    if (widths[l] == c.text.layer_d_ff[l]) continue;
    ++changed;
    summary = std::to_string(c.text.layer_d_ff[l]) + " -> " + std::to_string(widths[l]);
  }
  *changes = "MLP widths of layers " + std::to_string(first) + "-" + std::to_string(last) + " (" +
             std::to_string(prof.n_tokens) + " calibration tokens): " + std::to_string(changed) +
             " layers pruned" + (changed ? " (last: " + summary + ")" : "");
  return p;
}

OutputPlan plan_split(const Checkpoint& in, std::string* changes) {
  check(in.layout().vision,
        in.path() + ": step split does not apply: the checkpoint has no vision tower");
  OutputPlan p = base_plan(in, in.config_json());
  p.index = true;
  p.groups = build_groups(in, in.table(), nullptr);
  uint64_t text = 0, vision = 0;
  for (auto& g : p.groups) {
    const bool v = names::is_vision(g.entries.front().name);
    g.file = names::split_file(v);
    (v ? vision : text) += g.bytes();
  }
  *changes = names::split_file(false) + " " + human_bytes(text) + " + " + names::split_file(true) +
             " " + human_bytes(vision);
  return p;
}

uint64_t dir_tensor_bytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") n += e.file_size();
  return n;
}

}  // namespace

StepReport run_step(Step step, const std::string& in_dir, const std::string& out_dir,
                    const PruneOptions& options, bool replace) {
  Timer timer;
  const Checkpoint in(in_dir);
  StepReport r;
  r.step = step;
  r.bytes_before = in.file_bytes();
  OutputPlan plan;
  switch (step) {
    case Step::Vocab:
      plan = plan_vocab(in, options, &r.changes);
      break;
    case Step::Fc2:
      plan = plan_fc2(in, &r.changes);
      break;
    case Step::Layers:
      plan = plan_layers(in, options, &r.changes);
      break;
    case Step::Resolution:
      plan = plan_resolution(in, options, &r.changes);
      break;
    case Step::Neurons:
      plan = plan_neurons(in, options, &r.changes);
      break;
    case Step::Split:
      plan = plan_split(in, &r.changes);
      break;
  }
  WriteOptions w;
  w.progress = options.progress;
  w.label = step_name(step);
  w.replace = replace;
  write_checkpoint(in, plan, out_dir, w);
  r.bytes_after = dir_tensor_bytes(out_dir);
  r.seconds = timer.seconds();
  return r;
}

}  // namespace gp::prune
