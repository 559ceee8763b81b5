"""Jetson side: TensorRT engines (build, metadata, load), CUDA buffers, device checks.

Thin on purpose: business logic lives in edge/, this package only talks to TensorRT/CUDA.
"""
