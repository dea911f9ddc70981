// The memory read bandwidth probe: the decode roofline of gemma-bench and kernels_bench (not a
// model operation, so not in kernels/ops.h).
#pragma once

#include <cstddef>

namespace gp::cpu {

// Read bandwidth of main memory in GB/s over all threads of the pool: the best of `reps` sums of a
// buffer of `bytes` (far larger than any cache). The decode roofline is this over the weight
// bytes read per token.
double read_bandwidth_gbs(size_t bytes, int reps = 3);

}  // namespace gp::cpu
