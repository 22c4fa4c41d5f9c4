"""The compiled parts of tasksd: the launcher's child setup (isolation/spawn_child.h) as the Python extension
isolation._spawn, and the C launcher isolation/tasksd-launcher (isolation/launcher.c) that uses it too. Everything
else is in pyproject.toml; setuptools reads ext_modules and cmdclass only from here."""
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FLAGS = ["-O2", "-Wall"]


class BuildExtAndLauncher(build_ext):
    """build_ext, then the launcher executable beside the extension (in the tree with --inplace). Optional like
    the extension: a host without a C compiler still installs tasksd, and the daemon then starts the Python
    launcher (isolation/launcher.py), which does the same job with ~10 MB more memory."""

    def run(self) -> None:
        super().run()
        out_dir = "isolation" if self.inplace else os.path.join(self.build_lib, "isolation")
        try:
            objs = self.compiler.compile(["isolation/launcher.c"], output_dir=self.build_temp, extra_postargs=FLAGS,
                                         depends=["isolation/spawn_child.h"])
            self.compiler.link_executable(objs, "tasksd-launcher", output_dir=out_dir)
        except Exception as e:  # noqa: BLE001 - distutils raises CompileError, LinkError or OSError
            print(f"warning: the C launcher was not built ({e}); tasksd will use the Python launcher")


setup(
    ext_modules=[Extension("isolation._spawn", ["isolation/_spawn.c"], depends=["isolation/spawn_child.h"],
                           extra_compile_args=FLAGS, optional=True)],
    cmdclass={"build_ext": BuildExtAndLauncher},
)
