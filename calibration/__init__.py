"""INT8 and FP16 artefacts from the exported FP32 ONNX model (workstation side).

INT8 is explicit quantization: a Q/DQ ONNX that TensorRT 8.5 through 11 and ONNX Runtime
all run. A legacy TensorRT calibration cache is written from the same statistics.
"""
