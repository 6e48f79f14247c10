"""The execution layer: how an optimizer's update runs (loop, foreach, fused kernels)."""
