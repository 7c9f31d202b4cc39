"""kdlib: the helper library behind the notebooks.

Nothing heavy happens at import: submodules are imported where they are used
(`from kdlib import data`), so `import kdlib` stays cheap and side-effect free.
"""

__version__ = "0.1.0"
