"""Training configs, one module per stage plus the main job (`echo.py`).

Each module exposes `get_config(arg)`; `python -m echo_jax.main --config=configs/<name>.py:<arg>`
loads one. The modules import each other as a package (`from configs import common`).
"""
