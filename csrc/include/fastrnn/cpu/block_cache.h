// Large per-call buffers served from blocks that earlier calls freed.
//
// A layer call's per-token scratch (the hoisted input projection, the
// workspace, dG, h_prev) runs to hundreds of MiB at long sequences. glibc maps
// blocks over 32 MiB afresh on every allocation and unmaps them on free (and,
// depending on the process's history, blocks of a few MiB too), so each call
// paid the kernel's zeroing of every new page at first touch: an LSTM
// training step at B = 64, H = 1024, T = 256 spent 19% of its time in
// clear_page (1 thread, a KVM guest on an Intel Xeon). cached_empty() hands out
// such buffers from blocks kept mapped instead.
//
// Bounds: a cached block serves a request of at least half its size; unused
// blocks stay cached up to FASTRNN_CPU_CACHE_MB MiB in all (default 1024; 0
// turns the cache off), and the rest go back to the system when freed.
// Buffers handed to the user (y, dx) do not come from here: their storage
// would not be resizable.
#pragma once

#include <ATen/ATen.h>

namespace fastrnn::cpu {

// at::empty(sizes, opts) for a CPU buffer; from the cache when >= 2 MiB.
// New blocks are hinted to transparent huge pages before their first touch.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& opts);

}  // namespace fastrnn::cpu
