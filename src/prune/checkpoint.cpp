#include "prune/checkpoint.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "base/atomic_file.h"
#include "base/error.h"
#include "base/thread_pool.h"
#include "tensor/dtype.h"

namespace gp::prune {
namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_cancel{false};

constexpr size_t kChunkBytes = 8 << 20;  // bytes streamed (and pages dropped) at a time

uint64_t entry_bytes(const SafeTensorsWriter::Entry& e) {
  uint64_t n = dtype_size(e.dtype);
  for (int64_t d : e.shape) n *= static_cast<uint64_t>(d);
  return n;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

fs::path normalized(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();  // "x/.." is "."
  if (!p.has_filename()) p = p.parent_path();     // "dir/" names "dir"
  return p;
}

}  // namespace

// ---- Checkpoint

Checkpoint::Checkpoint(const std::string& dir) : files_(dir) {
  table_ = tensor_table(config(), layout());
  const std::string embed = names::weight(find_spec(table_, &TextWeights::embed)->name);
  check(files_.dir().has(embed),
        dir + ": no tensor '" + embed +
            "' (not a Gemma 3 checkpoint in MLX layout, or an incomplete one?)");
  std::set<std::string> covered;
  for (size_t i = 0; i < table_.size(); ++i) {
    check_tensor(files_.dir(), table_[i], config().quant);
    spec_index_[table_[i].name] = i;
    for (const auto& n : stored(table_[i])) covered.insert(n);
  }
  for (const auto& n : files_.dir().tensor_names())
    if (!covered.count(n)) extras_.push_back(n);
  has_index_ = fs::exists(dir + "/model.safetensors.index.json");
}

const TensorSpec& Checkpoint::spec(const std::string& name) const {
  auto it = spec_index_.find(name);
  check(it != spec_index_.end(), path() + ": '" + name + "' is not a tensor of this model");
  return table_[it->second];
}

bool Checkpoint::quantized(const TensorSpec& spec) const {
  return spec.role == TensorRole::Linear && files_.dir().has(names::scales(spec.name));
}

Weight Checkpoint::linear(const TensorSpec& spec) const {
  return load_linear(files_.dir(), spec, config().quant);
}

std::vector<std::string> Checkpoint::stored(const TensorSpec& spec) const {
  return stored_names(spec, quantized(spec));
}

DType Checkpoint::scale_dtype() const {
  return files_.dir().tensor(names::scales(find_spec(table_, &TextWeights::embed)->name)).dtype;
}

uint64_t Checkpoint::file_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_.dir().shard_files()) n += fs::file_size(path() + "/" + f);
  return n;
}

// ---- Memory, cancellation, sinks

void request_cancel() { g_cancel = true; }
bool cancel_requested() { return g_cancel; }

void TensorSink::write(const void* data, size_t nbytes) {
  check(!g_cancel, "interrupted");
  writer_.write(data, nbytes);
  written_ += nbytes;
  done_ += nbytes;
  progress_.update(done_, label_);
}

void TensorSink::copy(const TensorInfo& t) {
  for (size_t off = 0; off < t.nbytes; off += kChunkBytes) {
    const size_t n = std::min(kChunkBytes, t.nbytes - off);
    write(t.data + off, n);
    release_pages(t.data + off, n);
  }
}

uint64_t OutGroup::bytes() const {
  uint64_t n = 0;
  for (const auto& e : entries) n += entry_bytes(e);
  return n;
}

// ---- JSON

void write_json(const std::string& path, const nlohmann::ordered_json& j) {
  std::ofstream f(path, std::ios::binary);
  f << j.dump(2) << "\n";
  f.close();
  check(f.good(), path + ": write failed (disk full?)");
}

ModelConfig parse_out_config(const nlohmann::ordered_json& config,
                             const nlohmann::json& generation) {
  return parse_config(config, generation, "config.json (as rewritten)");
}

// ---- Writing a checkpoint

void write_checkpoint(const Checkpoint& in, const OutputPlan& plan, const std::string& out_dir,
                      const WriteOptions& options) {
  check(!out_dir.empty(), "output directory: empty path");
  const fs::path out = normalized(out_dir);
  check(!is_inside(in.path(), out),
        out.string() + ": is (or contains) the input checkpoint " + in.path() +
            "; the input is never modified (choose another output directory)");
  AtomicDir dir(out.string(), options.replace);
  const fs::path tmp = dir.tmp();
  try {
    std::vector<std::string> files;
    uint64_t total = 0;
    for (const auto& g : plan.groups) {
      // Every shard stays inside the output directory, whatever the input index said.
      check(is_plain_file_name(g.file), out.string() + ": output shard name '" + g.file +
                                            "' is not a plain file name (internal error)");
      if (std::find(files.begin(), files.end(), g.file) == files.end()) files.push_back(g.file);
      total += g.bytes();
    }
    Progress progress(options.label, total, options.progress);
    uint64_t done = 0;
    std::map<std::string, std::string> weight_map;  // sorted by name, as MLX writes it
    for (const auto& file : files) {
      std::vector<SafeTensorsWriter::Entry> entries;
      for (const auto& g : plan.groups)
        if (g.file == file)
          for (const auto& e : g.entries) {
            entries.push_back(e);
            check(weight_map.emplace(e.name, file).second,
                  "internal error: tensor '" + e.name + "' is written twice");
          }
      SafeTensorsWriter writer((tmp / file).string(), entries);
      for (const auto& g : plan.groups) {
        if (g.file != file) continue;
        TensorSink sink(writer, progress, done, g.entries.front().name);
        g.write(sink);
        check(sink.written() == g.bytes(), "internal error: " + std::to_string(sink.written()) +
                                               " bytes written for '" + g.entries.front().name +
                                               "', expected " + std::to_string(g.bytes()));
      }
      writer.close();
    }
    progress.finish();
    if (plan.index) {
      nlohmann::ordered_json index;
      index["metadata"] = {{"total_size", total}};
      index["weight_map"] = weight_map;
      write_json((tmp / "model.safetensors.index.json").string(), index);
    }
    write_json((tmp / "config.json").string(), plan.config);
    for (const auto& entry : fs::directory_iterator(in.path())) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_regular_file() || name == "config.json" ||
          name == "model.safetensors.index.json" || ends_with(name, ".safetensors") ||
          plan.side_json.count(name))
        continue;
      fs::copy_file(entry.path(), tmp / name);
    }
    for (const auto& [name, j] : plan.side_json) write_json((tmp / name).string(), j);
    Checkpoint written(tmp.string());  // the output must load: every tensor of its table present
  } catch (const fs::filesystem_error& e) {
    throw Error(out.string() + ": " + e.what() + " (disk full?)");
  }
  dir.commit();
}

// ---- Output groups

std::string source_file(const Checkpoint& in, const std::string& stored_name) {
  return in.dir().file_of(stored_name);
}

OutGroup copy_tensor(const Checkpoint& in, const std::string& name, const std::string& out_name,
                     const std::string& file) {
  const TensorInfo& t = in.dir().tensor(name);
  OutGroup g;
  g.file = file;
  g.entries.push_back({out_name, t.dtype, t.shape});
  const ModelDir* dir = &in.dir();
  g.write = [dir, name](TensorSink& s) { s.copy(dir->tensor(name)); };
  return g;
}

OutGroup copy_spec(const Checkpoint& in, const TensorSpec& spec, const std::string& out_name,
                   const std::string& file) {
  OutGroup g;
  g.file = file;
  std::vector<std::string> sources = in.stored(spec);
  for (const auto& n : sources) {
    const TensorInfo& t = in.dir().tensor(n);
    g.entries.push_back({out_name + n.substr(spec.name.size()), t.dtype, t.shape});
  }
  const ModelDir* dir = &in.dir();
  g.write = [dir, sources](TensorSink& s) {
    for (const auto& n : sources) s.copy(dir->tensor(n));
  };
  return g;
}

OutGroup gather_rows(const Checkpoint& in, const TensorSpec& spec, std::vector<int64_t> rows,
                     const std::string& out_name, const std::string& file) {
  const std::vector<std::string> sources = in.stored(spec);
  const int64_t n = static_cast<int64_t>(rows.size()), in_rows = spec.shape[0];
  for (int64_t r : rows)
    check(r >= -1 && r < in_rows, out_name + ": row " + std::to_string(r) + " is outside the " +
                                      std::to_string(in_rows) + " rows of " + spec.name);
  OutGroup g;
  g.file = file;
  for (const auto& name : sources) {
    const TensorInfo& t = in.dir().tensor(name);
    std::vector<int64_t> shape = t.shape;
    shape[0] = n;  // every stored tensor of a linear has one row (or element) per output
    g.entries.push_back({out_name + name.substr(spec.name.size()), t.dtype, shape});
  }
  const ModelDir* dir = &in.dir();
  g.write = [dir, sources, rows = std::move(rows), in_rows](TensorSink& s) {
    for (const auto& name : sources) {
      const TensorInfo& t = dir->tensor(name);
      const size_t row_bytes = t.nbytes / static_cast<size_t>(in_rows);
      std::vector<uint8_t> block;
      block.reserve(std::max(row_bytes, kChunkBytes));
      int64_t lo = in_rows, hi = -1;  // source rows read since the last flush
      auto flush = [&] {
        s.write(block.data(), block.size());
        block.clear();
        if (hi >= lo) release_pages(t.data + lo * row_bytes, (hi - lo + 1) * row_bytes);
        lo = in_rows;
        hi = -1;
      };
      for (int64_t r : rows) {
        if (r < 0) {
          block.insert(block.end(), row_bytes, 0);
        } else {
          block.insert(block.end(), t.data + r * row_bytes, t.data + (r + 1) * row_bytes);
          lo = std::min(lo, r);
          hi = std::max(hi, r);
        }
        if (block.size() >= kChunkBytes) flush();
      }
      flush();
    }
  };
  return g;
}

OutGroup gather_columns_quantized(const Checkpoint& in, const TensorSpec& spec,
                                  std::vector<int64_t> cols, const std::string& out_name,
                                  const std::string& file) {
  const Weight w = in.linear(spec);
  const QuantFormat fmt = in.config().quant;
  const int64_t n_cols = static_cast<int64_t>(cols.size()), gs = fmt.group_size;
  check(n_cols % gs == 0, out_name + ": " + std::to_string(n_cols) +
                              " input columns are not a multiple of the group size " +
                              std::to_string(gs));
  for (int64_t c : cols)
    check(c >= -1 && c < w.in, out_name + ": column " + std::to_string(c) + " is outside the " +
                                   std::to_string(w.in) + " columns of " + spec.name);
  const DType sd = w.quantized ? w.scale_dtype : in.scale_dtype();
  const int64_t groups = n_cols / gs, words = n_cols * fmt.bits / 32;
  OutGroup g;
  g.file = file;
  g.entries = quantized_entries(out_name, w.out, n_cols, fmt, sd);
  std::string bias_name;
  if (spec.has_bias) {
    bias_name = names::bias(spec.name);
    const TensorInfo& b = in.dir().tensor(bias_name);
    g.entries.push_back({names::bias(out_name), b.dtype, b.shape});
  }
  const ModelDir* dir = &in.dir();
  const std::vector<std::string> sources = in.stored(spec);
  g.write = [w, fmt, cols = std::move(cols), sd, groups, words, gs, dir, bias_name,
             sources](TensorSink& s) {
    // An output group that is one whole input group, in order, keeps its bytes.
    const int words_per_group = static_cast<int>(gs) * fmt.bits / 32;
    std::vector<int64_t> verbatim(groups, -1);  // input group copied, or -1
    for (int64_t og = 0; og < groups && w.quantized && w.fmt.group_size == gs; ++og) {
      const int64_t c0 = cols[og * gs];
      bool whole = c0 >= 0 && c0 % gs == 0;
      for (int64_t k = 1; whole && k < gs; ++k) whole = cols[og * gs + k] == c0 + k;
      if (whole) verbatim[og] = c0 / gs;
    }
    const size_t ss = dtype_size(sd);
    std::vector<uint8_t> scales(w.out * groups * ss), biases(w.out * groups * ss);
    const int64_t block_rows =
        std::max<int64_t>(1, static_cast<int64_t>(kChunkBytes) / (words * 4));
    std::vector<uint32_t> q(block_rows * words);
    for (int64_t r0 = 0; r0 < w.out; r0 += block_rows) {
      const int64_t rows = std::min(block_rows, w.out - r0);
      ThreadPool::global().parallel_for(rows, 1, [&](size_t begin, size_t end, int) {
        std::vector<float> row(w.in), vals(gs);
        float sc, bi;
        for (size_t i = begin; i < end; ++i) {
          const int64_t r = r0 + static_cast<int64_t>(i);
          weight_row(w, r, row.data());
          for (int64_t og = 0; og < groups; ++og) {
            uint32_t* qg = q.data() + i * words + og * words_per_group;
            uint8_t* sp = scales.data() + (r * groups + og) * ss;
            uint8_t* bp = biases.data() + (r * groups + og) * ss;
            if (verbatim[og] >= 0) {
              const int64_t ig = verbatim[og], in_groups = w.groups_per_row();
              std::memcpy(qg, w.q + r * (w.in * fmt.bits / 32) + ig * words_per_group,
                          words_per_group * 4);
              std::memcpy(sp, static_cast<const uint8_t*>(w.scales) + (r * in_groups + ig) * ss,
                          ss);
              std::memcpy(bp, static_cast<const uint8_t*>(w.biases) + (r * in_groups + ig) * ss,
                          ss);
              continue;
            }
            for (int64_t k = 0; k < gs; ++k) {
              const int64_t c = cols[og * gs + k];
              vals[k] = c < 0 ? 0.0f : row[c];
            }
            quantize_row(vals.data(), gs, fmt, qg, &sc, &bi);
            from_f32(sd, &sc, 1, sp);
            from_f32(sd, &bi, 1, bp);
          }
        }
      });
      s.write(q.data(), rows * words * 4);
    }
    s.write(scales.data(), scales.size());
    s.write(biases.data(), biases.size());
    for (const auto& n : sources) release_pages(dir->tensor(n));
    if (!bias_name.empty()) s.copy(dir->tensor(bias_name));
  };
  return g;
}

OutGroup quantized_from_floats(std::shared_ptr<const std::vector<float>> values, int64_t rows,
                               int64_t in, QuantFormat fmt, DType scale_dtype,
                               const std::string& out_name, const std::string& file) {
  check(static_cast<int64_t>(values->size()) == rows * in,
        out_name + ": " + std::to_string(values->size()) + " values for " + std::to_string(rows) +
            " rows of " + std::to_string(in));
  check(in % fmt.group_size == 0, out_name + ": " + std::to_string(in) +
                                      " columns are not a multiple of the group size " +
                                      std::to_string(fmt.group_size));
  OutGroup g;
  g.file = file;
  g.entries = quantized_entries(out_name, rows, in, fmt, scale_dtype);
  g.write = [values, rows, in, fmt, scale_dtype](TensorSink& s) {
    const QuantizedRows qr = quantize_rows(values->data(), rows, in, fmt, scale_dtype);
    s.write(qr.q.data(), qr.q.size() * 4);
    s.write(qr.scales.data(), qr.scales.size());
    s.write(qr.biases.data(), qr.biases.size());
  };
  return g;
}

OutGroup int32_tensor(std::shared_ptr<const std::vector<int32_t>> values, const std::string& name,
                      const std::string& file) {
  OutGroup g;
  g.file = file;
  g.entries.push_back({name, DType::I32, {static_cast<int64_t>(values->size())}});
  g.write = [values](TensorSink& s) { s.write(values->data(), values->size() * 4); };
  return g;
}

std::vector<OutGroup> build_groups(
    const Checkpoint& in, const std::vector<TensorSpec>& out_table, const CustomGroup& custom,
    const std::function<std::string(const std::string&)>& extra_name) {
  std::vector<OutGroup> groups;
  for (const TensorSpec& spec : out_table) {
    OutGroup g;
    if (custom && custom(spec, &g)) {
      groups.push_back(std::move(g));
      continue;
    }
    check(in.has_spec(spec.name),
          "internal error: output tensor '" + spec.name + "' has no source in " + in.path());
    const TensorSpec& src = in.spec(spec.name);
    groups.push_back(copy_spec(in, src, spec.name, source_file(in, in.stored(src).front())));
  }
  for (const auto& name : in.extra_tensors()) {
    const std::string out = extra_name ? extra_name(name) : name;
    if (!out.empty()) groups.push_back(copy_tensor(in, name, out, source_file(in, name)));
  }
  return groups;
}

}  // namespace gp::prune
