"""Analysis of quantized models: operation counts, model size, quantization error
(``accounting``)."""
