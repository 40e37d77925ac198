"""The embedded toy world: synthetic organisms, a tokenizer and a tiny Llama trained from scratch.

Everything here is generated deterministically from a seed, in the same chat `messages` format that the
reference datasets use, so the rest of the pipeline cannot tell a toy organism from a real one.
"""
