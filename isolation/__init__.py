"""The only package that touches the kernel: drivers, cgroups, namespaces, mounts, Landlock, users, launcher, logs.

May import `manifests`; never `reconcilers` or `controller`.
"""
