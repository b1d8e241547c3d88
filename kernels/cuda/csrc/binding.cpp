// The torch-facing side of the CUDA backend (the only file that includes torch): the CUDA implementation of
// flash_attention::cuda_fwd (and cuda_varlen_fwd, cuda_decode, cuda_kvcache_append), whose schemas, fake (meta)
// implementations and autograd rules are defined in Python (kernels/cuda/__init__.py), and
// flash_attention::cuda_load_kernel / cuda_load_decode_kernel, which file a kernel library's entry under the handle
// that kernels/cuda/_registry.py gave it.
// Inputs were validated in Python; the checks here guard direct torch.ops calls.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "decode_params.h"
#include "fwd_launch_api.h"
#include "params.h"

namespace {

// cp.async moves 16 bytes and TMA wants 16-byte aligned bases and strides: the base must be 16-byte aligned and
// every stride that is used a multiple of 8 elements. Dense tensors and (B, N, H, D) transposed views always are;
// anything else is copied once.
at::Tensor aligned_for_16_byte_loads(const at::Tensor& t) {
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.size(d) == 1 || t.stride(d) % 8 == 0);
  return ok ? t : t.contiguous();
}

// Numbers in error messages are formatted here, not by the ostream that c10::str builds: inserting an integer into it
// crashed inside this library on the GPU machine (torch 2.11, a libstdc++ there older than the compiler's headers;
// strings pass unharmed).
template <typename Integer>
std::string text(Integer value) { return std::to_string(value); }
const char* text(bool value) { return value ? "true" : "false"; }

// Strides of dims of size 1 are never multiplied by a nonzero index; zero them so odd values cannot matter.
int64_t used_stride(const at::Tensor& t, int dim) { return t.size(dim) == 1 ? 0 : t.stride(dim); }

// The kernels live in their own libraries (one per kernel that kernels/cuda/_registry.py lists, built on first use
// by kernels/cuda/_loader.py), which the binding dlopens when Python asks (cuda_load_kernel, cuda_load_decode_kernel)
// and files under the handle the registry gave the kernel. Every call names its kernel by that handle: the choice of
// a kernel (family, head dim, arch) is the registry's alone. Slots are written under a mutex and read without one on
// every call.
constexpr int64_t kMaxKernels = 256;
std::atomic<const flash::KernelEntry*> g_forward_entries[kMaxKernels];
std::atomic<const flash::KernelEntry*> g_varlen_entries[kMaxKernels];  // the SM90 libraries' packed-batch kernels
std::atomic<const flash::DecodeKernelEntry*> g_decode_entries[kMaxKernels];
std::mutex g_load_mutex;

void check_handle(int64_t handle) {
  TORCH_CHECK_VALUE(handle >= 0 && handle < kMaxKernels, "flash_attention cuda: kernel handle ", text(handle),
                    " is out of range [0, ", text(kMaxKernels), ")");
}

// The entry a kernel library exports as `symbol`, of type Entry, after dlopen (the library stays open for the life
// of the process) and a check that it was built against this binding's Params layout. Null if it exports none and
// none is required.
template <typename Entry, typename Params>
const Entry* open_kernel_entry(const std::string& path, const char* symbol, bool required = true) {
  void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  TORCH_CHECK(library != nullptr, "flash_attention cuda: cannot load kernel library ", path, ": ", dlerror());
  const auto* entry = static_cast<const Entry*>(dlsym(library, symbol));
  TORCH_CHECK(entry != nullptr || !required, "flash_attention cuda: ", path, " does not export ", symbol);
  TORCH_CHECK(entry == nullptr || entry->params_bytes == static_cast<int>(sizeof(Params)),
              "flash_attention cuda: ", path, " was built against another parameter layout; clear the cache");
  return entry;
}

// flash_attention::cuda_load_kernel(path, handle): dlopen a forward kernel library and file its entry (and an SM90
// library's packed-batch entry) under `handle`. Called by the loader once per library and process; loading one
// twice is harmless.
void cuda_load_kernel(const std::string& path, int64_t handle) {
  check_handle(handle);
  std::lock_guard<std::mutex> lock(g_load_mutex);
  g_forward_entries[handle].store(
      open_kernel_entry<flash::KernelEntry, flash::FwdParams>(path, "flash_attention_kernel_entry"));
  g_varlen_entries[handle].store(open_kernel_entry<flash::KernelEntry, flash::FwdParams>(
      path, "flash_attention_varlen_entry", /*required=*/false));
}

// The entry filed under `handle`, checked against the call it is to run: a handle that names another kernel (a
// direct torch.ops call) is refused, never launched on operands it does not fit.
const flash::KernelEntry& forward_entry(const std::atomic<const flash::KernelEntry*>* table, int64_t handle,
                                        at::ScalarType dtype, int64_t head_dim, bool causal, const char* what) {
  check_handle(handle);
  const flash::KernelEntry* entry = table[handle].load();
  TORCH_CHECK(entry != nullptr, "flash_attention cuda: no ", what, " kernel is loaded under handle ", text(handle),
              ": flash_attention.cuda selects, builds and loads kernels (flash_attention.cuda.load_kernel)");
  const flash::DType want = dtype == at::kHalf ? flash::DType::kFloat16 : flash::DType::kBFloat16;
  TORCH_CHECK_VALUE(entry->dtype == want && entry->causal == causal && head_dim <= entry->head_dim,
                    "flash_attention cuda: kernel ", text(handle), " (head dim ", text(entry->head_dim), ", causal ",
                    text(entry->causal), ") does not run this call (head dim ", text(head_dim), ", causal ",
                    text(causal), ")");
  return *entry;
}

// The dynamic deal's counter for a call on `stream` (current device). Every kernel leaves it zero (finish_draws in
// tile_scheduler.h), so one per (device, stream), zeroed once and kept for the process, serves every call in stream
// order without a zeroing launch per call (a launch, an allocation and host time that a 50 us call notices). Other
// streams have their own, so concurrent calls never share one. A call under CUDA graph capture gets a fresh zeroed
// one, held by `owner`, from the graph's pool: a replay may run on any stream, next to eager calls on this one.
flash::TileCounter* tile_counter_for(cudaStream_t stream, const at::TensorOptions& options, at::Tensor& owner) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const auto words = static_cast<int64_t>(sizeof(flash::TileCounter) / sizeof(int32_t));
  if (capture != cudaStreamCaptureStatusNone) {
    owner = at::zeros({words}, options.dtype(at::kInt));
    return reinterpret_cast<flash::TileCounter*>(owner.data_ptr());
  }
  static std::mutex mutex;
  static auto* counters = new std::map<std::pair<int, cudaStream_t>, flash::TileCounter*>();  // never freed
  std::lock_guard<std::mutex> lock(mutex);
  flash::TileCounter*& counter = (*counters)[{options.device().index(), stream}];
  if (counter == nullptr) {
    // Zeroed on this stream, ahead of the kernel; the tensor is leaked on purpose (no free at process exit, after
    // the allocator may be gone).
    auto* storage = new at::Tensor(at::zeros({words}, options.dtype(at::kInt)));
    counter = reinterpret_cast<flash::TileCounter*>(storage->data_ptr());
  }
  return counter;
}

// What every forward call fills alike: the operands' and outputs' pointers, the head counts, head_dim, the scale, the
// mask and the device's limits (strides and lengths differ between dense and packed calls and are the caller's).
// Attributes, not cudaGetDeviceProperties: cheap per call, and c10/cuda alone (no ATen/cuda, whose headers want
// cuSPARSE and cuBLAS) is enough, so CI can compile this file without them.
void fill_common_params(flash::FwdParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& out, const at::Tensor& lse, int64_t heads_q, int64_t heads_kv,
                        int64_t head_dim, double softmax_scale, bool causal, int device) {
  p.q_ptr = q.data_ptr();
  p.k_ptr = k.data_ptr();
  p.v_ptr = v.data_ptr();
  p.o_ptr = out.data_ptr();
  p.lse_ptr = lse.data_ptr<float>();
  p.heads_q = static_cast<int>(heads_q);
  p.heads_kv = static_cast<int>(heads_kv);
  p.group = static_cast<int>(heads_q / heads_kv);
  p.head_dim = static_cast<int>(head_dim);
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.scale_log2 = static_cast<float>(softmax_scale * M_LOG2E);
  p.causal = causal;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&p.max_smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&p.num_sms, cudaDevAttrMultiProcessorCount, device));
  int l2_bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  p.l2_bytes = l2_bytes;
}

// flash_attention::cuda_fwd: the forward kernel filed under `kernel` (kernels/cuda/_registry.py chose it) on
// (batch, heads, seqlen, head_dim) operands. The SM90 family's launch options: `sm90_schedule` (flash::Sm90Schedule,
// the grid and its deal; auto lets the launcher decide by the tiles) and `sm90_cta_pairs` (pairs of CTAs may share
// K/V where tile_scheduler.h's sm90_pairs_apply allows). Functional: allocates and returns (out, lse).
std::tuple<at::Tensor, at::Tensor> cuda_fwd(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                            bool causal, double softmax_scale, int64_t kernel,
                                            int64_t sm90_schedule, bool sm90_cta_pairs) {
  TORCH_CHECK_VALUE(q_in.is_cuda() && k_in.is_cuda() && v_in.is_cuda(), "flash_attention cuda: inputs must be CUDA");
  TORCH_CHECK_VALUE(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, "flash_attention cuda: inputs must be 4-D");
  const auto dtype = q_in.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kHalf || dtype == at::kBFloat16, "flash_attention cuda: dtype must be fp16 or bf16");
  TORCH_CHECK_TYPE(k_in.scalar_type() == dtype && v_in.scalar_type() == dtype, "flash_attention cuda: dtype mismatch");
  TORCH_CHECK_VALUE(q_in.stride(-1) == 1 && k_in.stride(-1) == 1 && v_in.stride(-1) == 1,
                    "flash_attention cuda: head_dim must have unit stride");
  const int64_t batch = q_in.size(0), heads_q = q_in.size(1), seqlen_q = q_in.size(2), head_dim = q_in.size(3);
  const int64_t heads_kv = k_in.size(1), seqlen_k = k_in.size(2);
  TORCH_CHECK_VALUE(k_in.sizes() == v_in.sizes() && k_in.size(0) == batch && k_in.size(3) == head_dim,
                    "flash_attention cuda: key/value shapes do not match query");
  TORCH_CHECK_VALUE(heads_kv > 0 && heads_q % heads_kv == 0, "flash_attention cuda: heads_q % heads_kv != 0");
  TORCH_CHECK_VALUE(head_dim % 8 == 0 && head_dim <= 256, "flash_attention cuda: head_dim must be a multiple of 8 <= 256");
  TORCH_CHECK_VALUE(seqlen_q < (int64_t(1) << 31) && seqlen_k < (int64_t(1) << 31) && batch * heads_q < (int64_t(1) << 32),
                    "flash_attention cuda: sizes too large");
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale), "flash_attention cuda: softmax_scale must be finite");
  TORCH_CHECK_VALUE(sm90_schedule >= static_cast<int64_t>(flash::Sm90Schedule::kAuto) &&
                        sm90_schedule <= static_cast<int64_t>(flash::Sm90Schedule::kPerTile),
                    "flash_attention cuda: sm90_schedule ", text(sm90_schedule), " is not a flash::Sm90Schedule");
  const flash::KernelEntry& entry = forward_entry(g_forward_entries, kernel, dtype, head_dim, causal, "forward");

  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = aligned_for_16_byte_loads(q_in);
  const at::Tensor k = aligned_for_16_byte_loads(k_in);
  const at::Tensor v = aligned_for_16_byte_loads(v_in);
  // Same allocation as flash_attention._validation.empty_like_query / empty_lse: query's layout, float32 LSE.
  at::Tensor out = at::empty_like(q_in, at::MemoryFormat::Preserve);
  at::Tensor out_aligned = aligned_for_16_byte_loads(out);  // empty_like of a dense query already is
  at::Tensor lse = at::empty({batch, heads_q, seqlen_q}, q_in.options().dtype(at::kFloat));

  const int device = q_in.device().index();
  flash::FwdParams p{};
  fill_common_params(p, q, k, v, out_aligned, lse, heads_q, heads_kv, head_dim, softmax_scale, causal, device);
  p.q_batch_stride = used_stride(q, 0), p.q_head_stride = used_stride(q, 1), p.q_row_stride = used_stride(q, 2);
  p.k_batch_stride = used_stride(k, 0), p.k_head_stride = used_stride(k, 1), p.k_row_stride = used_stride(k, 2);
  p.v_batch_stride = used_stride(v, 0), p.v_head_stride = used_stride(v, 1), p.v_row_stride = used_stride(v, 2);
  p.o_batch_stride = used_stride(out_aligned, 0), p.o_head_stride = used_stride(out_aligned, 1);
  p.o_row_stride = used_stride(out_aligned, 2);
  p.batch = static_cast<int>(batch);
  p.seqlen_q = static_cast<int>(seqlen_q);
  p.seqlen_k = static_cast<int>(seqlen_k);
  // SM90 grid (tile_scheduler.h): by default persistent, dealing equal tiles statically and unequal ones (causal,
  // or a partial tile per head) from the counter.
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor graph_tile_counter;
  if (entry.family == flash::KernelFamily::kSm90) {
    p.sm90_schedule = static_cast<flash::Sm90Schedule>(sm90_schedule);
    p.sm90_allow_pairs = sm90_cta_pairs;
    const bool may_draw = p.sm90_schedule == flash::Sm90Schedule::kAuto ||
                          p.sm90_schedule == flash::Sm90Schedule::kDynamic;
    if (may_draw) p.tile_counter = tile_counter_for(stream, q_in.options(), graph_tile_counter);
  }
  C10_CUDA_CHECK(entry.launch(p, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!out_aligned.is_same(out)) out.copy_(out_aligned);
  return {out, lse};
}

// ------------------------------------------------------------------------------------------------ varlen
// A packed (total, heads, head_dim) operand as the kernels address it: one batch (batch stride unused) with the
// 16-byte copyable base and strides TMA needs (else a copy).
at::Tensor packed_for_16_byte_loads(const at::Tensor& t) {
  const bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && (t.size(0) == 1 || t.stride(0) % 8 == 0) &&
                  (t.size(1) == 1 || t.stride(1) % 8 == 0);
  return ok ? t : t.contiguous();
}

// Smallest tile height of the SM90 family (one consumer warpgroup): it bounds the tile list's length.
constexpr int64_t kVarlenListRowsPerTile = 64;

// flash_attention::cuda_varlen_fwd: query (total_q, heads_q, D), key/value (total_k, heads_kv, D), the sequences'
// offsets cu_seqlens_q/k (int32, batch + 1), max_seqlen_q/k the caller's bounds. Functional: allocates and returns
// (out, lse (heads_q, total_q)). SM90 only; flash_attention.cuda says where it runs.
std::tuple<at::Tensor, at::Tensor> cuda_varlen_fwd(const at::Tensor& q_in, const at::Tensor& k_in,
                                                   const at::Tensor& v_in, const at::Tensor& cu_seqlens_q,
                                                   const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                   int64_t max_seqlen_k, bool causal, double softmax_scale,
                                                   int64_t kernel) {
  TORCH_CHECK_VALUE(q_in.is_cuda() && k_in.is_cuda() && v_in.is_cuda(), "flash_attention cuda: inputs must be CUDA");
  TORCH_CHECK_VALUE(q_in.dim() == 3 && k_in.dim() == 3 && v_in.dim() == 3,
                    "flash_attention cuda: packed inputs must be 3-D (total, heads, head_dim)");
  const auto dtype = q_in.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kHalf || dtype == at::kBFloat16, "flash_attention cuda: dtype must be fp16 or bf16");
  TORCH_CHECK_TYPE(k_in.scalar_type() == dtype && v_in.scalar_type() == dtype, "flash_attention cuda: dtype mismatch");
  TORCH_CHECK_VALUE(q_in.stride(-1) == 1 && k_in.stride(-1) == 1 && v_in.stride(-1) == 1,
                    "flash_attention cuda: head_dim must have unit stride");
  const int64_t total_q = q_in.size(0), heads_q = q_in.size(1), head_dim = q_in.size(2);
  const int64_t total_k = k_in.size(0), heads_kv = k_in.size(1);
  TORCH_CHECK_VALUE(k_in.sizes() == v_in.sizes() && k_in.size(2) == head_dim,
                    "flash_attention cuda: key/value shapes do not match query");
  TORCH_CHECK_VALUE(heads_kv > 0 && heads_q % heads_kv == 0, "flash_attention cuda: heads_q % heads_kv != 0");
  TORCH_CHECK_VALUE(head_dim % 8 == 0 && head_dim <= 256,
                    "flash_attention cuda: head_dim must be a multiple of 8 <= 256");
  for (const at::Tensor* cu : {&cu_seqlens_q, &cu_seqlens_k}) {
    TORCH_CHECK_VALUE(cu->is_cuda() && cu->scalar_type() == at::kInt && cu->dim() == 1 && cu->stride(0) == 1 &&
                          cu->size(0) == cu_seqlens_q.size(0) && cu->size(0) >= 2,
                      "flash_attention cuda: cu_seqlens must be contiguous int32 (batch + 1,), alike");
  }
  const int64_t batch = cu_seqlens_q.size(0) - 1;
  TORCH_CHECK_VALUE(max_seqlen_q >= 0 && max_seqlen_k >= 0, "flash_attention cuda: max_seqlen must be >= 0");
  // The tile list holds at most heads_q x (total_q / 64 + batch) tiles of 64 or more rows each.
  const int64_t capacity = heads_q * ((total_q + kVarlenListRowsPerTile - 1) / kVarlenListRowsPerTile + batch);
  TORCH_CHECK_VALUE(total_q < (int64_t(1) << 31) && total_k < (int64_t(1) << 31) && capacity < (int64_t(1) << 31),
                    "flash_attention cuda: sizes too large");
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale) && softmax_scale > 0, "flash_attention cuda: softmax_scale must be "
                    "positive here (flash_attention.cuda folds other scales into the query)");
  const flash::KernelEntry& entry = forward_entry(g_varlen_entries, kernel, dtype, head_dim, causal, "varlen");

  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = packed_for_16_byte_loads(q_in);
  const at::Tensor k = packed_for_16_byte_loads(k_in);
  const at::Tensor v = packed_for_16_byte_loads(v_in);
  at::Tensor out = at::empty_like(q_in, at::MemoryFormat::Preserve);
  at::Tensor out_aligned = packed_for_16_byte_loads(out);
  at::Tensor lse = at::empty({heads_q, total_q}, q_in.options().dtype(at::kFloat));
  if (total_q == 0 || max_seqlen_q == 0) return {out, lse};  // no query row belongs to a sequence
  if (total_k == 0) {  // every sequence has no keys (and TMA has no zero-sized tensors): 0 and LSE -inf
    out.zero_();
    lse.fill_(-INFINITY);
    return {out, lse};
  }

  const int device = q_in.device().index();
  flash::FwdParams p{};
  fill_common_params(p, q, k, v, out_aligned, lse, heads_q, heads_kv, head_dim, softmax_scale, causal, device);
  p.q_head_stride = used_stride(q, 1), p.q_row_stride = used_stride(q, 0);
  p.k_head_stride = used_stride(k, 1), p.k_row_stride = used_stride(k, 0);
  p.v_head_stride = used_stride(v, 1), p.v_row_stride = used_stride(v, 0);
  p.o_head_stride = used_stride(out_aligned, 1), p.o_row_stride = used_stride(out_aligned, 0);
  p.batch = static_cast<int>(batch);
  p.seqlen_q = static_cast<int>(std::min<int64_t>(max_seqlen_q, total_q));
  p.seqlen_k = static_cast<int>(std::min<int64_t>(max_seqlen_k, total_k));
  p.cu_seqlens_q = cu_seqlens_q.data_ptr<int>();
  p.cu_seqlens_k = cu_seqlens_k.data_ptr<int>();
  p.total_q = static_cast<int>(total_q);
  p.total_k = static_cast<int>(total_k);
  // The tile list: its count, then its entries (flash::VarlenTile, 8 ints each), written by the list kernel.
  constexpr int64_t kEntryInts = sizeof(flash::VarlenTile) / sizeof(int32_t);
  at::Tensor tile_list = at::empty({kEntryInts + capacity * kEntryInts}, q_in.options().dtype(at::kInt));
  p.varlen_tiles.num_tiles = tile_list.data_ptr<int>();
  p.varlen_tiles.tiles = reinterpret_cast<flash::VarlenTile*>(tile_list.data_ptr<int>() + kEntryInts);
  p.varlen_tiles.capacity = static_cast<int>(capacity);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor graph_tile_counter;
  p.sm90_schedule = flash::Sm90Schedule::kDynamic;
  p.tile_counter = tile_counter_for(stream, q_in.options(), graph_tile_counter);
  C10_CUDA_CHECK(entry.launch(p, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!out_aligned.is_same(out)) out.copy_(out_aligned);
  return {out, lse};
}

// ------------------------------------------------------------------------------------------------ decode
// flash_attention::cuda_load_decode_kernel(path, handle): as cuda_load_kernel, for a decode kernel library.
void cuda_load_decode_kernel(const std::string& path, int64_t handle) {
  check_handle(handle);
  std::lock_guard<std::mutex> lock(g_load_mutex);
  g_decode_entries[handle].store(
      open_kernel_entry<flash::DecodeKernelEntry, flash::DecodeParams>(path, "flash_attention_decode_entry"));
}

// A cache is read in place (and written by the append), so it is never copied: its base and used strides must
// allow 16-byte copies. flash_attention.cuda checks the same before choosing this backend.
void check_cache_alignment(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 &&
                        (t.size(0) == 1 || t.stride(0) % 8 == 0) && (t.size(1) == 1 || t.stride(1) % 8 == 0) &&
                        (t.size(2) == 1 || t.stride(2) % 8 == 0),
                    "flash_attention cuda: ", name, " needs a 16-byte aligned base and strides that are multiples of "
                    "8 elements");
}

// The cache half of DecodeParams, common to the decode and the append: checks and fills pointers, strides, sizes.
void fill_cache_params(flash::DecodeParams& p, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const c10::optional<at::Tensor>& seqlens, const c10::optional<at::Tensor>& block_table,
                       int64_t batch, int64_t head_dim) {
  TORCH_CHECK_VALUE(k_cache.is_cuda() && k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() &&
                        v_cache.is_cuda() && k_cache.size(3) == head_dim && k_cache.size(1) > 0,
                    "flash_attention cuda: the caches must be 4-D CUDA tensors of one shape, head_dim ", head_dim);
  const auto dtype = k_cache.scalar_type();
  TORCH_CHECK_TYPE((dtype == at::kHalf || dtype == at::kBFloat16) && v_cache.scalar_type() == dtype,
                   "flash_attention cuda: the caches must be fp16 or bf16, alike");
  check_cache_alignment(k_cache, "key_cache");
  check_cache_alignment(v_cache, "value_cache");
  const bool paged = block_table.has_value();
  if (paged) {
    TORCH_CHECK_VALUE(block_table->is_cuda() && block_table->scalar_type() == at::kInt && block_table->dim() == 2 &&
                          block_table->size(0) == batch && block_table->stride(1) == 1,
                      "flash_attention cuda: block_table must be int32 (batch, max_blocks) with unit column stride");
    p.block_table_ptr = block_table->data_ptr<int>();
    p.block_table_batch_stride = block_table->stride(0);
  } else {
    TORCH_CHECK_VALUE(k_cache.size(0) == batch, "flash_attention cuda: a contiguous cache has one row per sequence");
  }
  if (seqlens.has_value()) {
    TORCH_CHECK_VALUE(seqlens->is_cuda() && seqlens->scalar_type() == at::kInt && seqlens->dim() == 1 &&
                          seqlens->size(0) == batch && seqlens->stride(0) == 1,
                      "flash_attention cuda: cache_seqlens must be contiguous int32 (batch,)");
    p.seqlens_ptr = seqlens->data_ptr<int>();
  }
  p.k_ptr = k_cache.data_ptr();
  p.v_ptr = v_cache.data_ptr();
  p.k_batch_stride = k_cache.stride(0), p.k_head_stride = k_cache.stride(1), p.k_row_stride = k_cache.stride(2);
  p.v_batch_stride = v_cache.stride(0), p.v_head_stride = v_cache.stride(1), p.v_row_stride = v_cache.stride(2);
  p.batch = static_cast<int>(batch);
  p.heads_kv = static_cast<int>(k_cache.size(1));
  p.head_dim = static_cast<int>(head_dim);
  p.page_size = paged ? static_cast<int>(k_cache.size(2)) : 0;
  p.num_pages = paged ? static_cast<int>(k_cache.size(0)) : 0;
  p.capacity = static_cast<int>(paged ? block_table->size(1) * k_cache.size(2) : k_cache.size(2));
}

// The decode entry filed under `handle`, checked against the call (as forward_entry).
const flash::DecodeKernelEntry& decode_entry(int64_t handle, at::ScalarType dtype, int64_t head_dim) {
  check_handle(handle);
  const flash::DecodeKernelEntry* entry = g_decode_entries[handle].load();
  TORCH_CHECK(entry != nullptr, "flash_attention cuda: no decode kernel is loaded under handle ", text(handle),
              ": flash_attention.cuda selects, builds and loads kernels");
  TORCH_CHECK_VALUE(entry->dtype == (dtype == at::kHalf ? flash::DType::kFloat16 : flash::DType::kBFloat16) &&
                        head_dim <= entry->head_dim,
                    "flash_attention cuda: decode kernel ", text(handle), " (head dim ", text(entry->head_dim),
                    ") does not run this call (head dim ", text(head_dim), ")");
  return *entry;
}

// flash_attention::cuda_kvcache_append: key/value (batch, heads_kv, new_tokens, head_dim) into the caches at
// cache_seqlens[b], in place; positions outside the cache are skipped.
void cuda_kvcache_append(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k_new_in,
                         const at::Tensor& v_new_in, const at::Tensor& seqlens,
                         const c10::optional<at::Tensor>& block_table, int64_t kernel) {
  TORCH_CHECK_VALUE(k_new_in.dim() == 4 && k_new_in.sizes() == v_new_in.sizes() && k_new_in.is_cuda() &&
                        v_new_in.is_cuda() && k_new_in.scalar_type() == k_cache.scalar_type() &&
                        v_new_in.scalar_type() == k_cache.scalar_type(),
                    "flash_attention cuda: key/value must be (batch, heads_kv, new_tokens, head_dim) like the cache");
  flash::DecodeParams p{};
  fill_cache_params(p, k_cache, v_cache, seqlens, block_table, k_new_in.size(0), k_new_in.size(3));
  TORCH_CHECK_VALUE(k_new_in.size(1) == p.heads_kv, "flash_attention cuda: key has ", text(k_new_in.size(1)),
                    " heads, the cache ", text(p.heads_kv));
  c10::cuda::CUDAGuard guard(k_cache.device());
  const at::Tensor k_new = aligned_for_16_byte_loads(k_new_in);
  const at::Tensor v_new = aligned_for_16_byte_loads(v_new_in);
  p.k_new_ptr = k_new.data_ptr();
  p.v_new_ptr = v_new.data_ptr();
  p.seqlen_new = static_cast<int>(k_new.size(2));
  p.k_new_batch_stride = used_stride(k_new, 0), p.k_new_head_stride = used_stride(k_new, 1);
  p.k_new_row_stride = used_stride(k_new, 2);
  p.v_new_batch_stride = used_stride(v_new, 0), p.v_new_head_stride = used_stride(v_new, 1);
  p.v_new_row_stride = used_stride(v_new, 2);
  const flash::DecodeKernelEntry& entry = decode_entry(kernel, k_cache.scalar_type(), p.head_dim);
  C10_CUDA_CHECK(entry.append(p, c10::cuda::getCurrentCUDAStream().stream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// flash_attention::cuda_decode: query against the caches, sequence b holding cache_seqlens[b] + seqlen_new keys
// (None: all of them). Functional: allocates and returns (out, lse).
std::tuple<at::Tensor, at::Tensor> cuda_decode(const at::Tensor& q_in, const at::Tensor& k_cache,
                                               const at::Tensor& v_cache, const c10::optional<at::Tensor>& seqlens,
                                               const c10::optional<at::Tensor>& block_table, int64_t seqlen_new,
                                               bool causal, double softmax_scale, int64_t num_splits,
                                               int64_t cta_rows, int64_t cta_warps, int64_t kernel) {
  TORCH_CHECK_VALUE(q_in.is_cuda() && q_in.dim() == 4, "flash_attention cuda: query must be a 4-D CUDA tensor");
  const auto dtype = q_in.scalar_type();
  TORCH_CHECK_TYPE(k_cache.scalar_type() == dtype, "flash_attention cuda: query and caches must share a dtype");
  const int64_t batch = q_in.size(0), heads_q = q_in.size(1), seqlen_q = q_in.size(2), head_dim = q_in.size(3);
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale) && softmax_scale > 0, "flash_attention cuda: softmax_scale must be "
                    "positive here (flash_attention.cuda folds other scales into the query)");
  TORCH_CHECK_VALUE(num_splits >= 1 && num_splits <= 128, "flash_attention cuda: num_splits must be in [1, 128]");
  TORCH_CHECK_VALUE((cta_rows == 16 || cta_rows == 32) && (cta_warps == 4 || cta_warps == 8),
                    "flash_attention cuda: a decode CTA has 16 or 32 rows and 4 or 8 warps, got ", text(cta_rows),
                    " and ", text(cta_warps));
  TORCH_CHECK_VALUE(seqlen_new >= 0 && (seqlen_new == 0 || seqlens.has_value()),
                    "flash_attention cuda: seqlen_new counts appended tokens, which need cache_seqlens");
  flash::DecodeParams p{};
  fill_cache_params(p, k_cache, v_cache, seqlens, block_table, batch, head_dim);
  TORCH_CHECK_VALUE(heads_q % p.heads_kv == 0 && head_dim % 8 == 0,
                    "flash_attention cuda: query and cache shapes do not match");
  const flash::DecodeKernelEntry& entry = decode_entry(kernel, dtype, head_dim);

  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = aligned_for_16_byte_loads(q_in);
  at::Tensor out = at::empty_like(q_in, at::MemoryFormat::Preserve);
  at::Tensor out_aligned = aligned_for_16_byte_loads(out);
  at::Tensor lse = at::empty({batch, heads_q, seqlen_q}, q_in.options().dtype(at::kFloat));
  p.q_ptr = q.data_ptr();
  p.o_ptr = out_aligned.data_ptr();
  p.lse_ptr = lse.data_ptr<float>();
  p.q_batch_stride = used_stride(q, 0), p.q_head_stride = used_stride(q, 1), p.q_row_stride = used_stride(q, 2);
  p.o_batch_stride = used_stride(out_aligned, 0), p.o_head_stride = used_stride(out_aligned, 1);
  p.o_row_stride = used_stride(out_aligned, 2);
  p.heads_q = static_cast<int>(heads_q);
  p.group = static_cast<int>(heads_q / p.heads_kv);
  p.seqlen_q = static_cast<int>(seqlen_q);
  p.seqlen_new = static_cast<int>(seqlen_new);
  p.num_splits = static_cast<int>(num_splits);
  p.cta_rows = static_cast<int>(cta_rows);
  p.cta_warps = static_cast<int>(cta_warps);
  p.scale_log2 = static_cast<float>(softmax_scale * M_LOG2E);
  p.causal = causal;
  at::Tensor partial_o, partial_lse;
  if (num_splits > 1) {
    partial_o = at::empty({num_splits, batch * heads_q * seqlen_q, head_dim}, q_in.options().dtype(at::kFloat));
    partial_lse = at::empty({num_splits, batch * heads_q * seqlen_q}, q_in.options().dtype(at::kFloat));
    p.partial_o_ptr = partial_o.data_ptr<float>();
    p.partial_lse_ptr = partial_lse.data_ptr<float>();
  }
  C10_CUDA_CHECK(entry.launch(p, c10::cuda::getCurrentCUDAStream().stream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!out_aligned.is_same(out)) out.copy_(out_aligned);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(flash_attention, m) {
  m.def("cuda_load_kernel(str path, int handle) -> ()", &cuda_load_kernel);
  m.def("cuda_load_decode_kernel(str path, int handle) -> ()", &cuda_load_decode_kernel);
}
TORCH_LIBRARY_IMPL(flash_attention, CUDA, m) {
  m.impl("cuda_fwd", &cuda_fwd);
  m.impl("cuda_varlen_fwd", &cuda_varlen_fwd);
  m.impl("cuda_decode", &cuda_decode);
  m.impl("cuda_kvcache_append", &cuda_kvcache_append);
}
