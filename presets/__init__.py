"""The shipped presets (YAML). Installed as ``engine.presets`` and read with importlib.resources."""
