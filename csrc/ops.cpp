// The schemas of fastrnn's native ops, declared once for every device.
// fastrnn/_ops.py registers their fake (meta) kernels, csrc/autograd.cpp the
// autograd kernels of layer_fwd and bilayer_fwd;
// csrc/cpu/ and csrc/cuda/ register the device kernels.
//
// layer_fwd runs one recurrent layer in one direction over packed rows
// (shapes: fastrnn/backends/base.py). save=true fills `workspace` for
// layer_bwd (layout: csrc/include/fastrnn/workspace.h); save=false returns it
// with zero rows. Outputs that do not apply to a mode (c_n, dc0, db_* without
// bias, dw_hr without projection) are empty tensors. layer_bwd's output_mask
// says which gradients the caller wants, as ATen's backward ops take it:
// [dx, the state's (dh0, dc0), the parameters' (dw_*, db_*)]; one not wanted
// is an empty tensor too, and its products are skipped (autograd passes
// needs_input_grad: no dx for a first layer whose input needs no gradient).
// It defaults to all, so that a caller from before it (a graph compiled and
// cached by an older fastrnn) still gets every gradient.
#include <Python.h>
#include <torch/library.h>

#include "fastrnn/cpu/gemv_bf16.h"
#include "fastrnn/cpu/small_gemm_bf16.h"

// `import fastrnn._C` loads this library, which runs the registrations below.
// The module holds two build facts: cpu_bf16_products, whether bfloat16 CPU
// layers have bf16 dot-product blocks (AVX512-BF16 at build time) or run
// the float32 loop on widened operands; cpu_bf16_rows_kernels, whether the
// build has gemv_bf16.h's kernels (AVX-512), which read bfloat16 weights as
// stored.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr &&
      (PyModule_AddIntConstant(m, "cpu_bf16_products", fastrnn::cpu::kBf16Products) != 0 ||
       PyModule_AddIntConstant(m, "cpu_bf16_rows_kernels", fastrnn::cpu::kBf16RowsKernels) !=
           0)) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}

TORCH_LIBRARY(fastrnn, m) {
  m.def(
      "layer_fwd(str mode, Tensor x, Tensor batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, bool save) "
      "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "layer_bwd(str mode, Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor x, "
      "Tensor batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor y, Tensor workspace, bool reverse, "
      "bool[3] output_mask=[True, True, True]) -> (Tensor dx, Tensor dh0, Tensor dc0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, "
      "Tensor db_hh, Tensor dw_hr)");
  // Both directions of one bidirectional layer in one call, so a device can
  // run them concurrently. Per-direction arguments are lists of 2 ([forward,
  // reverse]); an optional one (c0, biases, w_hr) is an empty list when absent.
  // Results are the per-direction results of layer_fwd / layer_bwd as lists,
  // except dx, which is summed over the directions.
  m.def(
      "bilayer_fwd(str mode, Tensor x, Tensor batch_sizes, Tensor[] h0, Tensor[] c0, "
      "Tensor[] w_ih, Tensor[] w_hh, Tensor[] b_ih, Tensor[] b_hh, Tensor[] w_hr, bool save) "
      "-> (Tensor[] y, Tensor[] h_n, Tensor[] c_n, Tensor[] workspace)");
  m.def(
      "bilayer_bwd(str mode, Tensor[] grad_y, Tensor[] grad_h_n, Tensor[] grad_c_n, Tensor x, "
      "Tensor batch_sizes, Tensor[] h0, Tensor[] c0, Tensor[] w_ih, Tensor[] w_hh, "
      "Tensor[] b_ih, Tensor[] b_hh, Tensor[] w_hr, Tensor[] y, Tensor[] workspace, "
      "bool[3] output_mask=[True, True, True]) -> (Tensor dx, Tensor[] dh0, Tensor[] dc0, Tensor[] dw_ih, Tensor[] dw_hh, "
      "Tensor[] db_ih, Tensor[] db_hh, Tensor[] dw_hr)");
}
