"""The demo's sample apps: one worker module and one producer per library, run from that library's venv.

Inside each venv this package is importable as ``flowerbed_demo_apps`` (see ``dashboard.demo.envs``),
so its modules import one another relatively and never import ``dashboard``.
"""
