"""A camera without a camera: a deterministic synthetic scene, and servers that stream it.

This package's ``__init__`` imports nothing on purpose: ``agent.simulate.serve`` is also run by the
system Python (for GStreamer's bindings), which may have no numpy or OpenCV.
"""
