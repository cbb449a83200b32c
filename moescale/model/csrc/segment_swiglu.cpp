// Routed SwiGLU experts over expert-sorted assignments, on CPU: the inner loops of
// moescale.model.moe_backends._SegmentSwiGLU (see its docstring for the algorithm).
//
// Python keeps the partition of the experts over single-threaded workers; one call runs one
// worker's experts. Per segment: row gather, GEMM (ATen: MKL/oneDNN), SwiGLU x gate, GEMM,
// row scatter-add; backward likewise. What this file adds over the Python loop: the
// element-wise passes of the SwiGLU backward fused into one loop over rows (ATen's
// vectorised sigmoid/silu still computes the transcendental), gathers and scatter-adds as
// plain row loops with the next rows prefetched, and no per-op dispatch.
//
// Contract (checked by the Python caller): CPU, float32 or float64, x/dout/h_all/gates/
// token/outputs contiguous, token int64 with values in [0, T), bounds non-decreasing.
#include <torch/extension.h>

#include <algorithm>
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

// Backward of act = silu(g) * u * w for n rows of h = [g | u] (width 2f), s = sigmoid(g),
// dact = d(act)/w (the gradient before the gate weight w): one pass per row writes
// dh = [dact*w*u*silu'(g) | dact*w*silu(g)] with silu'(g) = s(1 + g(1 - s)), and
// dw = <dact, silu(g) * u> where dw is not null.
template <typename T>
void swiglu_gate_backward(const T* h, const T* s, const T* dact, const T* w, int64_t n,
                          int64_t f, T* dh, T* dw) {
  for (int64_t r = 0; r < n; ++r) {
    const T *gr = h + r * 2 * f, *ur = gr + f, *sr = s + r * f, *dr = dact + r * f;
    T* dhg = dh + r * 2 * f;
    T* dhu = dhg + f;
    const T wr = w[r];
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

int64_t max_rows(const std::vector<int64_t>& bounds, const std::vector<int64_t>& experts) {
  int64_t rows = 0;
  for (int64_t e : experts) rows = std::max(rows, bounds[e + 1] - bounds[e]);
  return rows;
}

}  // namespace

// out[token] += gate * (silu(xs W_g^T) * xs W_u^T) W_d^T over the given experts' segments,
// xs = x[token]; h_all[segment] gets the gate/up pre-activations (saved for backward).
void segment_forward(const at::Tensor& x, const at::Tensor& gates, const at::Tensor& w_gate_up,
                     const at::Tensor& w_down, const at::Tensor& token,
                     const std::vector<int64_t>& bounds, const std::vector<int64_t>& experts,
                     at::Tensor& h_all, at::Tensor& out) {
  at::NoGradGuard no_grad;
  const int64_t d = x.size(1), f = w_down.size(2), rows = max_rows(bounds, experts);
  auto xs_buf = at::empty({rows, d}, x.options());
  auto y_buf = at::empty({rows, d}, x.options());
  auto act_buf = at::empty({rows, f}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "segment_forward", [&] {
    const int64_t* tok = token.data_ptr<int64_t>();
    const scalar_t* gp = gates.data_ptr<scalar_t>();
    for (int64_t e : experts) {
      const int64_t a = bounds[e], n = bounds[e + 1] - a;
      if (n == 0) continue;
      gather_rows(x.data_ptr<scalar_t>(), tok + a, n, d, xs_buf.data_ptr<scalar_t>());
      auto h = h_all.narrow(0, a, n);
      at::mm_out(h, xs_buf.narrow(0, 0, n), w_gate_up[e].t());
      auto act = act_buf.narrow(0, 0, n);
      at::silu_out(act, h.narrow(1, 0, f));
      scalar_t* ap = act.data_ptr<scalar_t>();
      const scalar_t* hp = h.data_ptr<scalar_t>();
      for (int64_t r = 0; r < n; ++r) {  // act = silu(gate) * up * gate weight
        const scalar_t w = gp[a + r];
        const scalar_t* u = hp + r * 2 * f + f;
        scalar_t* o = ap + r * f;
        for (int64_t j = 0; j < f; ++j) o[j] = o[j] * u[j] * w;
      }
      auto y = y_buf.narrow(0, 0, n);
      at::mm_out(y, act, w_down[e].t());
      scatter_add_rows(out.data_ptr<scalar_t>(), tok + a, n, d, y.data_ptr<scalar_t>());
    }
  });
}

// Backward of segment_forward over the given experts. dx is accumulated into (scatter-add);
// dgates, dw_gate_up, dw_down are written at the experts' own rows. Outputs passed as None
// are not computed.
void segment_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& gates,
                      const at::Tensor& w_gate_up, const at::Tensor& w_down,
                      const at::Tensor& token, const at::Tensor& h_all,
                      const std::vector<int64_t>& bounds, const std::vector<int64_t>& experts,
                      std::optional<at::Tensor> dx, std::optional<at::Tensor> dgates,
                      std::optional<at::Tensor> dw_gate_up, std::optional<at::Tensor> dw_down) {
  at::NoGradGuard no_grad;
  const int64_t d = x.size(1), f = w_down.size(2), rows = max_rows(bounds, experts);
  const auto opt = x.options();
  auto dy_buf = at::empty({rows, d}, opt), xs_buf = at::empty({rows, d}, opt);
  auto dxs_buf = at::empty({rows, d}, opt);
  auto sig_buf = at::empty({rows, f}, opt), aw_buf = at::empty({rows, f}, opt);
  auto dact_buf = at::empty({rows, f}, opt), dh_buf = at::empty({rows, 2 * f}, opt);
  auto dwd_t = at::empty({f, d}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "segment_backward", [&] {
    const int64_t* tok = token.data_ptr<int64_t>();
    const scalar_t* gp = gates.data_ptr<scalar_t>();
    for (int64_t e : experts) {
      const int64_t a = bounds[e], n = bounds[e + 1] - a;
      if (n == 0) continue;
      auto h = h_all.narrow(0, a, n);
      const scalar_t* hp = h.data_ptr<scalar_t>();
      auto sig = sig_buf.narrow(0, 0, n);
      at::sigmoid_out(sig, h.narrow(1, 0, f));
      const scalar_t* sp = sig.data_ptr<scalar_t>();
      gather_rows(dout.data_ptr<scalar_t>(), tok + a, n, d, dy_buf.data_ptr<scalar_t>());
      auto dy = dy_buf.narrow(0, 0, n);
      if (dw_down) {  // dW_d = dy^T (act * gate weight)
        scalar_t* awp = aw_buf.data_ptr<scalar_t>();
        for (int64_t r = 0; r < n; ++r) {
          const scalar_t w = gp[a + r];
          const scalar_t *gr = hp + r * 2 * f, *ur = gr + f, *sr = sp + r * f;
          scalar_t* o = awp + r * f;
          for (int64_t j = 0; j < f; ++j) o[j] = gr[j] * sr[j] * ur[j] * w;
        }
        // As (aw^T dy)^T: MKL runs this [F, n] x [n, D] product ~9% faster than dy^T aw
        // (measured at n 1024, D 512, F 128), the transposed copy costs ~1%.
        at::mm_out(dwd_t, aw_buf.narrow(0, 0, n).t(), dy);
        (*dw_down)[e].copy_(dwd_t.t());
      }
      auto dact = dact_buf.narrow(0, 0, n);
      at::mm_out(dact, dy, w_down[e]);  // d(act) before the gate weight
      swiglu_gate_backward(hp, sp, dact.data_ptr<scalar_t>(), gp + a, n, f,
                           dh_buf.data_ptr<scalar_t>(),
                           dgates ? dgates->data_ptr<scalar_t>() + a : nullptr);
      auto dh = dh_buf.narrow(0, 0, n);
      if (dw_gate_up) {  // dW_gu = dh^T xs
        gather_rows(x.data_ptr<scalar_t>(), tok + a, n, d, xs_buf.data_ptr<scalar_t>());
        auto dwgu = (*dw_gate_up)[e];
        at::mm_out(dwgu, dh.t(), xs_buf.narrow(0, 0, n));
      }
      if (dx) {  // dx[token] += dh W_gu
        auto dxs = dxs_buf.narrow(0, 0, n);
        at::mm_out(dxs, dh, w_gate_up[e]);
        scatter_add_rows(dx->data_ptr<scalar_t>(), tok + a, n, d, dxs.data_ptr<scalar_t>());
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("segment_forward", &segment_forward, py::call_guard<py::gil_scoped_release>());
  m.def("segment_backward", &segment_backward, py::call_guard<py::gil_scoped_release>());
}
