// Sluice's attention kernel for the local torch backend's slot KV cache (kv_cache.py).
//
// Every packed query token t reads the keys/values of one cache row, columns [0, lens[t]):
// a decode token its sequence's whole history, a prefill token its prompt up to itself (so
// decode and prefill chunks are one loop, causal by their lengths). One task per (token,
// key/value head): the group of query heads that share that head (GQA) reads each block of
// 32 key and value columns from memory once (the group's other heads find it in L1), with an
// online softmax (the running max and sum are
// rescaled per block, as flash-decoding does), in float32 whatever the cache's dtype.
// Vectorised with ATen's at::vec (AVX-512 or AVX2, whichever this build was compiled for),
// parallel over tasks with at::parallel_for. Columns past a row's length are never read.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using at::vec::Vectorized;
using fVec = Vectorized<float>;

constexpr int64_t kBlock = 32;  // columns scored before their values are read

// Horizontal sum and max. The AVX builds have single instructions for them; ATen's generic
// Vectorized (the DEFAULT build, e.g. arm64) does not compile its own reduce_add here.
inline float sum_of(const fVec& v) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  return v.reduce_add();
#else
  return at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
#endif
}

inline float max_of(const fVec& v) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  return v.reduce_max();
#else
  return at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, v);
#endif
}

template <typename T>
inline fVec load_float(const T* p);

template <>
inline fVec load_float<float>(const float* p) {
  return fVec::loadu(p);
}

template <>
inline fVec load_float<c10::BFloat16>(const c10::BFloat16* p) {
  fVec out;
  at::vec::load_fp32_from_bf16(p, out);
  return out;
}

template <>
inline fVec load_float<c10::Half>(const c10::Half* p) {
  fVec out;
  at::vec::load_fp32_from_fp16(p, out);
  return out;
}

// The two inner loops of a block, for one query head, with the head's query (scores) or its
// accumulator (values) held in C vector registers: C = head_dim / lanes, fixed at compile
// time for the common head sizes so the compiler keeps them out of memory.
template <typename T, int C>
void score_block(const float* qh, const T* keys, int64_t col_stride, int64_t width, float* out) {
  constexpr int64_t lanes = fVec::size();
  fVec q[C];
  for (int c = 0; c < C; ++c) {
    q[c] = fVec::loadu(qh + c * lanes);
  }
  for (int64_t j = 0; j < width; ++j) {
    const T* key = keys + j * col_stride;
    fVec sum = q[0] * load_float<T>(key);
    for (int c = 1; c < C; ++c) {
      sum = at::vec::fmadd(q[c], load_float<T>(key + c * lanes), sum);
    }
    out[j] = sum_of(sum);
  }
}

template <typename T, int C>
void value_block(float* ah, const float* weights, const T* values, int64_t col_stride, int64_t width) {
  constexpr int64_t lanes = fVec::size();
  fVec acc[C];
  for (int c = 0; c < C; ++c) {
    acc[c] = fVec::loadu(ah + c * lanes);
  }
  for (int64_t j = 0; j < width; ++j) {
    const fVec p(weights[j]);
    const T* value = values + j * col_stride;
    for (int c = 0; c < C; ++c) {
      acc[c] = at::vec::fmadd(p, load_float<T>(value + c * lanes), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) {
    acc[c].store(ah + c * lanes);
  }
}

// Any other head size: the same loops with the registers in memory.
template <typename T>
void score_block_any(const float* qh, const T* keys, int64_t col_stride, int64_t width, float* out, int64_t chunks) {
  constexpr int64_t lanes = fVec::size();
  for (int64_t j = 0; j < width; ++j) {
    const T* key = keys + j * col_stride;
    fVec sum(0.f);
    for (int64_t c = 0; c < chunks; ++c) {
      sum = at::vec::fmadd(fVec::loadu(qh + c * lanes), load_float<T>(key + c * lanes), sum);
    }
    out[j] = sum_of(sum);
  }
}

template <typename T>
void value_block_any(float* ah, const float* weights, const T* values, int64_t col_stride, int64_t width, int64_t chunks) {
  constexpr int64_t lanes = fVec::size();
  for (int64_t j = 0; j < width; ++j) {
    const fVec p(weights[j]);
    const T* value = values + j * col_stride;
    for (int64_t c = 0; c < chunks; ++c) {
      at::vec::fmadd(p, load_float<T>(value + c * lanes), fVec::loadu(ah + c * lanes)).store(ah + c * lanes);
    }
  }
}

template <typename T>
void score_head(const float* qh, const T* keys, int64_t col_stride, int64_t width, float* out, int64_t chunks) {
  switch (chunks) {
    case 2: return score_block<T, 2>(qh, keys, col_stride, width, out);
    case 4: return score_block<T, 4>(qh, keys, col_stride, width, out);
    case 8: return score_block<T, 8>(qh, keys, col_stride, width, out);
    case 16: return score_block<T, 16>(qh, keys, col_stride, width, out);
    default: return score_block_any<T>(qh, keys, col_stride, width, out, chunks);
  }
}

template <typename T>
void value_head(float* ah, const float* weights, const T* values, int64_t col_stride, int64_t width, int64_t chunks) {
  switch (chunks) {
    case 2: return value_block<T, 2>(ah, weights, values, col_stride, width);
    case 4: return value_block<T, 4>(ah, weights, values, col_stride, width);
    case 8: return value_block<T, 8>(ah, weights, values, col_stride, width);
    case 16: return value_block<T, 16>(ah, weights, values, col_stride, width);
    default: return value_block_any<T>(ah, weights, values, col_stride, width, chunks);
  }
}

template <typename T>
void attend(
    const at::Tensor& query,   // [T, H, D]
    const at::Tensor& keys,    // [R, KV, C, D]
    const at::Tensor& values,  // [R, KV, C, D]
    const at::Tensor& rows,    // [T] int64
    const at::Tensor& lens,    // [T] int64
    double scale,
    at::Tensor& out) {         // [T, H, D]
  const int64_t tokens = query.size(0);
  const int64_t heads = query.size(1);
  const int64_t dim = query.size(2);
  const int64_t kv_heads = keys.size(1);
  const int64_t group = heads / kv_heads;
  const int64_t lanes = fVec::size();
  const int64_t chunks = dim / lanes;

  const T* q_base = query.data_ptr<T>();
  const T* k_base = keys.data_ptr<T>();
  const T* v_base = values.data_ptr<T>();
  T* o_base = out.data_ptr<T>();
  const int64_t* row_of = rows.data_ptr<int64_t>();
  const int64_t* len_of = lens.data_ptr<int64_t>();
  const int64_t q_token = query.stride(0), q_head = query.stride(1);
  const int64_t o_token = out.stride(0), o_head = out.stride(1);
  const int64_t k_row = keys.stride(0), k_head = keys.stride(1), k_col = keys.stride(2);
  const int64_t v_row = values.stride(0), v_head = values.stride(1), v_col = values.stride(2);
  const float softmax_scale = static_cast<float>(scale);

  at::parallel_for(0, tokens * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(group * dim), acc(group * dim), scores(group * kBlock);
    std::vector<float> running_max(group), running_sum(group);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / kv_heads;
      const int64_t g = task % kv_heads;
      const int64_t length = len_of[t];
      const T* k_rows = k_base + row_of[t] * k_row + g * k_head;
      const T* v_rows = v_base + row_of[t] * v_row + g * v_head;
      for (int64_t h = 0; h < group; ++h) {
        const T* src = q_base + t * q_token + (g * group + h) * q_head;
        for (int64_t c = 0; c < chunks; ++c) {
          (load_float<T>(src + c * lanes) * fVec(softmax_scale)).store(q.data() + h * dim + c * lanes);
        }
        running_max[h] = -std::numeric_limits<float>::infinity();
        running_sum[h] = 0.f;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t start = 0; start < length; start += kBlock) {
        const int64_t width = std::min(kBlock, length - start);
        // Scores of the block, head by head: the block's keys (32 columns) stay in L1 for the
        // other heads of the group.
        for (int64_t h = 0; h < group; ++h) {
          score_head<T>(q.data() + h * dim, k_rows + start * k_col, k_col, width, scores.data() + h * kBlock, chunks);
        }
        // Online softmax: rescale what was summed so far to the new running max.
        for (int64_t h = 0; h < group; ++h) {
          float* sh = scores.data() + h * kBlock;
          for (int64_t j = width; j < kBlock; ++j) {
            sh[j] = -std::numeric_limits<float>::infinity();  // past the row's length: weight 0
          }
          fVec block_max_v = fVec::loadu(sh);
          for (int64_t j = lanes; j < kBlock; j += lanes) {
            block_max_v = at::vec::maximum(block_max_v, fVec::loadu(sh + j));
          }
          const float new_max = std::max(running_max[h], max_of(block_max_v));
          const float rescale = std::exp(running_max[h] - new_max);
          fVec block_sum_v(0.f);
          for (int64_t j = 0; j < kBlock; j += lanes) {
            const fVec p = (fVec::loadu(sh + j) - fVec(new_max)).exp_u20();
            p.store(sh + j);
            block_sum_v = block_sum_v + p;
          }
          running_sum[h] = running_sum[h] * rescale + sum_of(block_sum_v);
          running_max[h] = new_max;
          if (rescale != 1.f) {
            float* ah = acc.data() + h * dim;
            for (int64_t c = 0; c < chunks; ++c) {
              (fVec::loadu(ah + c * lanes) * fVec(rescale)).store(ah + c * lanes);
            }
          }
        }
        // Values of the block, head by head, into the head's accumulator.
        for (int64_t h = 0; h < group; ++h) {
          value_head<T>(acc.data() + h * dim, scores.data() + h * kBlock, v_rows + start * v_col, v_col, width, chunks);
        }
      }
      for (int64_t h = 0; h < group; ++h) {
        T* dst = o_base + t * o_token + (g * group + h) * o_head;
        const float inverse = running_sum[h] > 0.f ? 1.f / running_sum[h] : 0.f;
        const float* ah = acc.data() + h * dim;
        for (int64_t d = 0; d < dim; ++d) {
          dst[d] = static_cast<T>(ah[d] * inverse);
        }
      }
    }
  });
}

at::Tensor slot_attention(
    const at::Tensor& query,
    const at::Tensor& keys,
    const at::Tensor& values,
    const at::Tensor& rows,
    const at::Tensor& lens,
    double scale) {
  TORCH_CHECK(query.dim() == 3 && keys.dim() == 4 && values.dim() == 4, "query [T,H,D], cache [R,KV,C,D]");
  TORCH_CHECK(query.device().is_cpu() && keys.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(query.scalar_type() == keys.scalar_type() && keys.scalar_type() == values.scalar_type(),
              "query and cache must share a dtype");
  TORCH_CHECK(query.stride(2) == 1 && keys.stride(3) == 1 && values.stride(3) == 1, "head_dim must be contiguous");
  TORCH_CHECK(query.size(2) % fVec::size() == 0, "head_dim must be a multiple of ", fVec::size());
  TORCH_CHECK(query.size(1) % keys.size(1) == 0, "query heads must be a multiple of key/value heads");
  TORCH_CHECK(rows.scalar_type() == at::kLong && lens.scalar_type() == at::kLong, "rows and lens are int64");
  TORCH_CHECK(rows.dim() == 1 && lens.dim() == 1 && rows.device().is_cpu() && lens.device().is_cpu(),
              "rows and lens are 1-D CPU tensors");
  TORCH_CHECK(rows.size(0) == query.size(0) && lens.size(0) == query.size(0), "one row and length per token");
  TORCH_CHECK(keys.sizes() == values.sizes(), "keys and values must have one shape");
  TORCH_CHECK(keys.size(3) == query.size(2), "the cache's head_dim must be the query's");
  TORCH_CHECK(values.device().is_cpu(), "CPU tensors only");
  auto rows_c = rows.contiguous();
  auto lens_c = lens.contiguous();
  // Every row and length in range: the loops below read the cache without further checks.
  const int64_t* row_of = rows_c.data_ptr<int64_t>();
  const int64_t* len_of = lens_c.data_ptr<int64_t>();
  for (int64_t t = 0; t < rows_c.size(0); ++t) {
    TORCH_CHECK(row_of[t] >= 0 && row_of[t] < keys.size(0), "row ", row_of[t], " is not in the cache");
    TORCH_CHECK(len_of[t] >= 0 && len_of[t] <= keys.size(2), "length ", len_of[t], " is not in 0..", keys.size(2));
  }
  auto out = at::empty_like(query, at::MemoryFormat::Contiguous);
  switch (query.scalar_type()) {
    case at::kFloat:
      attend<float>(query, keys, values, rows_c, lens_c, scale, out);
      break;
    case at::kBFloat16:
      attend<c10::BFloat16>(query, keys, values, rows_c, lens_c, scale, out);
      break;
    case at::kHalf:
      attend<c10::Half>(query, keys, values, rows_c, lens_c, scale, out);
      break;
    default:
      TORCH_CHECK(false, "float32, bfloat16 or float16 only, not ", query.scalar_type());
  }
  return out;
}

std::string capability() {
#if defined(CPU_CAPABILITY_AVX512)
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("slot_attention", &slot_attention, "Attention of packed tokens over their slot-cache rows");
  m.def("capability", &capability, "The vector ISA this build was compiled for");
}
