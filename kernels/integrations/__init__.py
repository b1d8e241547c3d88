"""Glue that puts this library's kernels under other libraries' models. Each submodule imports its library lazily:
``import flash_attention`` never imports them."""
