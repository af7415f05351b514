"""The gradalign command-line interface (installed as `gradalign.cli`).

A thin layer over the library: commands gather options, build one config, call the same function a
Python user calls, and render the result. Heavy imports (torch, transformers, pandas) happen inside
commands so that `gradalign --help` is instant.
"""
