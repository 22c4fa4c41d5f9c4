"""The one compiled part of tasksd: the launcher's child setup in C (isolation/_spawn.c). Everything else is in
pyproject.toml; setuptools reads ext_modules only from here."""
from setuptools import Extension, setup

# optional: a host without a C compiler still installs tasksd; the launcher then uses its Python child (slower
# starts, same behaviour) and the daemon says so at start.
setup(ext_modules=[Extension("isolation._spawn", ["isolation/_spawn.c"], extra_compile_args=["-O2", "-Wall"],
                             optional=True)])
