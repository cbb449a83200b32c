// Routed SwiGLU experts over expert-sorted assignments, on CPU: the inner loops of
// moescale.model.moe_backends._SegmentSwiGLU (see its docstring for the algorithm).
//
// Python keeps the partition of the experts over single-threaded workers; one call runs one
// worker's experts: its static part, then tail experts claimed from the other workers'
// shared counter (Schedule). Per segment chunk: row gather, GEMM (ATen: MKL/oneDNN),
// SwiGLU x gate, GEMM, row scatter-add; backward likewise. The shared expert (index E) is
// one more work item over all rows of x, read in place. What this file adds over the
// Python loop: chunks of ~1 MB of rows, the dynamic tail, the SwiGLU passes fused into one
// vectorised loop over rows each (with a branch-free float exp), gathers and scatter-adds
// as plain row loops with the next rows prefetched, and no per-op dispatch.
//
// Contract (checked by the Python caller): CPU, float32 or float64, x/dout/h_all/gates/
// token/outputs contiguous, token int64 with values in [0, T), bounds non-decreasing.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kAhead = 2;  // rows prefetched ahead in gathers and scatter-adds

template <typename T>
inline void prefetch_row(const T* row, int64_t d, int rw) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t c = 0; c < d * static_cast<int64_t>(sizeof(T)); c += 64) {
    if (rw) {
      __builtin_prefetch(p + c, 1, 3);
    } else {
      __builtin_prefetch(p + c, 0, 3);
    }
  }
}

// dst[r] = src[idx[r]] for r < n (rows of d values).
template <typename T>
void gather_rows(const T* src, const int64_t* idx, int64_t n, int64_t d, T* dst) {
  for (int64_t r = 0; r < n; ++r) {
    if (r + kAhead < n) prefetch_row(src + idx[r + kAhead] * d, d, 0);
    std::memcpy(dst + r * d, src + idx[r] * d, d * sizeof(T));
  }
}

// dst[idx[r]] += src[r] for r < n, in order (deterministic).
template <typename T>
void scatter_add_rows(T* dst, const int64_t* idx, int64_t n, int64_t d, const T* src) {
  for (int64_t r = 0; r < n; ++r) {
    if (r + kAhead < n) prefetch_row(dst + idx[r + kAhead] * d, d, 1);
    T* o = dst + idx[r] * d;
    const T* s = src + r * d;
    for (int64_t j = 0; j < d; ++j) o[j] += s[j];
  }
}

// exp(x), branch-free so that `omp simd` loops vectorise it: x = n ln2 + r with |r| <= ln2/2,
// exp(r) by Cephes' polynomial (measured over [-87, 88] in 1e-4 steps against double exp:
// relative error <= 8.3e-8, the sigmoid built on it <= 1.5e-7), 2^n
// from the exponent bits. x is clamped to [-87.3, 88.3], where 2^n stays a normal float.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double fast_exp(double x) { return std::exp(x); }  // float64: the library's exp

template <typename T>
inline T sigmoid(T g) {
  return T(1) / (T(1) + fast_exp(-g));
}

// act = silu(g) * u * w for n rows of h = [g | u] (width 2f) and gate weights w (null: 1),
// one pass per row; s = sigmoid(g) is also written where s is not null (for backward).
template <typename T>
void swiglu_gate(const T* h, const T* w, int64_t n, int64_t f, T* s, T* act) {
  for (int64_t r = 0; r < n; ++r) {
    const T *gr = h + r * 2 * f, *ur = gr + f;
    const T wr = w ? w[r] : T(1);
    T* ar = act + r * f;
    if (s) {
      T* sr = s + r * f;
#pragma omp simd
      for (int64_t j = 0; j < f; ++j) {
        const T sj = sigmoid(gr[j]);
        sr[j] = sj;
        ar[j] = gr[j] * sj * ur[j] * wr;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < f; ++j) ar[j] = gr[j] * sigmoid(gr[j]) * ur[j] * wr;
    }
  }
}

// Backward of act = silu(g) * u * w for n rows of h = [g | u] (width 2f), s = sigmoid(g),
// dact = d(act)/w (the gradient before the gate weight w): one pass per row writes
// dh = [dact*w*u*silu'(g) | dact*w*silu(g)] with silu'(g) = s(1 + g(1 - s)), and
// dw = <dact, silu(g) * u> where dw is not null. A null w is a weight of 1.
template <typename T>
void swiglu_gate_backward(const T* h, const T* s, const T* dact, const T* w, int64_t n,
                          int64_t f, T* dh, T* dw) {
  for (int64_t r = 0; r < n; ++r) {
    const T *gr = h + r * 2 * f, *ur = gr + f, *sr = s + r * f, *dr = dact + r * f;
    T* dhg = dh + r * 2 * f;
    T* dhu = dhg + f;
    const T wr = w ? w[r] : T(1);
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < f; ++j) {
      const T sj = sr[j], g = gr[j], silu = g * sj, da = dr[j];
      acc += da * silu * ur[j];
      const T dwj = da * wr;
      dhg[j] = dwj * ur[j] * sj * (T(1) + g * (T(1) - sj));
      dhu[j] = dwj * silu;
    }
    if (dw) dw[r] = acc;
  }
}

// dst [cols, rows] = src [rows, cols]^T, both contiguous, in 32 x 32 tiles (ATen's copy of a
// transposed view walks one side with a large stride: ~10x slower at 128 x 512).
template <typename T>
void transpose(const T* src, int64_t rows, int64_t cols, T* dst) {
  constexpr int64_t kTile = 32;
  for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
      }
    }
  }
}

// Rows per chunk of a segment: the gathered rows of a chunk take at most kChunkBytes, so
// that a chunk's operands stay in a core's L2 cache between the gather, the GEMMs and the
// scatter-add (measured: 1-2% faster than whole ~1000-row segments at D 512, fp32).
constexpr int64_t kChunkBytes = 1 << 20;

int64_t chunk_rows(int64_t d, int64_t element_size) {
  return std::max<int64_t>(64, kChunkBytes / (d * element_size));
}

// Calls fn(start, rows) for the equal chunks (at most `chunk` rows each) of [begin, end).
template <typename Fn>
void for_chunks(int64_t begin, int64_t end, int64_t chunk, const Fn& fn) {
  const int64_t n = end - begin, parts = (n + chunk - 1) / chunk;
  for (int64_t c = 0; c < parts; ++c) {
    const int64_t a = begin + n * c / parts;
    fn(a, begin + n * (c + 1) / parts - a);
  }
}

// The experts one worker runs: its own `experts` (a static part), then experts of the shared
// `tail` claimed one at a time through the atomic `counter` by whichever worker is free
// first. A tail expert writes its rows (forward output, input gradient) to its own rows of
// `tail_rows` from `tail_offsets` instead of scatter-adding them, so the results do not
// depend on which worker ran it; the caller adds `tail_rows` in a fixed order afterwards.
struct Schedule {
  const std::vector<int64_t>& experts;
  const std::vector<int64_t>& tail;
  const std::vector<int64_t>& tail_offsets;
  int64_t* counter;  // null: no tail
  int64_t tokens;    // T: the rows of the shared expert (index E)

  // Calls fn(expert, deferred row offset or -1) for each expert this worker runs.
  template <typename Fn>
  void run(const Fn& fn) const {
    for (int64_t e : experts) fn(e, int64_t{-1});
    if (counter == nullptr) return;
    const int64_t n = static_cast<int64_t>(tail.size());
    for (int64_t i = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); i < n;
         i = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)) {
      fn(tail[i], tail_offsets[i]);
    }
  }

  int64_t max_rows(const std::vector<int64_t>& bounds, int64_t chunk) const {
    int64_t rows = 0;
    const int64_t shared = static_cast<int64_t>(bounds.size()) - 1;
    for (const auto* list : {&experts, &tail}) {
      for (int64_t e : *list) {
        rows = std::max(rows, e == shared ? tokens : bounds[e + 1] - bounds[e]);
      }
    }
    return std::min(rows, chunk);
  }
};

int64_t* counter_ptr(const std::optional<at::Tensor>& counter) {
  return counter ? counter->data_ptr<int64_t>() : nullptr;
}

// One expert's operands in a pass. A routed expert e < E reads its rows of x through
// `token` (gathered) and weights its output by `gates`; the shared expert (index E, present
// when its weights are given) reads all T rows of x in place, weight 1, and accumulates its
// output straight into the worker's rows with the GEMM (beta = 1): no gather, no scatter.
struct Expert {
  bool shared;
  int64_t begin, end, f;   // rows [begin, end) of the sorted assignments (shared: of x)
  at::Tensor w_gate_up;    // [2f, D]
  at::Tensor w_down;       // [D, f]
  at::Tensor h;            // [rows, 2f] pre-activations saved for backward
};

Expert expert_at(int64_t e, const std::vector<int64_t>& bounds, const at::Tensor& x,
                 const at::Tensor& w_gate_up, const at::Tensor& w_down, const at::Tensor& h_all,
                 const std::optional<at::Tensor>& shared_gate_up,
                 const std::optional<at::Tensor>& shared_down,
                 const std::optional<at::Tensor>& shared_h) {
  if (e == static_cast<int64_t>(bounds.size()) - 1) {
    TORCH_CHECK(shared_gate_up && shared_down && shared_h, "shared expert without weights");
    return {true, 0, x.size(0), shared_down->size(1), *shared_gate_up, *shared_down, *shared_h};
  }
  return {false, bounds[e], bounds[e + 1], w_down.size(2), w_gate_up[e], w_down[e], h_all};
}

// Rows [a, a+n) of a chunk from src [T, D]: in place for the shared expert, else gathered
// through the expert-sorted token indices into buf.
template <typename T>
at::Tensor rows_of(const at::Tensor& src, bool shared, const int64_t* tok, int64_t a, int64_t n,
                   const at::Tensor& buf) {
  if (shared) return src.narrow(0, a, n);
  gather_rows(src.data_ptr<T>(), tok + a, n, src.size(1), buf.data_ptr<T>());
  return buf.narrow(0, 0, n);
}

// A [n, w] contiguous view at the start of a flat scratch buffer.
at::Tensor scratch(const at::Tensor& flat, int64_t n, int64_t w) {
  return flat.narrow(0, 0, n * w).view({n, w});
}

int64_t widest(const at::Tensor& w_down, const std::optional<at::Tensor>& shared_down) {
  return std::max(w_down.size(2), shared_down ? shared_down->size(1) : int64_t{0});
}

}  // namespace

// out[token] += gate * (silu(xs W_g^T) * xs W_u^T) W_d^T over the given experts' segments,
// xs = x[token]; h_all[segment] gets the gate/up pre-activations (saved for backward), and
// shared_h those of the shared expert (Expert). Each segment runs in chunks (chunk_rows).
void segment_forward(const at::Tensor& x, const at::Tensor& gates, const at::Tensor& w_gate_up,
                     const at::Tensor& w_down, const at::Tensor& token,
                     const std::vector<int64_t>& bounds, const std::vector<int64_t>& experts,
                     at::Tensor& h_all, at::Tensor& out, const std::vector<int64_t>& tail,
                     const std::vector<int64_t>& tail_offsets,
                     std::optional<at::Tensor> tail_rows, std::optional<at::Tensor> counter,
                     std::optional<at::Tensor> shared_gate_up,
                     std::optional<at::Tensor> shared_down, std::optional<at::Tensor> shared_h,
                     bool out_empty) {
  at::NoGradGuard no_grad;
  const Schedule schedule{experts, tail, tail_offsets, counter_ptr(counter), x.size(0)};
  const int64_t d = x.size(1), fw = widest(w_down, shared_down);
  const int64_t chunk = chunk_rows(d, x.element_size()), rows = schedule.max_rows(bounds, chunk);
  auto xs_buf = at::empty({rows, d}, x.options());
  auto y_buf = at::empty({rows, d}, x.options());
  auto act_buf = at::empty({rows * fw}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "segment_forward", [&] {
    const int64_t* tok = token.data_ptr<int64_t>();
    const scalar_t* gp = gates.data_ptr<scalar_t>();
    schedule.run([&](int64_t e, int64_t deferred) {
      const Expert ex = expert_at(e, bounds, x, w_gate_up, w_down, h_all, shared_gate_up,
                                  shared_down, shared_h);
      const int64_t f = ex.f;
      const auto w_gu_t = ex.w_gate_up.t(), w_d_t = ex.w_down.t();
      for_chunks(ex.begin, ex.end, chunk, [&](int64_t a, int64_t n) {
        const auto xs = rows_of<scalar_t>(x, ex.shared, tok, a, n, xs_buf);
        auto h = ex.h.narrow(0, a, n);
        at::mm_out(h, xs, w_gu_t);
        auto act = scratch(act_buf, n, f);
        swiglu_gate<scalar_t>(h.data_ptr<scalar_t>(), ex.shared ? nullptr : gp + a, n, f, nullptr,
                    act.data_ptr<scalar_t>());
        if (ex.shared && out_empty) {  // the worker's first expert: out[a:a+n] = act W_d^T
          auto o = out.narrow(0, a, n);
          at::mm_out(o, act, w_d_t);
        } else if (ex.shared) {  // out[a:a+n] += act W_d^T
          out.narrow(0, a, n).addmm_(act, w_d_t);
        } else if (deferred >= 0) {  // a tail expert: its rows of tail_rows, added later
          auto y = tail_rows->narrow(0, deferred + a - ex.begin, n);
          at::mm_out(y, act, w_d_t);
        } else {
          auto y = y_buf.narrow(0, 0, n);
          at::mm_out(y, act, w_d_t);
          scatter_add_rows(out.data_ptr<scalar_t>(), tok + a, n, d, y.data_ptr<scalar_t>());
        }
      });
    });
  });
}

// Backward of segment_forward over the given experts. dx is accumulated into (scatter-add);
// dgates, dw_gate_up, dw_down (and the shared expert's weight gradients) are written at the
// experts' own rows, weight gradients summed over the chunks in a fixed order. Outputs passed
// as None are not computed.
void segment_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& gates,
                      const at::Tensor& w_gate_up, const at::Tensor& w_down,
                      const at::Tensor& token, const at::Tensor& h_all,
                      const std::vector<int64_t>& bounds, const std::vector<int64_t>& experts,
                      std::optional<at::Tensor> dx, std::optional<at::Tensor> dgates,
                      std::optional<at::Tensor> dw_gate_up, std::optional<at::Tensor> dw_down,
                      const std::vector<int64_t>& tail, const std::vector<int64_t>& tail_offsets,
                      std::optional<at::Tensor> tail_rows, std::optional<at::Tensor> counter,
                      std::optional<at::Tensor> shared_gate_up,
                      std::optional<at::Tensor> shared_down, std::optional<at::Tensor> shared_h,
                      std::optional<at::Tensor> dshared_gate_up,
                      std::optional<at::Tensor> dshared_down, bool dx_empty) {
  at::NoGradGuard no_grad;
  const Schedule schedule{experts, tail, tail_offsets, counter_ptr(counter), x.size(0)};
  const int64_t d = x.size(1), fw = widest(w_down, shared_down);
  const int64_t chunk = chunk_rows(d, x.element_size()), rows = schedule.max_rows(bounds, chunk);
  const auto opt = x.options();
  auto dy_buf = at::empty({rows, d}, opt), xs_buf = at::empty({rows, d}, opt);
  auto dxs_buf = at::empty({rows, d}, opt);
  auto sig_buf = at::empty({rows * fw}, opt), aw_buf = at::empty({rows * fw}, opt);
  auto dact_buf = at::empty({rows * fw}, opt), dh_buf = at::empty({rows * 2 * fw}, opt);
  auto dwd_buf = at::empty({fw * d}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "segment_backward", [&] {
    const int64_t* tok = token.data_ptr<int64_t>();
    const scalar_t* gp = gates.data_ptr<scalar_t>();
    schedule.run([&](int64_t e, int64_t deferred) {
      const Expert ex = expert_at(e, bounds, x, w_gate_up, w_down, h_all, shared_gate_up,
                                  shared_down, shared_h);
      if (ex.end == ex.begin) return;
      const int64_t f = ex.f;
      std::optional<at::Tensor> dwgu, dwd;
      if (ex.shared) {
        dwgu = dshared_gate_up;
        dwd = dshared_down;
      } else {
        if (dw_gate_up) dwgu = (*dw_gate_up)[e];
        if (dw_down) dwd = (*dw_down)[e];
      }
      auto dwd_t = scratch(dwd_buf, f, d);
      for_chunks(ex.begin, ex.end, chunk, [&](int64_t a, int64_t n) {
        const bool first = a == ex.begin;  // the first chunk writes, the others accumulate
        const scalar_t* w = ex.shared ? nullptr : gp + a;  // gate weights (shared: 1)
        auto h = ex.h.narrow(0, a, n);
        const scalar_t* hp = h.data_ptr<scalar_t>();
        auto sig = scratch(sig_buf, n, f);
        scalar_t* sp = sig.data_ptr<scalar_t>();
        const auto dy = rows_of<scalar_t>(dout, ex.shared, tok, a, n, dy_buf);
        auto aw = scratch(aw_buf, n, f);  // act * gate weight, and s = sigmoid(gate)
        swiglu_gate(hp, w, n, f, sp, aw.data_ptr<scalar_t>());
        if (dwd) {  // dW_d = dy^T (act * gate weight)
          // As (aw^T dy)^T: MKL runs this [F, n] x [n, D] product ~9% faster than dy^T aw
          // (measured at n 1024, D 512, F 128), the transposed copy costs ~1%.
          if (first) {
            at::mm_out(dwd_t, aw.t(), dy);
          } else {
            dwd_t.addmm_(aw.t(), dy);
          }
        }
        auto dact = scratch(dact_buf, n, f);
        at::mm_out(dact, dy, ex.w_down);  // d(act) before the gate weight
        auto dh = scratch(dh_buf, n, 2 * f);
        swiglu_gate_backward(hp, sp, dact.data_ptr<scalar_t>(), w, n, f,
                             dh.data_ptr<scalar_t>(),
                             (dgates && !ex.shared) ? dgates->data_ptr<scalar_t>() + a : nullptr);
        if (dwgu) {  // dW_gu = dh^T xs
          const auto xs = rows_of<scalar_t>(x, ex.shared, tok, a, n, xs_buf);
          if (first) {
            at::mm_out(*dwgu, dh.t(), xs);
          } else {
            dwgu->addmm_(dh.t(), xs);
          }
        }
        if (!dx) return;
        if (ex.shared && dx_empty) {  // the worker's first expert: dx[a:a+n] = dh W_gu
          auto dxs = dx->narrow(0, a, n);
          at::mm_out(dxs, dh, ex.w_gate_up);
        } else if (ex.shared) {  // dx[a:a+n] += dh W_gu
          dx->narrow(0, a, n).addmm_(dh, ex.w_gate_up);
        } else if (deferred >= 0) {  // a tail expert: its rows of tail_rows
          auto dxs = tail_rows->narrow(0, deferred + a - ex.begin, n);
          at::mm_out(dxs, dh, ex.w_gate_up);
        } else {  // dx[token] += dh W_gu
          auto dxs = dxs_buf.narrow(0, 0, n);
          at::mm_out(dxs, dh, ex.w_gate_up);
          scatter_add_rows(dx->data_ptr<scalar_t>(), tok + a, n, d, dxs.data_ptr<scalar_t>());
        }
      });
      if (dwd) transpose(dwd_t.data_ptr<scalar_t>(), f, d, dwd->data_ptr<scalar_t>());
    });
  });
}

// The workers' outputs summed into outs[0], then the tail experts' rows added in their fixed
// order (out[index[r]] += rows[r], r ascending; deterministic whatever worker computed them).
// One serial pass: it is bound by memory bandwidth (measured at T 8192, D 512, two workers:
// 2.0 ms serial, 1.7 ms split over the two expert workers), and at::parallel_for would run
// serially anyway, this file being built without -fopenmp (no second OpenMP runtime beside
// torch's).
at::Tensor reduce_parts(const std::vector<at::Tensor>& outs, std::optional<at::Tensor> index,
                        std::optional<at::Tensor> rows) {
  at::Tensor out = outs[0];
  const int64_t n = out.numel(), d = out.size(1);
  const int64_t n_rows = rows ? rows->size(0) : 0;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "reduce_parts", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for (size_t p = 1; p < outs.size(); ++p) {
      const scalar_t* q = outs[p].data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) o[i] += q[i];
    }
    const int64_t* idx = n_rows ? index->data_ptr<int64_t>() : nullptr;
    const scalar_t* src = n_rows ? rows->data_ptr<scalar_t>() : nullptr;
    for (int64_t r = 0; r < n_rows; ++r) {
      scalar_t* dst = o + idx[r] * d;
      const scalar_t* row = src + r * d;
      for (int64_t j = 0; j < d; ++j) dst[j] += row[j];
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("segment_forward", &segment_forward, py::call_guard<py::gil_scoped_release>());
  m.def("segment_backward", &segment_backward, py::call_guard<py::gil_scoped_release>());
  m.def("reduce_parts", &reduce_parts, py::call_guard<py::gil_scoped_release>());
}
