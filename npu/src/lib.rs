//! mixq-npu: XDNA detection, the Phoenix NPU tiling plan, functional executor and timing model.
