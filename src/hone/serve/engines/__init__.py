"""hone serve's engines: the table (table.py), continuous batching for transformers (batching.py), and
llama.cpp in a child process (llamacpp.py). The transformers engine itself is hone.serve.engine."""
