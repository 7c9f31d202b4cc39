"""kdlib: the helper library behind the notebooks, one subpackage per role (lab, registry, teachers,
parsing, synthesis, students, distillation, studies; see README.md, "How the code is laid out").

Nothing heavy happens at import: submodules are imported where they are used
(`from kdlib.registry import data`), so `import kdlib` stays cheap and side-effect free.
"""

__version__ = "0.1.0"
