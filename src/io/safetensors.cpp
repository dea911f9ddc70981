#include "io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "base/error.h"

namespace gp {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::BF16:
    case DType::F16:
      return 2;
    case DType::F32:
    case DType::U32:
    case DType::I32:
      return 4;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::F32:
      return "F32";
    case DType::U32:
      return "U32";
    case DType::I32:
      return "I32";
  }
  return "?";
}

DType dtype_from_name(const std::string& name, const std::string& context) {
  for (DType t : {DType::BF16, DType::F16, DType::F32, DType::U32, DType::I32}) {
    if (name == dtype_name(t)) return t;
  }
  throw Error(context + ": unsupported dtype '" + name +
              "' (expected one of BF16, F16, F32, U32, I32)");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // checked when the header was read (checked_numel)
  return n;
}

bool checked_numel(const std::vector<int64_t>& shape, size_t elem_size, uint64_t* bytes) {
  uint64_t n = elem_size;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  if (n > static_cast<uint64_t>(INT64_MAX)) return false;
  *bytes = n;
  return true;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string TensorInfo::shape_str() const { return shape_to_string(shape); }

SafeTensorsFile::SafeTensorsFile(const std::string& path) : file_(path) {
  const size_t size = file_.size();
  const std::string hint = " (incomplete download or corrupt file?)";
  check(size >= 8, path + ": file is " + std::to_string(size) +
                       " bytes, too short for a safetensors header" + hint);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_.data(), 8);
  check(header_len <= size - 8, path + ": header length " + std::to_string(header_len) +
                                    " exceeds the file size " + std::to_string(size) + hint);
  const char* hdr = reinterpret_cast<const char*>(file_.data() + 8);
  nlohmann::json j;
  // nlohmann keeps the last of two equal keys: a tensor named twice must be refused, not replaced.
  std::set<std::string> top_keys;
  std::string duplicate;
  const nlohmann::json::parser_callback_t on_key = [&](int depth, nlohmann::json::parse_event_t ev,
                                                       nlohmann::json& parsed) {
    if (depth == 1 && ev == nlohmann::json::parse_event_t::key &&
        !top_keys.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    j = nlohmann::json::parse(hdr, hdr + header_len, on_key);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": header is not valid JSON (" + e.what() + ")" + hint);
  }
  check(j.is_object(), path + ": header is not a JSON object" + hint);
  check(duplicate.empty(), path + ": tensor '" + duplicate +
                               "' appears twice in the header (expected unique names)" + hint);
  const uint8_t* data_start = file_.data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      if (v.is_object())
        for (auto& [k, mv] : v.items())
          if (mv.is_string()) metadata_[k] = mv.get<std::string>();
      continue;
    }
    const std::string ctx = path + ": tensor '" + name + "'";
    check(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
          ctx + ": expected an object with dtype, shape and data_offsets" + hint);
    check(v["dtype"].is_string(), ctx + ": dtype is not a string");
    TensorInfo t;
    t.name = name;
    t.file = path;
    t.dtype = dtype_from_name(v["dtype"].get<std::string>(), ctx);
    check(v["shape"].is_array(), ctx + ": shape is not an array");
    check(v["shape"].size() <= 8, ctx + ": shape has " + std::to_string(v["shape"].size()) +
                                      " dimensions, expected at most 8" + hint);
    for (auto& d : v["shape"]) {
      check(d.is_number_unsigned() && d.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX),
            ctx + ": shape entries must be non-negative integers, found " + d.dump());
      t.shape.push_back(d.get<int64_t>());
    }
    auto& off = v["data_offsets"];
    check(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
              off[1].is_number_unsigned(),
          ctx + ": data_offsets must be two non-negative integers, found " + off.dump());
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    check(b <= e && e <= data_size, ctx + ": data_offsets [" + std::to_string(b) + ", " +
                                        std::to_string(e) + "] lie outside the data section of " +
                                        std::to_string(data_size) + " bytes" + hint);
    uint64_t expected = 0;
    check(checked_numel(t.shape, dtype_size(t.dtype), &expected),
          ctx + ": shape " + t.shape_str() + " of " + dtype_name(t.dtype) +
              " has a byte size beyond 2^63 (corrupt header)");
    check(e - b == expected, ctx + ": shape " + t.shape_str() + " of " + dtype_name(t.dtype) +
                                 " needs " + std::to_string(expected) +
                                 " bytes, data_offsets give " + std::to_string(e - b) + hint);
    t.data = data_start + b;
    t.nbytes = e - b;
    if (e > b) ranges.emplace_back(b, e);
    tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    check(ranges[i].first >= ranges[i - 1].second,
          path + ": tensors overlap at data offset " + std::to_string(ranges[i].first) + hint);
  }
}

const TensorInfo* SafeTensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

SafeTensorsWriter::SafeTensorsWriter(const std::string& path, std::vector<Entry> entries,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), entries_(std::move(entries)) {
  nlohmann::ordered_json j;
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t off = 0;
  for (auto& e : entries_) {
    uint64_t nbytes = 0;
    check(
        checked_numel(e.shape, dtype_size(e.dtype), &nbytes),
        path + ": tensor '" + e.name + "' of shape " + shape_to_string(e.shape) + " is too large");
    sizes_.push_back(nbytes);
    j[e.name] = {
        {"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + nbytes}}};
    off += nbytes;
  }
  data_size_ = off;
  std::string header = j.dump();
  header.resize((header.size() + 7) / 8 * 8, ' ');  // keep the data 8-byte aligned
  f_ = std::fopen(path.c_str(), "wb");
  check(f_ != nullptr, path + ": cannot create (" + std::strerror(errno) + ")");
  const uint64_t len = header.size();
  if (std::fwrite(&len, 8, 1, f_) != 1 ||
      std::fwrite(header.data(), 1, header.size(), f_) != header.size()) {
    std::fclose(f_);
    f_ = nullptr;
    throw Error(path + ": write failed (" + std::strerror(errno) + "; disk full?)");
  }
  while (current_ < sizes_.size() && sizes_[current_] == 0) ++current_;
}

SafeTensorsWriter::~SafeTensorsWriter() {
  if (f_) std::fclose(f_);
}

void SafeTensorsWriter::write(const void* data, size_t nbytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (nbytes > 0) {
    check(current_ < entries_.size(), path_ + ": more data written than the declared tensors hold");
    const size_t n = std::min(nbytes, sizes_[current_] - written_in_current_);
    if (std::fwrite(p, 1, n, f_) != n)
      throw Error(path_ + ": write failed (" + std::strerror(errno) + "; disk full?)");
    p += n;
    nbytes -= n;
    written_in_current_ += n;
    while (current_ < entries_.size() && written_in_current_ == sizes_[current_]) {
      ++current_;
      written_in_current_ = 0;
    }
  }
}

void SafeTensorsWriter::close() {
  check(f_ != nullptr, path_ + ": already closed");
  const bool complete = current_ == entries_.size();
  const bool flushed = std::fflush(f_) == 0;
  const bool closed = std::fclose(f_) == 0;
  f_ = nullptr;
  check(complete, path_ + ": tensor '" + (complete ? "" : entries_[current_].name) +
                      "' was not written in full");
  check(flushed && closed, path_ + ": write failed (" + std::strerror(errno) + "; disk full?)");
}

}  // namespace gp
