"""Offline training: the lecture CNN on CIFAR-10, ONNX export with a parity gate, publishing."""
