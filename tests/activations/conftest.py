"""The shared fixtures of these tests (tiny_dir, text_corpus) live in tests/conftest.py."""
