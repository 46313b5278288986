"""Analysis of quantized models: operation counts, model size and quantization error
(``accounting``), and the other analysis modules of this package."""
