"""Defenses against backdoors, one module each; rvpt/defenses/registry.py lists them by kind."""
