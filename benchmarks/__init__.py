"""Performance bench: training and decoding throughput of this project's models against
x-transformers, Hugging Face ``transformers`` and ``torch.nn.Transformer`` at identical
dimensions, with MFU, peak memory and a per-sublayer time breakdown.

Run it as ``ablate bench`` or ``python -m benchmarks``; reports land in ``reports/perf/``.
"""
