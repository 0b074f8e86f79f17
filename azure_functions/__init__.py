"""Azure Functions blueprints (Python v2 model), registered by `function_app.py` at the root.

Each trigger is a one-line shim over a plain function of the same module that takes plain
values, so tests call the plain functions without the Functions host.
"""
