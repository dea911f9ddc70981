// safetensors files: a memory-mapped, bounds-checked reader and a streaming writer.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the data; offsets are relative to the data start and may be unaligned.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/mapped_file.h"

namespace gp {

enum class DType { BF16, F16, F32, U32, I32 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name, const std::string& context);  // throws Error

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping
  size_t nbytes = 0;
  std::string file;  // path of the file holding it, for error messages

  int64_t numel() const;
  std::string shape_str() const;
};

std::string shape_to_string(const std::vector<int64_t>& shape);
// The byte size of a tensor, elem_size times every dimension; false when a dimension is negative
// or the product passes 2^63 (a hostile header's [2^62, 32] would wrap to 0).
bool checked_numel(const std::vector<int64_t>& shape, size_t elem_size, uint64_t* bytes);

class SafeTensorsFile {
 public:
  // Maps and validates the whole header: dtypes, shapes against byte sizes, offsets in range and
  // not overlapping. Throws Error naming the file and the tensor.
  explicit SafeTensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  MappedFile file_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes a safetensors file tensor by tensor: the header is fixed up front from the declared
// tensors, then each tensor's bytes are streamed in declaration order.
class SafeTensorsWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  SafeTensorsWriter(const std::string& path, std::vector<Entry> entries,
                    const std::map<std::string, std::string>& metadata = {{"format", "mlx"}});
  ~SafeTensorsWriter();
  SafeTensorsWriter(const SafeTensorsWriter&) = delete;
  SafeTensorsWriter& operator=(const SafeTensorsWriter&) = delete;

  // Appends bytes of the current tensor; a tensor may be written in several calls.
  void write(const void* data, size_t nbytes);
  // Checks every tensor was written in full, flushes and closes. Throws Error on a short write.
  void close();
  uint64_t total_bytes() const { return data_size_; }

 private:
  std::string path_;
  std::vector<Entry> entries_;
  std::vector<size_t> sizes_;
  size_t current_ = 0, written_in_current_ = 0;
  uint64_t data_size_ = 0;
  std::FILE* f_ = nullptr;
};

}  // namespace gp
