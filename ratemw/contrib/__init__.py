"""Integrations with web frameworks, one module each (``ratemw.contrib.flask``,
``ratemw.contrib.django``, ...).

Each module imports its own framework when it is imported; ``import ratemw`` imports none.
"""
