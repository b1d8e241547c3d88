// The torch-facing side of the CUDA backend (the only file that includes torch): the CUDA implementation of
// flash_attention::cuda_fwd, whose schema, fake (meta) implementation and autograd rule are defined in Python
// (kernels/cuda/__init__.py). Inputs were validated in Python; the checks here guard direct torch.ops calls.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "fwd_launch_api.h"
#include "params.h"
#include "static_switch.h"

namespace {

// cp.async moves 16 bytes and TMA wants 16-byte aligned bases and strides: the base must be 16-byte aligned and
// every stride that is used a multiple of 8 elements. Dense tensors and (B, N, H, D) transposed views always are;
// anything else is copied once.
at::Tensor aligned_for_16_byte_loads(const at::Tensor& t) {
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.size(d) == 1 || t.stride(d) % 8 == 0);
  return ok ? t : t.contiguous();
}

// Strides of dims of size 1 are never multiplied by a nonzero index; zero them so odd values cannot matter.
int64_t used_stride(const at::Tensor& t, int dim) { return t.size(dim) == 1 ? 0 : t.stride(dim); }

template <flash::DType kDType, bool kCausal>
cudaError_t dispatch_head_dim(const flash::FwdParams& params, cudaStream_t stream) {
  switch (flash::padded_head_dim(params.head_dim)) {
#define FLASH_CASE(D) \
  case D:             \
    return flash::run_fwd<kDType, D, kCausal>(params, stream);
    FLASH_FOR_EACH_HEADDIM(FLASH_CASE)
#undef FLASH_CASE
  }
  TORCH_CHECK_VALUE(false, "flash_attention cuda: no kernel for head_dim ", params.head_dim);
}

#ifdef FLASH_ATTENTION_SM90
// The Hopper kernel family serves compute capability 9.0 and the head dims it instantiates (64, 128, 256, and the
// sizes that round up to them; TMA zero-fills the padding columns): flash_attention.cuda.sm90_family_covers says
// the same in Python. FLASH_ATTENTION_CUDA_KERNEL=sm80 holds such calls to the SM80 family (to test or time both
// on a Hopper GPU).
bool use_sm90_kernel(int head_dim) {
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  if (props->major != 9 || props->minor != 0) return false;
  const int padded = flash::padded_head_dim(head_dim);
  if (padded != 64 && padded != 128 && padded != 256) return false;
  const char* family = std::getenv("FLASH_ATTENTION_CUDA_KERNEL");
  return family == nullptr || std::strcmp(family, "sm80") != 0;
}

template <flash::DType kDType, bool kCausal>
cudaError_t dispatch_head_dim_sm90(const flash::FwdParams& params, cudaStream_t stream) {
  switch (flash::padded_head_dim(params.head_dim)) {
    case 64:
      return flash::run_fwd_sm90<kDType, 64, kCausal>(params, stream);
    case 128:
      return flash::run_fwd_sm90<kDType, 128, kCausal>(params, stream);
    case 256:
      return flash::run_fwd_sm90<kDType, 256, kCausal>(params, stream);
  }
  TORCH_CHECK_VALUE(false, "flash_attention cuda: no SM90 kernel for head_dim ", params.head_dim);
}
#endif

std::tuple<at::Tensor, at::Tensor> cuda_fwd(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                            bool causal, double softmax_scale) {
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

  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = aligned_for_16_byte_loads(q_in);
  const at::Tensor k = aligned_for_16_byte_loads(k_in);
  const at::Tensor v = aligned_for_16_byte_loads(v_in);
  // Same allocation as flash_attention._validation.empty_like_query / empty_lse: query's layout, float32 LSE.
  at::Tensor out = at::empty_like(q_in, at::MemoryFormat::Preserve);
  at::Tensor out_aligned = aligned_for_16_byte_loads(out);  // empty_like of a dense query already is
  at::Tensor lse = at::empty({batch, heads_q, seqlen_q}, q_in.options().dtype(at::kFloat));

  flash::FwdParams p{};
  p.q_ptr = q.data_ptr();
  p.k_ptr = k.data_ptr();
  p.v_ptr = v.data_ptr();
  p.o_ptr = out_aligned.data_ptr();
  p.lse_ptr = lse.data_ptr<float>();
  p.q_batch_stride = used_stride(q, 0), p.q_head_stride = used_stride(q, 1), p.q_row_stride = used_stride(q, 2);
  p.k_batch_stride = used_stride(k, 0), p.k_head_stride = used_stride(k, 1), p.k_row_stride = used_stride(k, 2);
  p.v_batch_stride = used_stride(v, 0), p.v_head_stride = used_stride(v, 1), p.v_row_stride = used_stride(v, 2);
  p.o_batch_stride = used_stride(out_aligned, 0), p.o_head_stride = used_stride(out_aligned, 1);
  p.o_row_stride = used_stride(out_aligned, 2);
  p.batch = static_cast<int>(batch);
  p.heads_q = static_cast<int>(heads_q);
  p.heads_kv = static_cast<int>(heads_kv);
  p.group = static_cast<int>(heads_q / heads_kv);
  p.seqlen_q = static_cast<int>(seqlen_q);
  p.seqlen_k = static_cast<int>(seqlen_k);
  p.head_dim = static_cast<int>(head_dim);
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.scale_log2 = static_cast<float>(softmax_scale * M_LOG2E);
  p.causal = causal;
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  p.max_smem_per_block = static_cast<int>(props->sharedMemPerBlockOptin);
  p.num_sms = props->multiProcessorCount;
  // SM90 grid: persistent for equal tiles (no mask), one CTA per tile for causal (tile_scheduler.h says why);
  // FLASH_ATTENTION_SM90_PERSISTENT=1 or =0 forces either, to test or time both.
  const char* persistent = std::getenv("FLASH_ATTENTION_SM90_PERSISTENT");
  p.persistent = persistent == nullptr ? !causal : std::strcmp(persistent, "0") != 0;

  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const bool half = dtype == at::kHalf;
#ifdef FLASH_ATTENTION_SM90
  const bool sm90 = use_sm90_kernel(p.head_dim);
#endif
  const cudaError_t err = FLASH_BOOL_SWITCH(causal, kCausal, [&] {
#ifdef FLASH_ATTENTION_SM90
    if (sm90) {
      return half ? dispatch_head_dim_sm90<flash::DType::kFloat16, kCausal>(p, stream)
                  : dispatch_head_dim_sm90<flash::DType::kBFloat16, kCausal>(p, stream);
    }
#endif
    return half ? dispatch_head_dim<flash::DType::kFloat16, kCausal>(p, stream)
                : dispatch_head_dim<flash::DType::kBFloat16, kCausal>(p, stream);
  });
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!out_aligned.is_same(out)) out.copy_(out_aligned);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(flash_attention, CUDA, m) { m.impl("cuda_fwd", &cuda_fwd); }
