//! mixq-quantizer: recipes, quantization algorithms, quality evaluation and the retention report.
