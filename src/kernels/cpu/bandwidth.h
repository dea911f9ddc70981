// The memory read bandwidth probe: the decode roofline of gemma-bench and kernels_bench (not a
// model operation, so not in kernels/ops.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace gp::cpu {

// Read bandwidth of main memory in GB/s over all threads of the pool: the best of `reps` sums of a
// buffer of `bytes` (far larger than any cache). The decode roofline is this over the weight
// bytes read per token.
double read_bandwidth_gbs(size_t bytes, int reps = 3);

// The same sum over memory in place, e.g. the weight pages a decode step reads (as mapped from
// the checkpoint): 64 KiB blocks of all ranges taken in turn by the threads, best of `reps`.
// The ragged ends of each range (under 320 bytes) are left out.
double read_bandwidth_gbs(std::span<const std::span<const uint8_t>> ranges, int reps = 3);

}  // namespace gp::cpu
