"""Benchmarks behind ``minillm bench``: each module has ``main(args)`` and prints measured figures."""
