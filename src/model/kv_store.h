// The KV cache as the forward pass sees it. The cache itself is a runtime object
// (runtime/kv_cache.h implements this), and model/ may not include runtime/: the model names only
// this.
#pragma once

#include "kernels/ops.h"

namespace gp {

class KvStore {
 public:
  // Positions held: the next rows run at n_past(), n_past() + 1, ...
  virtual int n_past() const = 0;
  virtual int max_context() const = 0;
  // The cached keys and values of `layer` that rows at n_past() and after may attend to, as one
  // attention segment (slots whose pos is < 0 hold nothing).
  virtual ops::KvSegment cached(int layer) const = 0;
  // Stores keys and values k, v [n, n_kv_heads, head_dim] (f32) of positions n_past() ..
  // n_past() + n - 1 in `layer`. A segment cached(layer) gave before is spent (a ring reuses
  // slots).
  virtual void append(int layer, const float* k, const float* v, int n) = 0;
  // Every layer holds the n appended positions: n_past() grows by n.
  virtual void commit(int n) = 0;

 protected:
  ~KvStore() = default;
};

}  // namespace gp
